"""Diffusers students (SD3 / SD3.5, FLUX.1 / Kontext) from a pipeline folder or hub id.

`DiffusersStudentSpec` reads the pipeline (model_index.json, component configs, tokenizers) and
checks that the run fits it before any weights are loaded; `build` loads the transformer three times
(student, real score, fake score; the real and fake scores from `student.teacher` when given), the
text encoders and the VAE, sharded under ZeRO-3 when asked. Each transformer runs its attention through
npedit's fused op (`student.attention=npedit`, npedit/adapters/diffusers_attention.py) or diffusers'
own processors (`sdpa`). `DiffusersDiffusion` is the method's diffusion adapter over the loaded
(frozen engines') modules.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from npedit.adapters.flux import FluxEditor
from npedit.adapters.sd3 import SD3Editor
from npedit.adapters.select import detect_student, read_json
from npedit.adapters.text_cond import TextCond, encode_flux, encode_sd3
from npedit.config import ConfigError

# text encoders / tokenizers each family reads from its pipeline, in the pipeline's order
TEXT_PARTS = {
    "sd3": (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")),
    "flux": (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")),
}
OPTIONAL_PARTS = {"text_encoder_3"}  # SD3 runs without T5 (zeros in its place), like the pipeline


def _class(library: str, name: str, field: str):
    import diffusers
    import transformers

    module = {"diffusers": diffusers, "transformers": transformers}.get(library)
    if module is None or not hasattr(module, name):
        raise ConfigError(f"{field}: pipeline component class {library}.{name} is not available")
    return getattr(module, name)


class DiffusersStudentSpec:
    """A diffusers student pipeline, checked against the run config; `build` loads it."""

    def __init__(self, source: str, teacher: str, image_size: int, max_length: int, guidance: float,
                 field: str = "student.pretrained", attention: str = "npedit"):
        from transformers import AutoTokenizer

        self.source, self.teacher, self.field = source, teacher or source, field
        self.attention = attention  # npedit | sdpa (student.attention)
        self.family = detect_student(source, field)
        if teacher and detect_student(teacher, "student.teacher") != self.family:
            raise ConfigError(f"student.teacher={teacher!r} is not a {self.family} pipeline like {field}")
        self.index = read_json(source, "model_index.json", field)
        self.transformer_config = read_json(source, "transformer/config.json", field)
        self.vae_config = read_json(source, "vae/config.json", field)
        if teacher:
            teacher_config = read_json(teacher, "transformer/config.json", "student.teacher")
            keys = ("in_channels", "joint_attention_dim", "pooled_projection_dim", "patch_size")
            diff = {k: (self.transformer_config.get(k), teacher_config.get(k)) for k in keys
                    if self.transformer_config.get(k) != teacher_config.get(k)}
            if diff:
                raise ConfigError(f"student.teacher={teacher!r}: its transformer differs from {field}'s in {diff}")
        self.guidance, self.max_length = guidance, max_length
        self.parts: list[tuple[str, str]] = []
        self.tokenizers: dict[str, Any] = {}
        for encoder, tokenizer in TEXT_PARTS[self.family]:
            entry = self.index.get(encoder)
            if not (isinstance(entry, list) and entry[0]):
                if encoder in OPTIONAL_PARTS:
                    continue
                raise ConfigError(f"{field}={source!r}: model_index.json has no {encoder}")
            self.parts.append((encoder, tokenizer))
            try:
                self.tokenizers[tokenizer] = AutoTokenizer.from_pretrained(source, subfolder=tokenizer)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{field}={source!r}: cannot load {tokenizer}/ ({exc})") from exc
        self.vae_factor = 2 ** (len(self.vae_config.get("block_out_channels", [0])) - 1)
        unit = self.vae_factor * (2 if self.family == "flux" else int(self.transformer_config.get("patch_size", 2)))
        if image_size % unit:
            raise ConfigError(f"data.image_size={image_size} must be a multiple of {unit} for this {self.family} "
                              f"pipeline (VAE factor {self.vae_factor} x patch size)")
        if self.family == "flux" and max_length > 512:
            raise ConfigError(f"text.max_length={max_length}: FLUX's T5 sequence is at most 512 tokens")
        if self.transformer_config.get("in_channels") not in (None, self.latent_channels * (4 if self.family == "flux"
                                                                                            else 1)):
            raise ConfigError(f"{field}: the transformer's in_channels {self.transformer_config.get('in_channels')} "
                              f"do not fit the VAE's {self.latent_channels} latent channels")

    @property
    def latent_channels(self) -> int:
        return int(self.vae_config.get("latent_channels", 16))

    # ------------------------------------------------------------------ loading
    def install_attention(self, transformer: nn.Module) -> None:
        """npedit's fused attention processors on every attention module (`student.attention=npedit`);
        with `sdpa` diffusers' own processors stay."""
        if self.attention == "npedit":
            from npedit.adapters.diffusers_attention import use_npedit_attention
            use_npedit_attention(transformer)

    def load_transformer(self, source: str, dtype: torch.dtype, ds_config: dict | None,
                         subfolder: str = "transformer") -> SD3Editor | FluxEditor:
        """The pipeline's transformer (or a trained one saved under `subfolder`) wrapped for editing."""
        from npedit.adapters.zero_load import load_diffusers

        name = self.index["transformer"][1]
        transformer = load_diffusers(_class("diffusers", name, self.field), source, subfolder, dtype, ds_config)
        self.install_attention(transformer)
        return SD3Editor(transformer) if self.family == "sd3" else FluxEditor(transformer, self.guidance)

    def load_frozen(self, dtype: torch.dtype, ds_config: dict | None) -> dict[str, nn.Module]:
        """Text encoders and the VAE, each to become an optimizer-less ZeRO-3 engine."""
        from npedit.adapters.zero_load import load_diffusers, load_transformers

        frozen: dict[str, nn.Module] = {}
        for encoder, _ in self.parts:
            library, name = self.index[encoder]
            frozen[encoder] = load_transformers(_class(library, name, self.field), self.source, encoder, dtype,
                                                ds_config)
        library, name = self.index["vae"]
        frozen["vae"] = load_diffusers(_class(library, name, self.field), self.source, "vae", dtype, ds_config)
        for module in frozen.values():
            module.requires_grad_(False).eval()
        return frozen

    def diffusion(self, modules: dict[str, nn.Module]) -> DiffusersDiffusion:
        return DiffusersDiffusion(self, modules)


