"""Measure one training step for real: peak allocated bytes and bytes saved for backward.

Two peaks, both on top of the bytes resident before the step (weights, buffers, optimizer states):
- `peak_bytes`, the allocator's: on CUDA `torch.cuda.max_memory_allocated`, on the CPU the allocation
  and free events `torch.profiler` records with `profile_memory=True`. It includes memory kernels
  allocate for themselves (the CPU convolution kernels' im2col / reorder buffers, cuDNN workspaces);
- `live_peak_bytes`, the live tensor bytes of the real run (`tracker.MemoryTracker`, with npedit's
  reference custom ops opened up by `meta_sim.DecomposeCustomOps`): every tensor the step's ops
  create, nothing kernels keep to themselves.
Bytes saved for backward come from `npedit.ops.memory.SavedTensorCounter`. The step is the steady
state: a first step creates the optimizer states, the second is measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from npedit.config import Config
from npedit.method.step import npedit_student_loss
from npedit.ops.memory import SavedTensorCounter
from npedit.plan.meta_sim import DecomposeCustomOps
from npedit.plan.networks import build_networks
from npedit.plan.run_step import (
    make_optimizers,
    probe_batch,
    step_with_passes,
    training_step,
)
from npedit.plan.stacks import Stack, applied
from npedit.plan.tracker import MemoryTracker

__all__ = ["Measurement", "cpu_peak_bytes", "measure_step", "resident_bytes"]


@dataclass
class Measurement:
    stack: str
    device: str
    passes: int
    baseline_bytes: int      # parameters, buffers and optimizer states before the step
    peak_bytes: int          # baseline + the allocator's highest bytes during the step
    live_peak_bytes: int     # baseline + the highest live tensor bytes during the step
    saved_bytes: int         # bytes the student loss's forward keeps for backward

    def to_dict(self) -> dict:
        return asdict(self)


def resident_bytes(modules, optimizers) -> int:
    """Bytes of the unique storages of the modules' parameters and buffers and the optimizer states."""
    seen: set[int] = set()
    total = 0
    tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
    for opt in optimizers:
        for state in opt.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def cpu_peak_bytes(fn) -> int:
    """Run fn() under the profiler and return the highest bytes allocated (and not yet freed) during it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def measure_step(cfg: Config, stack: Stack, device: str = "cpu", dataset=None, passes: int = 2,
                 critic: bool = True, words: list[str] | None = None, sn=None) -> Measurement:
    """Build the run's networks on `device` (or take `sn`, built by `build_networks` for this config and
    device) and measure a steady-state step of `stack`."""
    dev = torch.device(device)
    sn = sn or build_networks(cfg, dev, dataset, words)
    batch = probe_batch(cfg, dataset, dev)
    step = step_with_passes(cfg, passes)
    optimizers = make_optimizers(sn, cfg)
    modules = [sn.student, sn.fake, sn.real, *sn.frozen.values(), *sn.plain.values()]
    with applied(stack, sn, cfg.student.checkpointing):
        training_step(sn, cfg, batch, step, optimizers, critic=critic)          # creates the optimizer states
        with SavedTensorCounter() as counter:
            loss, _, _ = npedit_student_loss(sn.nets, batch, step, cfg, rank=0)
        saved = counter.saved_bytes(exclude=loss)
        loss.backward()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        del loss
        baseline = resident_bytes(modules, optimizers.values())
        tracker = MemoryTracker()

        def run():
            with tracker, DecomposeCustomOps():
                training_step(sn, cfg, batch, step, optimizers, critic=critic)

        if dev.type == "cuda":
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            peak = baseline + torch.cuda.max_memory_allocated() - start
        else:
            peak = baseline + cpu_peak_bytes(run)
    return Measurement(stack.name, str(dev), passes, baseline, peak, baseline + tracker.peak, saved)
