"""What differs between the supported VLM judges: image size rules, pixel layout, vision features,
image placeholder tokens in the prompt, and extra language-model inputs.

Every family computes vision features once per distinct image (the edited images with gradient,
the references without) and hands the per-question features to the model's own forward through
`mm_encoder_outputs` (transformers >= 5), which scatters them into the image-token positions and
computes positions (Qwen's 3-D RoPE included) exactly as `model(**processor(...))` would.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from npedit.adapters import vlm_preprocess as pre
from npedit.config import ConfigError


class VLMFamily:
    """Base: `pixels` -> `image_features` (per image) -> `question_features` -> `expand` the prompt."""

    name = ""
    image_token = ""           # the placeholder the chat template writes once per image
    mean: list[float]
    std: list[float]
    size: int

    def __init__(self, config: dict, preproc: dict, processor: dict, tokenizer, image_size: int, field: str):
        self.config, self.preproc, self.processor, self.field = config, preproc, processor, field
        self.mean = list(preproc.get("image_mean", [0.5, 0.5, 0.5]))
        self.std = list(preproc.get("image_std", [0.5, 0.5, 0.5]))
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def pixels(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def image_features(self, model: nn.Module, pixels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """-> one [tokens, D] (or family-specific) feature tensor per image."""
        raise NotImplementedError

    def question_features(self, model: nn.Module, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Features of the images one question shows, in slot order -> what its placeholders receive."""
        return feats

    def tokens_per_image(self, n_images: int) -> int:
        raise NotImplementedError

    def expand(self, text: str, n_images: int) -> str:
        """Replace each image placeholder of a rendered chat prompt with the model's image tokens."""
        parts = text.split(self.image_token)
        if len(parts) - 1 != n_images:
            raise ValueError(f"{self.field}: the chat template wrote {len(parts) - 1} {self.image_token!r} "
                             f"placeholders for {n_images} image(s)")
        return self.image_text(n_images).join(parts)

    def image_text(self, n_images: int) -> str:
        return self.image_token * self.tokens_per_image(n_images)

    def lm_kwargs(self, input_ids: torch.Tensor, n_images: int) -> dict[str, Any]:
        """Extra inputs of the model's forward for a batch showing n_images images in all."""
        return {}

    def encoder_output(self, feats: list[torch.Tensor]):
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        return BaseModelOutputWithPooling(pooler_output=tuple(feats))

    def external_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the judge reads outside their own module's forward (besides the LM head)."""
        return []

    def prepare(self, model: nn.Module) -> None:
        """Changes to the loaded model that keep its function (before any engine wraps it)."""


