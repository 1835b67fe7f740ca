"""Shared helpers of the benchmark files: timing through pytest-benchmark, memory of a forward/backward."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["memory_of", "sync", "timed"]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(benchmark, fn, device: str, setup=None, rounds: int = 5) -> float:
    """Median seconds of fn() (fn(*setup()) when setup is given; setup is not timed)."""
    def target(*args):
        fn(*args)
        sync(device)

    if setup is None:
        benchmark.pedantic(target, rounds=rounds, warmup_rounds=1, iterations=1)
    else:
        benchmark.pedantic(target, setup=lambda: (setup(), {}), rounds=rounds, warmup_rounds=1)
    return float(benchmark.stats.stats.median)


def memory_of(forward, device: str, inputs=(), exclude: int = 0) -> tuple[int, int]:
    """(bytes saved for backward by forward(), peak bytes above the start during forward + backward,
    minus `exclude` bytes: e.g. the gradient of an input that every implementation produces).

    forward() -> a scalar loss; the backward is `torch.autograd.grad(loss, inputs)` (as inside a model:
    no accumulation into .grad) when inputs are given, else `loss.backward()`.
    CUDA: the allocator; CPU and meta: live tensor bytes (npedit.plan)."""
    def backward():
        loss = forward()
        if inputs:
            torch.autograd.grad(loss, list(inputs))
        else:
            loss.backward()

    from npedit.ops.memory import SavedTensorCounter
    from npedit.plan.meta_sim import simulate
    from npedit.plan.tracker import MemoryTracker

    context = simulate() if device == "meta" else contextlib.nullcontext()
    with context:
        with SavedTensorCounter() as counter:
            loss = forward()
        saved = counter.saved_bytes(exclude=loss)
        del loss
        if device == "cuda":
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            backward()
            torch.cuda.synchronize()
            return saved, torch.cuda.max_memory_allocated() - start - exclude
        with MemoryTracker() as tracker:
            backward()
        return saved, tracker.peak - exclude
