"""Activation checkpointing policies for the student's unrolled passes.

mode "none": keep every activation; "full": recompute the whole block in backward;
"selective": recompute cheap ops but keep the attention outputs (and LSE), so backward never
re-runs the attention forward.

Selective checkpointing uses `torch.utils.checkpoint.create_selective_checkpoint_contexts` with a
policy that says MUST_SAVE for the attention ops and PREFER_RECOMPUTE for everything else. The
attention ops are our custom ops `npedit::attention_fwd` / `npedit::attention_varlen_fwd` (both the
Triton and the reference backend run through them, each returning (out, lse)) and PyTorch's SDPA
kernels, for models that call `F.scaled_dot_product_attention` directly. In backward the block's
matmuls, norms and activations are recomputed; attention's backward reads the cached out and lse.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

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


def selective_policy(extra_save_ops: Iterable = ()) -> Callable:
    """Policy for `create_selective_checkpoint_contexts`: save attention (and `extra_save_ops`, e.g.
    `torch.ops.aten.mm.default` to also keep matmul outputs), recompute the rest."""
    save = frozenset(attention_ops()) | frozenset(extra_save_ops)

    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


_SELECTIVE_CONTEXT_FN = functools.partial(create_selective_checkpoint_contexts, selective_policy())


def checkpointed(fn: Callable, *args, mode: str = "none"):
    """Run fn(*args) under the given checkpointing mode (only when grad is enabled)."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint mode must be one of {CHECKPOINT_MODES}, got {mode!r}")
    if mode == "none" or not torch.is_grad_enabled():
        return fn(*args)
    if mode == "selective":
        return checkpoint(fn, *args, use_reentrant=False, context_fn=_SELECTIVE_CONTEXT_FN)
    return checkpoint(fn, *args, use_reentrant=False)
