"""Activation checkpointing policies for the student's unrolled passes.

mode "none": keep every activation; "full": recompute the whole block in backward;
"selective": recompute cheap ops but keep the attention outputs (and LSE), so backward never
re-runs the attention forward. `checkpointed` applies a mode to a function (the built-in models' blocks),
`block_checkpoint_function` to every block of a diffusers transformer.

Selective checkpointing is non-reentrant `torch.utils.checkpoint.checkpoint` with two dispatch modes
(`selective_contexts`): in forward, `_KeepOutputs` runs every op and keeps the outputs of the save
ops; in the recompute, `_ReuseOutputs` hands those back in call order and runs every other op. The
save ops are our custom ops `npedit::attention_fwd` / `npedit::attention_varlen_fwd` (both the
Triton and the reference backend run through them, each returning (out, lse)) and PyTorch's SDPA
kernels, for models that call `F.scaled_dot_product_attention` directly. In backward the block's
matmuls, norms and activations are recomputed; attention's backward reads the kept out and lse.

Why not `torch.utils.checkpoint.create_selective_checkpoint_contexts`: its recompute mode requires
every op of the recompute to have been seen, the same number of times, in forward. Under DeepSpeed
ZeRO-3 that never holds: the block's sub-module hooks gather partitioned weights (allocations,
all-gathers, copies) while the block runs, and whether a weight is still gathered or already
prefetched differs between forward and recompute. Here only the save ops are matched by count.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.checkpoint import checkpoint

from npedit.ops.attention import ATTENTION_OPS

CHECKPOINT_MODES = ("none", "full", "selective")
_SDPA_OPS = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")


def attention_ops() -> tuple:
    """The ops whose outputs selective checkpointing keeps."""
    ops = list(ATTENTION_OPS)
    for name in _SDPA_OPS:
        try:
            ops.append(getattr(torch.ops.aten, name).default)
        except (AttributeError, RuntimeError):  # not in this PyTorch build
            pass
    return tuple(ops)


class AttentionCalls(TorchDispatchMode):
    """Counts, in a region, the calls of the ops selective checkpointing keeps (`attention_ops`) and the
    bytes of their tensor outputs. Around a forward with grad: how many attentions it ran, and what
    selective checkpointing keeps beyond full; around a backward: how many attention forwards it re-ran
    (0 under "none" and "selective"). A model whose attention is neither npedit's op nor SDPA shows 0
    calls: selective checkpointing then recomputes its attention like "full"."""

    def __init__(self):
        super().__init__()
        self.ops = frozenset(attention_ops())
        self.calls = 0
        self.output_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.ops:
            self.calls += 1
            self.output_bytes += sum(t.untyped_storage().nbytes() for t in tree_leaves(out)
                                     if isinstance(t, torch.Tensor))
        return out


def _detach(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


class _KeepOutputs(TorchDispatchMode):
    """Forward of a selectively checkpointed region: run every op, keep the save ops' outputs."""

    def __init__(self, save: frozenset, kept: dict):
        super().__init__()
        self.save, self.kept = save, kept

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.save:
            self.kept[func].append(tree_map(_detach, out))
        return out


class _ReuseOutputs(TorchDispatchMode):
    """Recompute of the region: the i-th call of a save op returns its i-th kept output (released on
    use); every other op runs again."""

    def __init__(self, save: frozenset, kept: dict):
        super().__init__()
        self.save, self.kept = save, kept
        self.calls: dict = defaultdict(int)

    def __enter__(self):
        self.calls.clear()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in self.save:
            return func(*args, **(kwargs or {}))
        i = self.calls[func]
        self.calls[func] += 1
        kept = self.kept[func]
        if i >= len(kept):
            raise RuntimeError(f"selective checkpointing: {func} ran {i + 1} times in the recompute but "
                               f"{len(kept)} in forward; the checkpointed function must call attention the same "
                               "number of times")
        if kept[i] is None:
            raise RuntimeError("selective checkpointing: this region was already backpropagated once (its kept "
                               "attention outputs are released); use checkpointing='none' to backward twice")
        out, kept[i] = kept[i], None
        return out


def selective_contexts(extra_save_ops: Iterable = ()) -> tuple[TorchDispatchMode, TorchDispatchMode]:
    """(forward context, recompute context) for `checkpoint(..., context_fn=...)`: keep the outputs of
    the attention ops (and of `extra_save_ops`, e.g. `torch.ops.aten.mm.default`), recompute the rest."""
    save = frozenset(attention_ops()) | frozenset(extra_save_ops)
    kept: dict = defaultdict(list)
    return _KeepOutputs(save, kept), _ReuseOutputs(save, kept)


def check_mode(mode: str) -> None:
    """Raise (ValueError) unless mode is one of CHECKPOINT_MODES."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint mode must be one of {CHECKPOINT_MODES}, got {mode!r}")


def checkpointed(fn: Callable, *args, mode: str = "none"):
    """Run fn(*args) under the given checkpointing mode (only when grad is enabled)."""
    check_mode(mode)
    if mode == "none" or not torch.is_grad_enabled():
        return fn(*args)
    if mode == "selective":
        return checkpoint(fn, *args, use_reentrant=False, context_fn=selective_contexts)
    return checkpoint(fn, *args, use_reentrant=False)


def block_checkpoint_function(mode: str) -> Callable:
    """(block, *args, **kwargs) -> block(*args, **kwargs) run by `checkpointed` in `mode` ("full" or
    "selective"), for any callable block: diffusers' `gradient_checkpointing_func`
    (`ModelMixin.enable_gradient_checkpointing`), which diffusers calls for each transformer block while
    grad is enabled, and a transformers layer's forward (`npedit.adapters.hf_checkpointing`)."""
    if mode not in ("full", "selective"):
        raise ValueError(f"a block checkpoint function is for 'full' or 'selective', got {mode!r}")

    def run_block(block: Callable, *args, **kwargs):
        return checkpointed(functools.partial(block, **kwargs) if kwargs else block, *args, mode=mode)

    return run_block
