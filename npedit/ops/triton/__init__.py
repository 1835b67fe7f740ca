"""Triton kernels of the fused ops (kernels and plain launchers; no autograd here).

The package imports without Triton: `available()` says whether the kernels can run at all and
`use_triton(*tensors)` is the dispatch rule every functional op follows:

- `NPEDIT_OPS=ref`: never;
- `NPEDIT_OPS=triton`: always, or a clear error when the tensors are on the CPU and the Triton
  interpreter (`TRITON_INTERPRET=1`) is off, or when Triton is missing;
- unset / `auto` / `cuda` (no compiled-extension version of these ops): Triton when the tensors are
  on CUDA and Triton imports, else the PyTorch reference.

Kernel modules (`attention`, `attention_bwd`, `answer_loss`, `adaln`) import Triton at the top and
are only imported by the launch paths.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from npedit.ops.backend import forced_backend


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _find_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None  # found, not imported: importing costs ~1 s
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules["triton"] = None
        return False


_HAS_TRITON = _find_triton()


def available() -> bool:
    """Whether Triton is installed (the kernels' modules import it when first launched)."""
    return _HAS_TRITON


def use_triton(*tensors: torch.Tensor, op: str = "op") -> bool:
    """Whether `op` should run its Triton kernels on these tensors (see the module docstring)."""
    forced = forced_backend()
    if forced == "ref":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if forced == "triton":
        if not available():
            raise RuntimeError(f"NPEDIT_OPS=triton but Triton is not importable ({op}); pip install triton")
        if not on_cuda and not interpreting():
            raise RuntimeError(f"NPEDIT_OPS=triton with CPU tensors ({op}) needs TRITON_INTERPRET=1 "
                               "(the Triton interpreter) or CUDA tensors")
        return True
    return on_cuda and available()
