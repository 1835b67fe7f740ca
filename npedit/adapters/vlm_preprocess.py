"""Differentiable torch image preprocessing for the VLM judges (the HF image processors are PIL/numpy).

Images arrive as [N, 3, H, W] in [0, 1] (the decoded student output, with gradient). Each function
resizes to the judge's fixed size with antialiased bicubic interpolation (PIL's filter for these
processors), normalises with the processor's mean / std and lays the pixels out as the model
expects. On an image already at the target size the result equals the HF processor's
`pixel_values` up to float rounding. When a resize is needed, torch's antialiased bicubic differs
from PIL's (which also rounds to uint8) by at most RESIZE_TOLERANCE per pixel in [0, 1] units on
photograph-like content (measured: max ~4e-3, mean ~1e-3 on smooth images); per-pixel noise images,
the worst case for any bicubic filter, reach ~8e-2.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from npedit import ops

RESIZE_TOLERANCE = 2e-2  # max |torch - PIL| per pixel in [0, 1] units after a resize (smooth content)


def resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [N, 3, height, width]; antialiased bicubic, clamped like PIL's uint8 output."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"judge images must be [N, 3, H, W] in [0, 1], got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) == (height, width):
        return images
    out = F.interpolate(images, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = images.new_tensor(list(mean)).view(1, -1, 1, 1)
    s = images.new_tensor(list(std)).view(1, -1, 1, 1)
    return (images - m) / s


def qwen_pixels(images: torch.Tensor, size: int, mean, std, patch_size: int = 14, temporal_patch_size: int = 2,
                merge_size: int = 2) -> dict[str, torch.Tensor]:
    """Qwen2-VL / Qwen2.5-VL: -> pixel_values [N*gh*gw, 3*T*p*p] (fp32), image_grid_thw [N, 3] (int64)."""
    x = resize(images.float(), size, size)
    pixel_values = ops.vlm_patchify(x, list(mean), list(std), patch_size, temporal_patch_size, merge_size)
    g = size // patch_size
    grid = torch.tensor([[1, g, g]] * images.shape[0], dtype=torch.long, device=images.device)
    return {"pixel_values": pixel_values, "image_grid_thw": grid}


def tile_pixels(images: torch.Tensor, size: int, mean, std) -> dict[str, torch.Tensor]:
    """One square tile per image (LLaVA-OneVision base image, InternVL single tile): -> pixel_values [N, 3, S, S]."""
    return {"pixel_values": normalize(resize(images.float(), size, size), mean, std)}


def qwen_size_problem(size: int, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int) -> str | None:
    """Why a Qwen2-VL judge cannot take size x size images (None when it can): the processor's smart_resize
    would change the size, so the torch path would no longer match it."""
    unit = patch_size * merge_size
    if size <= 0 or size % unit:
        return f"{size} is not a positive multiple of patch_size * merge_size = {unit}"
    if not min_pixels <= size * size <= max_pixels:
        return (f"{size}x{size} = {size * size} pixels is outside the processor's [min_pixels, max_pixels] = "
                f"[{min_pixels}, {max_pixels}]")
    return None


def qwen_default_size(image_size: int, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int) -> int:
    """The square size the Qwen2-VL processor would give a square image of `image_size` (smart_resize)."""
    unit = patch_size * merge_size
    side = max(unit, round(image_size / unit) * unit)
    if side * side > max_pixels:
        side = max(unit, math.floor(math.sqrt(max_pixels) / unit) * unit)
    elif side * side < min_pixels:
        side = math.ceil(math.sqrt(min_pixels) / unit) * unit
    return side
