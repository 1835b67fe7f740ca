"""Schedules and per-step randomness of the method.

Anything that changes the sequence of module calls (unroll depth k) is drawn from a generator
seeded by (seed, step) only, so it is identical on every rank (ZeRO-3 needs identical calls).
Per-sample noise uses a generator seeded by (seed, step, rank, stream): different per rank,
reproducible on resume.
"""
from __future__ import annotations

import torch

from npedit.config import MethodConfig

_STREAMS = {"unroll": 1, "dmd": 2, "critic_sample": 3, "nothing": 4, "warmup": 5, "sample": 6, "critic_noise": 7,
            "warmup_prompt": 8, "judge_view": 9}


def shift_time(t: float | torch.Tensor, shift: float):
    """Flow time shift: t' = s t / (1 + (s - 1) t); s = 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def student_timesteps(method: MethodConfig) -> list[float]:
    """The few-step schedule after the time shift, t_1 > t_2 > ... (t_1 = 1 is pure noise)."""
    return [float(shift_time(t, method.time_shift)) for t in method.timesteps]


def vlm_logit_scale(step: int, method: MethodConfig) -> float:
    """tau(step) = min(1, tau_start + (1 - tau_start) * step / tau_ramp_steps); `step` counts the
    NP-Edit stage's steps (the paper trains that stage separately from the warm-up), 0 at its start."""
    if method.tau_ramp_steps <= 0:
        return 1.0
    step = max(0, step)
    return min(1.0, method.tau_start + (1.0 - method.tau_start) * step / method.tau_ramp_steps)


def shared_generator(seed: int, step: int) -> torch.Generator:
    """Same on every rank: draws that decide which modules run."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def rank_generator(seed: int, step: int, rank: int, stream: str) -> torch.Generator:
    """Per rank and per purpose: noise, timesteps, per-sample coin flips."""
    key = ((seed * 1_000_003 + step) * 1_009 + rank) * 101 + _STREAMS[stream]
    return torch.Generator().manual_seed(key % (2**63))


def sample_unroll_depth(seed: int, step: int, num_steps: int) -> int:
    """k ~ U{1..num_steps}, identical on all ranks."""
    return int(torch.randint(1, num_steps + 1, (1,), generator=shared_generator(seed, step)))


def randn(shape, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Noise drawn on the CPU generator (device-independent, reproducible), then moved."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def rand(shape, generator: torch.Generator, device=None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32).to(device=device)
