"""Differentiable Qwen2-VL image patchify: [B, C, H, W] in [0, 1] -> `pixel_values` rows."""
from __future__ import annotations

import torch

from npedit.ops import _ext


def vlm_patchify_ref(images: torch.Tensor, mean, std, patch_size: int = 14, temporal_patch_size: int = 2,
                     merge_size: int = 2) -> torch.Tensor:
    """images [B, C, H, W] in [0, 1], H and W multiples of patch_size * merge_size.

    -> [B * gh * gw, C * temporal_patch_size * patch_size**2] (images stacked in batch order), with
    gh = H / patch_size, gw = W / patch_size; rows ordered like Qwen2VLImageProcessor.
    """
    b, c, h, w = images.shape
    unit = patch_size * merge_size
    if h % unit or w % unit:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size*merge_size={unit}")
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    x = (images - mean_t) / std_t
    x = x.unsqueeze(1).expand(b, temporal_patch_size, c, h, w)  # still image repeated in time
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(b, 1, temporal_patch_size, c, gh // merge_size, merge_size, patch_size,
                  gw // merge_size, merge_size, patch_size)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(b * gh * gw, c * temporal_patch_size * patch_size * patch_size)


def vlm_patchify(images: torch.Tensor, mean, std, patch_size: int = 14, temporal_patch_size: int = 2,
                 merge_size: int = 2) -> torch.Tensor:
    """Fused patchify (normalise, repeat in time, permute) in one pass; see `vlm_patchify_ref`.

    mean/std: one value per channel (sequence or tensor). Runs npedit._C where it is built
    (NPEDIT_OPS: see `npedit.ops._ext.choose`), else the reference.
    """
    backend = _ext.choose("vlm_patchify", images, ext_ok=images.dim() == 4 and images.shape[1] <= 16)
    if backend == "ext":
        return torch.ops.npedit_C.vlm_patchify(images, _floats(mean), _floats(std), patch_size, temporal_patch_size,
                                               merge_size)
    if backend == "triton":
        return _ext.triton_impl("vlm_patchify")(images, mean, std, patch_size, temporal_patch_size, merge_size)
    return vlm_patchify_ref(images, mean, std, patch_size, temporal_patch_size, merge_size)


def _floats(values) -> list[float]:
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.detach().reshape(-1).tolist()]
    return [float(v) for v in values]
