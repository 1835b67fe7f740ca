"""Live tensor bytes over time, on any device (the meta device included).

`MemoryTracker` is a TorchDispatchMode that registers every storage an op creates (op outputs that
do not alias an input) and learns of its release through a weak-reference finalizer on the storage
(storages keep their Python object alive as long as they live, so the finalizer runs exactly when
the memory would be returned to the allocator). It keeps the running total, its peak, and per-phase
marks:

    with MemoryTracker() as mem:
        with mem.phase("student pass 1"):
            ...
    mem.peak, mem.live, mem.phases["student pass 1"]   # bytes

What it counts: storages created inside the region (activations, gradients, optimizer states created
there, temporaries), each once however many views share it. What it does not: storages that existed
before (parameters), allocator rounding and fragmentation, and memory that a kernel allocates
internally without returning it as a tensor.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["MemoryTracker", "PhaseMark"]


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (NotImplementedError, RuntimeError):  # tensor subclasses without a storage
        return None


@dataclass
class PhaseMark:
    """Live bytes when a phase started and ended, and the highest live bytes inside it."""
    start: int = 0
    end: int = 0
    peak: int = 0
    calls: int = 0

    @property
    def kept(self) -> int:
        """Bytes the phase left alive (e.g. activations saved for backward)."""
        return self.end - self.start

    @property
    def transient(self) -> int:
        """Highest bytes above the phase's start that were freed again before it ended."""
        return self.peak - max(self.start, self.end)


@dataclass
class _State:
    live: int = 0
    peak: int = 0
    sizes: dict[int, int] = field(default_factory=dict)   # storage key -> bytes
    open: list[tuple[str, PhaseMark]] = field(default_factory=list)


class MemoryTracker(TorchDispatchMode):
    """Tracks live bytes of storages created inside the region (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._s = _State()
        self.phases: dict[str, PhaseMark] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def live(self) -> int:
        return self._s.live

    @property
    def peak(self) -> int:
        return self._s.peak

    def reset_peak(self) -> None:
        self._s.peak = self._s.live

    def _add(self, t: torch.Tensor) -> None:
        s = _storage(t)
        if s is None:
            return
        n = s.nbytes()
        key = StorageWeakRef(s).cdata
        if n == 0 or key in self._s.sizes:
            return
        self._s.sizes[key] = n
        self._s.live += n
        weakref.finalize(s, _release, self._s, key)
        self._s.peak = max(self._s.peak, self._s.live)
        for _, mark in self._s.open:
            mark.peak = max(mark.peak, self._s.live)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Mark a phase; a name used again accumulates (kept bytes add up, peak is the max)."""
        mark = PhaseMark(start=self._s.live, peak=self._s.live)
        self._s.open.append((name, mark))
        try:
            yield mark
        finally:
            self._s.open.remove((name, mark))
            mark.end = self._s.live
            old = self.phases.get(name)
            if old is None:
                mark.calls = 1
                self.phases[name] = mark
            else:  # same phase again: keep the first start, the latest end, the highest peak
                self.phases[name] = PhaseMark(old.start, mark.end, max(old.peak, mark.peak), old.calls + 1)

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = set()
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and (s := _storage(t)) is not None:
                inputs.add(StorageWeakRef(s).cdata)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (s := _storage(t)) is not None \
                    and StorageWeakRef(s).cdata not in inputs:   # not a view, not in-place
                self._add(t)
        return out


def _release(state: _State, key: int) -> None:
    state.live -= state.sizes.pop(key, 0)
