"""Predict the per-GPU memory of a run for the plain stack and for npedit, and what fits.

    prediction = predict(cfg, Hardware(gpus=8, gpu_mem_gb=40))
    prediction.stacks["npedit"].total, prediction.fits("npedit")

Each stack's step is simulated on the meta device with the trainer's own code (`simulate`), and
its model states are added per engine and GPU count (`memory_model`). `predict_measurable` gives the
number a real single-process step (`measure.measure_step`) reports, for validation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from npedit.config import Config, apply_overrides
from npedit.plan.memory_model import Breakdown, Hardware, per_gpu
from npedit.plan.networks import build_networks
from npedit.plan.simulate import ModelSize, StepProfile, simulate_stack
from npedit.plan.stacks import NPEDIT, PLAIN, Stack

__all__ = ["Prediction", "predict", "predict_measurable"]


@dataclass
class Prediction:
    cfg: Config
    hardware: Hardware
    passes: int
    sizes: list[ModelSize]
    stacks: dict[str, Breakdown] = field(default_factory=dict)
    profiles: dict[str, StepProfile] = field(default_factory=dict)

    def fits(self, stack: str) -> bool:
        return self.stacks[stack].total <= self.hardware.gpu_mem_gb * 1024 ** 3

    def ratio(self) -> float:
        """plain / npedit per-GPU total."""
        return self.stacks["plain"].total / max(1, self.stacks["npedit"].total)


def _dataset(cfg: Config):
    if cfg.data.kind == "shapes":
        from npedit.trainer import build_dataset
        return build_dataset(cfg)
    return None


def predict(cfg: Config, hardware: Hardware, passes: int | None = None, critic: bool = True,
            stacks: tuple[Stack, ...] = (PLAIN, NPEDIT), dataset=None, words: list[str] | None = None) -> Prediction:
    """Per-GPU bytes of one steady-state step with `passes` student passes (default: the most the
    schedule makes, 2 unless method.timesteps has one step); `words`: the built-in vocabulary (default:
    the trainer's)."""
    from npedit.method.schedule import student_timesteps

    passes = passes or (2 if len(student_timesteps(cfg.method)) > 1 else 1)
    dataset = dataset if dataset is not None else _dataset(cfg)
    foreach = hardware.device == "cuda"   # torch AdamW's default on CUDA tensors
    sn = build_networks(apply_overrides(cfg, [f"method.fake_updates={min(1, cfg.method.fake_updates)}"]), "meta",
                        dataset, words)
    out = None
    for stack in stacks:
        profile, sizes = simulate_stack(cfg, stack, dataset, passes, foreach=foreach, critic=critic,
                                        target=hardware.device, sn=sn, words=words)
        if out is None:
            out = Prediction(cfg, hardware, passes, sizes)
        out.profiles[stack.name] = profile
        out.stacks[stack.name] = per_gpu(profile, sizes, cfg.train.precision, cfg.train.zero_stage, hardware,
                                         stack.engine, amp=stack.engine == "torch")
    return out


def predict_measurable(cfg: Config, stack: Stack, device: str = "cpu", passes: int = 2, dataset=None,
                       critic: bool = True, words: list[str] | None = None) -> Breakdown:
    """What `measure.measure_step(cfg, stack, device)` should report as its peak: one process, torch
    AdamW for both stacks (the step runner's layout), no runtime reserve."""
    torch_stack = dataclasses.replace(stack, engine="torch")
    dataset = dataset if dataset is not None else _dataset(cfg)
    profile, sizes = simulate_stack(cfg, torch_stack, dataset, passes, foreach=device == "cuda", critic=critic,
                                    target=device, words=words)
    return per_gpu(profile, sizes, cfg.train.precision, cfg.train.zero_stage, Hardware(1, 1e9, "none", "cpu"),
                   "torch", amp=False)