class DiffusersDiffusion:
    """encode_text / cat_text / velocity / encode_images / decode_latents for SD3 and FLUX students."""

    def __init__(self, spec: DiffusersStudentSpec, modules: dict[str, nn.Module]):
        self.spec, self.family = spec, spec.family
        self.encoders = [(spec.tokenizers[tok], modules[enc]) for enc, tok in spec.parts]
        self.vae = modules["vae"]
        self.scaling = float(spec.vae_config.get("scaling_factor", 1.0))
        self.shift = float(spec.vae_config.get("shift_factor") or 0.0)
        self.joint_dim = int(spec.transformer_config.get("joint_attention_dim", 4096))

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextCond:
        prompts = list(prompts)
        if self.family == "sd3":
            t5 = self.encoders[2] if len(self.encoders) > 2 else None
            return encode_sd3(prompts, self.encoders[:2], t5, self.spec.max_length, self.joint_dim)
        return encode_flux(prompts, self.encoders[0], self.encoders[1], self.spec.max_length)

    @staticmethod
    def cat_text(conds: list[TextCond]) -> TextCond:
        return TextCond.cat(conds)

    def velocity(self, model, x_t: torch.Tensor, t: torch.Tensor, cond: TextCond,
                 ref: torch.Tensor | None = None) -> torch.Tensor:
        """model: an SD3Editor / FluxEditor (or its engine). -> v = eps - x0 [B,C,h,w] fp32."""
        dtype = _dtype(model.module if hasattr(model, "module") else model)
        cast = (lambda x: None if x is None else x.to(dtype))
        return model(cast(x_t), t.float(), cast(cond.tokens), cast(cond.pooled), cast(ref)).float()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> latents [B,C,H/f,W/f] fp32 (distribution mode, shifted and scaled)."""
        x = (2 * images - 1).to(_dtype(self.vae))
        latents = self.vae.encode(x).latent_dist.mode()
        return ((latents.float() - self.shift) * self.scaling)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> [B,3,H,W], nominally [0,1] (differentiable, not clamped)."""
        z = (latents / self.scaling + self.shift).to(_dtype(self.vae))
        return (self.vae.decode(z, return_dict=False)[0].float() + 1) / 2


def _dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32
