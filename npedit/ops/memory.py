"""Count the bytes a forward keeps alive for its backward, deterministically, on any device.

    n = saved_tensor_bytes(fn, *args)          # run fn once, count, drop its outputs
    with SavedTensorCounter() as counter:      # or around any region
        loss = model(x)
    n = counter.saved_bytes(exclude=loss)

What is counted: every tensor storage that an op inside the region *created* and that is still alive
when counted, excluding the storages of the region's outputs (`exclude`). That is what autograd
saved for backward (activations, LSE, masks) plus what activation checkpointing keeps (selective
checkpointing's cache of attention outputs), each storage once however many views or nodes share it.
Storages that existed before the region (parameters, inputs) are not counted even when saved, so a
fused loss that saves `weight` costs nothing here; `include_inputs=True` adds the pre-existing
storages that autograd packed through `torch.autograd.graph.saved_tensors_hooks` (those saved
outside a checkpointed region: checkpointing installs its own hooks, which take precedence).

Created storages are seen through a TorchDispatchMode (below autograd), so the count does not
depend on allocator behaviour and works on CPU; the GPU allocator's rounding is not included.
"""
from __future__ import annotations

import gc
from typing import Any, Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["SavedTensorCounter", "saved_tensor_bytes"]


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (NotImplementedError, RuntimeError):  # tensor subclasses / meta without storage
        return None


class _Record:
    def __init__(self):
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}  # cdata -> (weak ref, nbytes)

    def add(self, t: torch.Tensor) -> None:
        s = _storage(t)
        if s is None or s.nbytes() == 0:
            return
        ref = StorageWeakRef(s)
        self.storages.setdefault(ref.cdata, (ref, s.nbytes()))

    def alive(self) -> dict[int, int]:
        return {key: n for key, (ref, n) in self.storages.items() if not ref.expired()}


class _CreatedStorages(TorchDispatchMode):
    """Records the storages of op outputs that do not alias one of the op's tensor inputs."""

    def __init__(self, record: _Record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {StorageWeakRef(s).cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                  for s in [_storage(t)] if s is not None}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                s = _storage(t)
                if s is not None and StorageWeakRef(s).cdata not in inputs:  # not in-place, not a view
                    self.record.add(t)
        return out


class SavedTensorCounter:
    """Context manager; `saved_bytes(exclude=outputs)` counts while the outputs are still referenced."""

    def __init__(self, include_inputs: bool = False):
        self.include_inputs = include_inputs
        self._created = _Record()
        self._packed = _Record()
        self._mode = _CreatedStorages(self._created)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._packed.add(t)
        return t

    def __enter__(self) -> "SavedTensorCounter":
        self._mode.__enter__()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._mode.__exit__(*exc)

    def saved_bytes(self, exclude: Any = None) -> int:
        """Bytes of live storages created in the region (plus packed inputs when include_inputs),
        minus the storages of the tensors in `exclude` (any pytree of tensors: the outputs)."""
        gc.collect()
        live = self._created.alive()
        if self.include_inputs:
            live.update(self._packed.alive())
        for t in tree_leaves(exclude):
            if isinstance(t, torch.Tensor) and (s := _storage(t)) is not None:
                live.pop(StorageWeakRef(s).cdata, None)
        return sum(live.values())


def saved_tensor_bytes(fn: Callable, *args, include_inputs: bool = False, **kwargs) -> int:
    """Run fn(*args, **kwargs) once (with grad enabled) and return the bytes its outputs' autograd
    graph (and any checkpoint cache) keeps alive for backward; see the module docstring."""
    with torch.enable_grad(), SavedTensorCounter(include_inputs) as counter:
        out = fn(*args, **kwargs)
    n = counter.saved_bytes(exclude=out)
    del out
    return n