class PatchProjection(nn.Module):
    """A convolution whose kernel is its stride, on inputs of exactly one kernel each, as the matmul it
    is: x [N, C, *kernel] -> [N, E, 1, ...] = W [E, C * prod(kernel)] x_flat (+ bias). It keeps the
    convolution's parameters (ZeRO-3 partitions included). Same values as the convolution up to the
    order of the sums; without it, the CPU (oneDNN) Conv3d backward to the pixels keeps buffers of about
    7x the pixels that no tensor shows."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        if tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding) or conv.groups != 1:
            raise ValueError(f"PatchProjection needs a convolution with kernel = stride, no padding, one group; got {conv}")
        self.weight, self.bias = conv.weight, conv.bias
        self.kernel_size = tuple(conv.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.kernel_size:
            raise ValueError(f"PatchProjection takes one kernel {self.kernel_size} per row, got {tuple(x.shape)}")
        out = nn.functional.linear(x.flatten(1), self.weight.flatten(1), self.bias)       # [N, E]
        return out.view(out.shape[0], out.shape[1], *([1] * len(self.kernel_size)))


class QwenVL(VLMFamily):
    """Qwen2-VL and Qwen2.5-VL: patches of 14 px merged 2x2, 3-D RoPE positions (`image_grid_thw`)."""

    image_token = "<|image_pad|>"

    def __init__(self, config, preproc, processor, tokenizer, image_size, field):
        super().__init__(config, preproc, processor, tokenizer, image_size, field)
        self.name = config.get("model_type", "qwen2_vl")
        vision = config.get("vision_config", {})
        self.patch = int(preproc.get("patch_size", vision.get("patch_size", 14)))
        self.merge = int(preproc.get("merge_size", vision.get("spatial_merge_size", 2)))
        self.temporal = int(preproc.get("temporal_patch_size", vision.get("temporal_patch_size", 2)))
        size = preproc.get("size") or {}
        self.min_pixels = int(preproc.get("min_pixels") or size.get("shortest_edge") or 56 * 56)
        self.max_pixels = int(preproc.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280)
        self.size = image_size or pre.qwen_default_size(448, self.patch, self.merge, self.min_pixels, self.max_pixels)
        problem = pre.qwen_size_problem(self.size, self.patch, self.merge, self.min_pixels, self.max_pixels)
        if problem:
            raise ConfigError(f"vlm.image_size={self.size}: the {self.name} judge cannot take it ({problem})")

    def pixels(self, images):
        return pre.qwen_pixels(images, self.size, self.mean, self.std, self.patch, self.temporal, self.merge)

    def prepare(self, model):
        # the patch embedding's Conv3d (kernel = stride = one whole [C, T, P, P] patch) is a matmul
        embed = model.model.visual.patch_embed
        embed.proj = PatchProjection(embed.proj)

    def image_features(self, model, pixels):
        out = model.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
        return list(out.pooler_output)  # per image [gh*gw/merge^2, D]

    def tokens_per_image(self, n_images):
        return (self.size // self.patch) ** 2 // self.merge ** 2

    def lm_kwargs(self, input_ids, n_images):
        g = self.size // self.patch
        grid = torch.tensor([[1, g, g]] * n_images, dtype=torch.long, device=input_ids.device)
        return {"image_grid_thw": grid, "mm_token_type_ids": (input_ids == self.image_token_id).int()}


class LlavaOneVision(VLMFamily):
    """LLaVA-OneVision: SigLIP tiles of `size`; a one-image question uses 'anyres' (base + one tile with a
    newline token per row), a several-image question one base tile plus one newline token per image,
    as the processor and `pack_image_features` do. The fixed square size is the vision tower's own."""

    name = "llava_onevision"
    image_token = "<image>"

    def __init__(self, config, preproc, processor, tokenizer, image_size, field):
        super().__init__(config, preproc, processor, tokenizer, image_size, field)
        vision = config.get("vision_config", {})
        native = int(vision.get("image_size", 384))
        self.size = image_size or native
        if self.size != native:
            raise ConfigError(f"vlm.image_size={self.size}: the llava_onevision judge takes {native}x{native} tiles "
                              f"(its vision tower's image_size); set vlm.image_size=0 or {native}")
        pinpoints = config.get("image_grid_pinpoints") or preproc.get("image_grid_pinpoints") or []
        if [native, native] not in [list(p) for p in pinpoints]:
            raise ConfigError(f"{field}: image_grid_pinpoints {pinpoints} lack [{native}, {native}]; the torch path "
                              "needs the one-tile grid for one-image questions")
        self.grid = native // int(vision.get("patch_size", 14))
        self.strategy = config.get("vision_feature_select_strategy", "full")
        self.layer = config.get("vision_feature_layer", -1)
        self.aspect = config.get("vision_aspect_ratio", "anyres_max_9")

    def pixels(self, images):
        return pre.tile_pixels(images, self.size, self.mean, self.std)

    def image_features(self, model, pixels):
        base = model.model
        out = base.vision_tower(pixels["pixel_values"].to(base.dtype), output_hidden_states=True, return_dict=True)
        layers = [self.layer] if isinstance(self.layer, int) else list(self.layer)
        feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        if self.strategy == "default":
            feats = feats[:, 1:]
        return list(base.multi_modal_projector(feats))  # per image [grid^2, D]

    def question_features(self, model, feats):
        base = model.model
        sizes = torch.tensor([[self.size, self.size]] * len(feats))
        # one image: anyres with a single tile that equals the base image; several: base tile only
        tiles = [torch.stack([f, f]) for f in feats] if len(feats) == 1 else [f[None] for f in feats]
        packed, _ = base.pack_image_features(tiles, sizes, image_newline=base.image_newline,
                                             vision_aspect_ratio=self.aspect)
        return list(packed)

    def tokens_per_image(self, n_images):
        base = self.grid ** 2
        n = base + 1 if n_images > 1 else base + self.grid * (self.grid + 1)
        return n - 1 if self.strategy == "default" else n

    def external_parameters(self, model):
        return [model.model.image_newline]


class InternVL(VLMFamily):
    """InternVL (transformers-native, e.g. InternVL3-*-hf): one 448 px tile per image, pixel-shuffled
    to `image_seq_length` tokens between <img> and </img>."""

    name = "internvl"
    image_token = "<IMG_CONTEXT>"

    def __init__(self, config, preproc, processor, tokenizer, image_size, field):
        self.image_token = getattr(tokenizer, "context_image_token", None) or "<IMG_CONTEXT>"
        super().__init__(config, preproc, processor, tokenizer, image_size, field)
        self.start = getattr(tokenizer, "start_image_token", None) or "<img>"
        self.end = getattr(tokenizer, "end_image_token", None) or "</img>"
        vision = config.get("vision_config", {})
        native = vision.get("image_size", [448, 448])
        native = int(native[0] if isinstance(native, (list, tuple)) else native)
        self.size = image_size or native
        if self.size != native:
            raise ConfigError(f"vlm.image_size={self.size}: the internvl judge takes {native}x{native} tiles "
                              f"(its vision tower's image_size); set vlm.image_size=0 or {native}")
        self.seq = int(config.get("image_seq_length", processor.get("image_seq_length", 256)))

    def pixels(self, images):
        return pre.tile_pixels(images, self.size, self.mean, self.std)

    def image_features(self, model, pixels):
        cfg = model.config
        out = model.model.get_image_features(pixels["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
                                             vision_feature_select_strategy=cfg.vision_feature_select_strategy)
        return list(out.pooler_output)  # per image [image_seq_length, D]

    def tokens_per_image(self, n_images):
        return self.seq

    def image_text(self, n_images):
        return self.start + self.image_token * self.seq + self.end

    def encoder_output(self, feats):
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        return BaseModelOutputWithPooling(pooler_output=torch.cat(feats))


FAMILY_CLASSES = {"qwen2_vl": QwenVL, "qwen2_5_vl": QwenVL, "llava_onevision": LlavaOneVision, "internvl": InternVL}
