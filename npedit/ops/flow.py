"""Memory-bound glue of the method: DMD loss and flow re-noising, each one pass when fused.

Flow convention: x_t = (1 - t) x0 + t eps, v = eps - x0 (t = 1 is pure noise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from npedit.ops import _ext

DMD_EPS = 1e-8  # floor of the per-sample normaliser, avoids 0/0 when x0 == x_real


def dmd_loss_ref(x0: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """x0, x_real, x_fake [B, ...] -> scalar fp32.

    norm_b = mean |x0 - x_real| over sample b; grad = (x_fake - x_real) / norm;
    loss = 0.5 * mse(x0, sg(x0 - grad)), so d loss / d x0 = grad / x0.numel().
    Gradient flows to x0 only.
    """
    with torch.no_grad():
        dims = tuple(range(1, x0.ndim))
        norm = (x0.float() - x_real.float()).abs().mean(dim=dims, keepdim=True).clamp_min(DMD_EPS)
        grad = (x_fake.float() - x_real.float()) / norm
        target = x0.float() - grad
    return 0.5 * F.mse_loss(x0.float(), target)


def flow_noise_ref(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0, noise [B, ...], t [B] -> (x_t, v_target), both [B, ...] in x0's dtype."""
    tb = t.reshape(-1, *([1] * (x0.ndim - 1))).to(torch.float32)
    x_t = (1 - tb) * x0.float() + tb * noise.float()
    return x_t.to(x0.dtype), (noise.float() - x0.float()).to(x0.dtype)


def dmd_loss(x0: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """Fused DMD loss, one read of the inputs forward and one pass backward; see `dmd_loss_ref`.

    Runs npedit._C where it is built (NPEDIT_OPS: see `npedit.ops._ext.choose`), else the reference.
    """
    backend = _ext.choose("dmd_loss", x0, ext_ok=x0.dim() >= 2)
    if backend == "ext":
        return torch.ops.npedit_C.dmd_loss(x0, x_real, x_fake, DMD_EPS)[0]
    if backend == "triton":
        return _ext.triton_impl("dmd_loss")(x0, x_real, x_fake)
    return dmd_loss_ref(x0, x_real, x_fake)


def flow_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused flow re-noising, (x_t, v_target) in one pass; see `flow_noise_ref`.

    The compiled kernel has no gradient for t: when t requires grad, auto mode uses the reference.
    """
    t_grad = t.requires_grad and torch.is_grad_enabled()
    backend = _ext.choose("flow_noise", x0, ext_ok=x0.dim() >= 1 and not t_grad)
    if backend == "ext":
        x_t, v = torch.ops.npedit_C.flow_noise(x0, noise, t)
        return x_t, v
    if backend == "triton":
        return _ext.triton_impl("flow_noise")(x0, noise, t)
    return flow_noise_ref(x0, noise, t)
