"""adaLN modulation of a normalised input: (1 + scale) * norm(x) + shift (DiT blocks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def adaln_modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, norm: str = "layer",
                       eps: float = 1e-6) -> torch.Tensor:
    """x [B, S, D]; shift/scale [B, S, D] (per token) or [B, 1, D] (per sample) -> [B, S, D].

    norm is "layer" (LayerNorm without affine) or "rms" (RMSNorm without weight); stats in fp32.
    """
    xf = x.float()
    if norm == "layer":
        normed = F.layer_norm(xf, xf.shape[-1:], eps=eps)
    elif norm == "rms":
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
    return ((1 + scale.float()) * normed + shift.float()).to(x.dtype)


def adaln_modulate(x, shift, scale, norm: str = "layer", eps: float = 1e-6):
    """Fused adaLN modulation + norm; see `adaln_modulate_ref`."""
    return adaln_modulate_ref(x, shift, scale, norm, eps)
