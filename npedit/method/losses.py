"""Loss terms of the method (METHOD.md steps 2-6). Shapes: latents [B, C, h, w]."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from npedit import ops


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w v) / max(sum(w), 1): per-question losses [Q] with weights [Q] -> scalar."""
    weights = weights.to(values.device, values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def cfg_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance with a per-sample scale [B]."""
    return v_uncond + scale.view(-1, *([1] * (v_cond.ndim - 1))) * (v_cond - v_uncond)


def dmd_loss(x0: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """0.5 mse(x0, sg(x0 - (x_fake - x_real) / mean|x0 - x_real|)); gradient to x0 only."""
    return ops.dmd_loss(x0, x_real, x_fake)


def flow_matching_loss(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """Plain flow-matching loss ||v_pred - v_target||^2 (fake score, warm-up)."""
    return F.mse_loss(v_pred.float(), v_target.float())


def do_nothing_loss(x0: torch.Tensor, ref_latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mse(x0, reference latent) on the do-nothing samples (mask [B] bool), divided by B."""
    per_sample = (x0.float() - ref_latent.float()).pow(2).flatten(1).mean(1)  # [B]
    return (per_sample * mask.to(per_sample.device, per_sample.dtype)).sum() / x0.shape[0]
