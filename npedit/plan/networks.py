"""Every network of a run, built for one training step outside DeepSpeed: on the meta device (the
planner) or on a real device (measurement and benchmarks).

The families, checks and adapters are the trainer's own (`npedit.build.ModelPlan`): the built-in
models are created from the config, published models from their config files. On the meta device no
weights are read: diffusers / transformers classes are instantiated with `from_config` /
`_from_config` under `torch.device("meta")`; on a real device the published models are loaded with
`from_pretrained` exactly as the trainer loads them without ZeRO-3.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from npedit.build import ModelPlan, default_words
from npedit.config import Config
from npedit.method.step import Networks
from npedit.plan.known import length_tokenizers
from npedit.plan.stacks import set_run_checkpointing

__all__ = ["StepNetworks", "build_networks", "param_bytes", "param_count"]


@dataclass
class StepNetworks:
    """The method's view (`nets`) plus the modules by role, for accounting."""
    nets: Networks
    student: nn.Module
    fake: nn.Module
    real: nn.Module
    frozen: dict[str, nn.Module]          # text encoder(s), VAE, VLM (judge module)
    plan: ModelPlan
    device: torch.device
    dtype: torch.dtype
    plain: dict[str, nn.Module] = field(default_factory=dict)   # parameter-free modules (built-in codec)

    @property
    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student, "fake": self.fake}

    @property
    def all_frozen(self) -> dict[str, nn.Module]:
        return {"real": self.real, **self.frozen}


def param_count(module: nn.Module) -> int:
    """Unique parameters (tied weights once)."""
    seen, n = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def param_bytes(module: nn.Module) -> int:
    seen, n = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            n += t.numel() * t.element_size()
    return n


def _dtype(cfg: Config) -> torch.dtype:
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32


@contextlib.contextmanager
def _default_device(device: torch.device):
    if device.type == "meta":
        with torch.device("meta"):
            yield
    else:
        yield


def build_networks(cfg: Config, device: str | torch.device = "meta", dataset=None,
                   words: list[str] | None = None) -> StepNetworks:
    """All networks of `cfg` on `device` ("meta": no weights read, nothing computed later), trainable
    ones with requires_grad; frozen models in the run's precision, trainable ones too (the
    DeepSpeed engines of a bf16 run compute in bf16)."""
    device = torch.device(device)
    dtype = _dtype(cfg)
    with _default_device(device), warnings.catch_warnings(), length_tokenizers():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        plan = ModelPlan(cfg, words or default_words(), dataset)
    if plan.loads_published and device.type == "meta":
        student, real, fake, frozen, plain = _meta_published(plan, dtype)
    else:
        models = plan.build(None)
        student, real, fake, frozen, plain = models.student, models.real, models.fake, dict(models.frozen), \
            dict(models.plain)
    for module in [student, real, fake, *frozen.values(), *plain.values()]:
        module.to(device=device, dtype=dtype)
    for module in [real, *frozen.values()]:
        module.requires_grad_(False).eval()
    student.requires_grad_(True).train()
    fake.requires_grad_(True).train()
    modules = {**frozen, **plain}
    diffusion, judge = plan.networks(modules)
    nets = Networks(student, fake, real, diffusion, judge)
    sn = StepNetworks(nets, student, fake, real, frozen, plan, device, dtype, plain)
    set_run_checkpointing(sn, cfg.student.checkpointing)
    return sn


# ---------------------------------------------------------------------------------------------------- meta


def _meta_diffusers(name: str, config: dict, dtype: torch.dtype) -> nn.Module:
    import diffusers

    cls = getattr(diffusers, name)
    with torch.device("meta"):
        return cls.from_config(config).to(dtype)


def _meta_transformers(name: str, config: dict, dtype: torch.dtype, **kwargs) -> nn.Module:
    import transformers

    cls = getattr(transformers, name)
    conf = cls.config_class.from_dict(dict(config))
    with torch.device("meta"):
        return cls._from_config(conf, dtype=dtype, **kwargs)


def _meta_published(plan: ModelPlan, dtype: torch.dtype):
    """Student / scores / frozen models of a run with published models, on the meta device."""
    from npedit.adapters.select import read_json

    frozen: dict[str, nn.Module] = {}
    plain: dict[str, nn.Module] = {}
    b = plan.builtin
    if plan.student_spec is None:
        student, real, fake = b.student, b.real, b.fake
        frozen["text_encoder"] = b.text_encoder
        plain["codec"] = b.codec
    else:
        spec = plan.student_spec
        name = spec.index["transformer"][1]
        editors = []
        for source, field_name in ((spec.source, spec.field), (spec.teacher, "student.teacher"), (spec.teacher, "")):
            config = read_json(source, "transformer/config.json", field_name or spec.field)
            transformer = _meta_diffusers(name, config, dtype)
            spec.install_attention(transformer)        # as DiffusersStudentSpec.load_transformer
            editors.append(_editor(spec, transformer))
        student, real, fake = editors
        for encoder, _ in spec.parts:
            library, cls_name = spec.index[encoder]
            config = read_json(spec.source, f"{encoder}/config.json", spec.field)
            make = _meta_transformers if library == "transformers" else _meta_diffusers
            frozen[encoder] = make(cls_name, config, dtype)
        library, cls_name = spec.index["vae"]
        frozen["vae"] = _meta_diffusers(cls_name, spec.vae_config, dtype)
    if plan.judge_spec is None:
        frozen["vlm"] = b.vlm
    else:
        from npedit.adapters.hf_judge import JudgeModule
        from npedit.adapters.select import VLM_FAMILIES

        judge = plan.judge_spec
        attention = getattr(judge, "attention", "sdpa")          # the loader's attn_implementation
        if attention == "npedit":
            from npedit.adapters.hf_attention import register_transformers_attention
            register_transformers_attention()
        vlm = _meta_transformers(VLM_FAMILIES[judge.family_name], judge.config, dtype,
                                 attn_implementation=attention)
        frozen["vlm"] = JudgeModule(vlm, judge.family)
    return student, real, fake, frozen, plain


def _editor(spec, transformer: nn.Module) -> nn.Module:
    from npedit.adapters.flux import FluxEditor
    from npedit.adapters.sd3 import SD3Editor

    return SD3Editor(transformer) if spec.family == "sd3" else FluxEditor(transformer, spec.guidance)
