"""The student's few-step sampler: the training unroll and 4-step inference.

Flow convention: x_t = (1 - t) x0 + t eps, v = eps - x0, so x0 = x_t - t v.
`velocity(x_t [B,C,h,w], t [B]) -> v [B,C,h,w]` closes over text and reference conditioning.
"""
from __future__ import annotations

from typing import Callable

import torch

from npedit import ops
from npedit.method.schedule import randn

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _full(batch: int, t: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((batch,), float(t), device=like.device, dtype=torch.float32)


def unroll_student(velocity: Velocity, shape: tuple[int, ...], k: int, timesteps: list[float],
                   generator: torch.Generator, device=None) -> torch.Tensor:
    """Training unroll (METHOD.md step 1): one pass from pure noise at t_1, then, if k > 1, re-noise
    the prediction to t_k and predict again. Gradients flow through both passes. -> x0 [B,C,h,w] fp32.
    """
    if not 1 <= k <= len(timesteps):
        raise ValueError(f"unroll depth k={k} must be in 1..{len(timesteps)}")
    eps = randn(shape, generator, device)
    t1 = timesteps[0]
    x0 = eps - t1 * velocity(eps, _full(shape[0], t1, eps))
    if k > 1:
        tk = _full(shape[0], timesteps[k - 1], eps)
        x_t, _ = ops.flow_noise(x0, randn(shape, generator, device), tk)
        x0 = x_t - tk.view(-1, *([1] * (x0.ndim - 1))) * velocity(x_t, tk)
    return x0


@torch.no_grad()
def sample(velocity: Velocity, shape: tuple[int, ...], timesteps: list[float], generator: torch.Generator,
           device=None) -> torch.Tensor:
    """Inference: predict x0, re-noise to the next t with fresh noise, repeat; no CFG. -> x0 fp32."""
    x = randn(shape, generator, device)
    x0 = x
    for i, t in enumerate(timesteps):
        tt = _full(shape[0], t, x)
        x0 = x - t * velocity(x, tt)
        if i + 1 < len(timesteps):
            x, _ = ops.flow_noise(x0, randn(shape, generator, device), _full(shape[0], timesteps[i + 1], x))
    return x0


@torch.no_grad()
def euler_sample(velocity: Velocity, shape: tuple[int, ...], steps: int, generator: torch.Generator,
                 device=None) -> torch.Tensor:
    """Deterministic Euler integration of the flow ODE dx/dt = v from t = 1 (noise) to t = 0, in `steps`
    equal steps: the sampler of a plain (not distilled) flow model. -> x0 fp32."""
    x = randn(shape, generator, device)
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * velocity(x, _full(shape[0], t, x))
    return x


SAMPLERS_HELP = "fewstep (the student's: predict x0, re-noise, repeat) or euler<N> (N Euler steps of the flow ODE)"


def euler_steps(sampler: str) -> int | None:
    """'fewstep' -> None; 'euler<N>' -> N (>= 1); anything else raises ValueError naming the choices."""
    if sampler == "fewstep":
        return None
    if sampler.startswith("euler") and sampler[5:].isdigit() and int(sampler[5:]) >= 1:
        return int(sampler[5:])
    raise ValueError(f"sampler must be {SAMPLERS_HELP}; got {sampler!r}")


def sample_with(sampler: str, velocity: Velocity, shape: tuple[int, ...], timesteps: list[float],
                generator: torch.Generator, device=None) -> torch.Tensor:
    """Sample x0 with the named sampler (see euler_steps); `timesteps` is the few-step schedule."""
    steps = euler_steps(sampler)
    if steps is None:
        return sample(velocity, shape, timesteps, generator, device)
    return euler_sample(velocity, shape, steps, generator, device)
