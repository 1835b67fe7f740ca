"""adaLN modulation of a normalised input: (1 + scale) * norm(x) + shift (DiT blocks).

Op stack: `adaln_modulate_ref` (specification, CPU path) -> Triton kernels in
`npedit/ops/triton/adaln.py` -> custom ops `npedit::adaln_modulate_fwd|bwd` -> `adaln_modulate`.
The fused op reads x once and writes y once; it saves x, shift, scale (inputs) and two fp32 numbers
per token (mean, rstd) for the backward instead of the normalised activations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from npedit.ops.triton import use_triton


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


@torch.library.custom_op("npedit::adaln_modulate_fwd", mutates_args=())
def _adaln_fwd_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, norm: str,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> y [B, S, D] (x's dtype), mean [B, S] fp32, rstd [B, S] fp32."""
    from npedit.ops.triton.adaln import adaln_fwd
    return adaln_fwd(x, shift, scale, norm, eps)


@_adaln_fwd_op.register_fake
def _(x, shift, scale, norm, eps):
    stats = x.new_empty(x.shape[:2], dtype=torch.float32)
    return x.new_empty(x.shape), stats, stats.new_empty(stats.shape)


@torch.library.custom_op("npedit::adaln_modulate_bwd", mutates_args=())
def _adaln_bwd_op(dy: torch.Tensor, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                  rstd: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from npedit.ops.triton.adaln import adaln_bwd
    return adaln_bwd(dy, x, shift, scale, mean, rstd, norm)


@_adaln_bwd_op.register_fake
def _(dy, x, shift, scale, mean, rstd, norm):
    return x.new_empty(x.shape), shift.new_empty(shift.shape), scale.new_empty(scale.shape)


def _adaln_setup(ctx, inputs, output):
    x, shift, scale, norm, _ = inputs
    ctx.save_for_backward(x, shift, scale, output[1], output[2])
    ctx.norm = norm


def _adaln_backward(ctx, dy, _dmean, _drstd):
    x, shift, scale, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale = torch.ops.npedit.adaln_modulate_bwd(dy, x, shift, scale, mean, rstd, ctx.norm)
    return dx, dshift, dscale, None, None


_adaln_fwd_op.register_autograd(_adaln_backward, setup_context=_adaln_setup)


def adaln_modulate(x, shift, scale, norm: str = "layer", eps: float = 1e-6):
    """Fused adaLN modulation + norm; see `adaln_modulate_ref`.

    x [B, S, D]; shift/scale [B, S, D] (per token) or [B, 1, D] (per sample) -> [B, S, D] in x's dtype.
    Gradients to x, shift and scale.
    """
    if norm not in ("layer", "rms"):
        raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
    if x.dim() != 3:
        raise ValueError(f"adaln_modulate: x must be [B, S, D], got {tuple(x.shape)}")
    ok = {torch.float16, torch.bfloat16, torch.float32}
    if use_triton(x, shift, scale, op="adaln_modulate") and {x.dtype, shift.dtype, scale.dtype} <= ok:
        return torch.ops.npedit.adaln_modulate_fwd(x, shift, scale, norm, float(eps))[0]
    return adaln_modulate_ref(x, shift, scale, norm, eps)
