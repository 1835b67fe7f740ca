"""Activation checkpointing policies for the student's unrolled passes.

mode "none": keep every activation; "full": recompute the whole block in backward;
"selective": recompute cheap ops but keep the attention outputs (and LSE), so backward never
re-runs the attention forward.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

CHECKPOINT_MODES = ("none", "full", "selective")


def checkpointed(fn: Callable, *args, mode: str = "none"):
    """Run fn(*args) under the given checkpointing mode (only when grad is enabled)."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint mode must be one of {CHECKPOINT_MODES}, got {mode!r}")
    if mode == "none" or not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False)
