"""Simulate one training step of a stack on the meta device and summarise its memory.

`simulate_stack(cfg, stack, ...)` builds the run's networks on the meta device (no weights read),
runs a steady-state step through `run_step.training_step` under `meta_sim.simulate` with a
`MemoryTracker` and returns the activation profile of the step plus the sizes of every model,
which `memory_model` turns into per-GPU bytes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from npedit.config import Config, apply_overrides
from npedit.plan.meta_sim import gpu_kernels, simulate
from npedit.plan.networks import build_networks, param_count
from npedit.plan.run_step import (
    make_optimizers,
    probe_batch,
    step_with_passes,
    training_step,
)
from npedit.plan.stacks import Stack, applied
from npedit.plan.tracker import MemoryTracker, PhaseMark

__all__ = ["ModelSize", "StepProfile", "model_sizes", "simulate_stack"]


@dataclass
class ModelSize:
    role: str                # student | fake | real | text_encoder* | vae | vlm
    params: int              # unique parameters
    buffers_bytes: int       # buffers (not partitioned by ZeRO)
    largest_leaf: int        # parameters of the largest module holding parameters directly (ZeRO-3 gathers)
    external: int = 0        # parameters used outside their module (gathered for the judge's whole forward)
    trainable: bool = False


@dataclass
class StepProfile:
    """Live bytes of one simulated step above what was resident before it."""
    stack: str
    passes: int
    dynamic_peak: int                         # highest bytes above the step's start
    peak_phase: str                           # the innermost phase open at that moment
    phases: dict[str, PhaseMark] = field(default_factory=dict)

    def kept(self, name: str) -> int:
        mark = self.phases.get(name)
        return mark.kept if mark is not None else 0

    @property
    def student_pass_bytes(self) -> list[int]:
        return [self.kept(f"student pass {i}") for i in range(1, self.passes + 1)]

    @property
    def activations(self) -> dict[str, int]:
        """What the student loss's forward keeps for backward, by part."""
        parts = {f"student pass {i + 1}": b for i, b in enumerate(self.student_pass_bytes)}
        parts["decode"] = self.kept("decode")
        parts["judge (VLM)"] = self.kept("judge")
        return parts


def _row_gathered(module: nn.Module, answer_loss: str) -> set[int]:
    """ids of the sub-modules whose table is read row by row (`npedit.engine.zero_rows`), never gathered
    whole: the ones a module names in `row_gathered` (the built-in token embeddings), and with the
    Yes/No answer loss those in `answer_rows` (the LM head of the built-in and Hugging Face judges)."""
    ids = set()
    for m in module.modules():
        names = tuple(getattr(m, "row_gathered", ()))
        if answer_loss == "binary":
            names += tuple(getattr(m, "answer_rows", ()))
        ids.update(id(getattr(m, name)) for name in names)
    return ids


def model_sizes(sn, answer_loss: str = "binary") -> list[ModelSize]:
    sizes = []
    roles = {"student": sn.student, "fake": sn.fake, "real": sn.real, **sn.frozen}
    for role, module in roles.items():
        rows = _row_gathered(module, answer_loss)
        leaf = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()
                    if id(m) not in rows), default=0)
        buffers = sum(b.numel() * b.element_size() for b in module.buffers())
        external = 0
        if role == "vlm" and hasattr(module, "answer_head") and answer_loss == "vocab":
            # JudgeModule: the vocabulary loss gathers the LM head around the loss (the Yes/No loss reads
            # its two rows only)
            external = module.answer_head.weight.numel()
        sizes.append(ModelSize(role, param_count(module), buffers, leaf, external, role in ("student", "fake")))
    return sizes


class _PeakPhase(MemoryTracker):
    """A tracker that remembers which phase was open when the peak was reached."""

    def __init__(self):
        super().__init__()
        self.peak_phase = ""

    def _add(self, t: torch.Tensor) -> None:
        before = self.peak
        super()._add(t)
        if self.peak > before:
            self.peak_phase = self._s.open[-1][0] if self._s.open else ""


def simulate_stack(cfg: Config, stack: Stack, dataset=None, passes: int = 2, foreach: bool | None = None,
                   critic: bool = True, sn=None, target: str = "cuda",
                   words: list[str] | None = None) -> tuple[StepProfile, list[ModelSize]]:
    """Profile a steady-state step of `stack` on the meta device, as it would run on `target` ("cuda":
    the fused ops take their GPU kernels (`meta_sim.gpu_kernels`) unless the stack forces the
    reference ops; "cpu", or the reference ops anywhere: the reference implementations, their
    temporaries included).

    Engine "torch": AdamW runs (its states exist before the step, as in any step after the first;
    gradients and the optimizer's temporaries are in the profile); engine "deepspeed": gradients are
    dropped at accumulation and no optimizer runs (ZeRO's buffers are accounted by the memory model).
    The critic updates of a step are identical, so one is simulated."""
    sim_cfg = apply_overrides(cfg, [f"method.fake_updates={min(1, cfg.method.fake_updates)}"])
    sn = sn or build_networks(sim_cfg, "meta", dataset, words)
    batch = probe_batch(sim_cfg, dataset, "meta")
    step = step_with_passes(sim_cfg, passes)
    optimizers = make_optimizers(sn, sim_cfg, foreach=foreach) if stack.engine == "torch" else None
    with applied(stack, sn, cfg.student.checkpointing):
        tracker = _PeakPhase()
        # the tracker goes below the simulation's modes: it must see the ops they open up
        gpu = target == "cuda" and stack.ops != "ref"
        with tracker, simulate(decompose=not gpu), (gpu_kernels() if gpu else contextlib.nullcontext()):
            _init_states(optimizers)
            tracker.reset_peak()
            tracker.peak_phase = ""
            start = tracker.live
            out = training_step(sn, sim_cfg, batch, step, optimizers, tracker, critic)
    profile = StepProfile(stack.name, out["passes"], tracker.peak - start, tracker.peak_phase, dict(tracker.phases))
    return profile, model_sizes(sn, cfg.vlm.answer_loss)


def _init_states(optimizers: dict | None) -> None:
    """Create the optimizer states the way a first step would (a step on zero gradients)."""
    for opt in (optimizers or {}).values():
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
