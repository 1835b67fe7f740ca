"""Backend selection for the fused ops.

`NPEDIT_OPS=ref|triton|cuda` forces a backend for every op; unset, each op picks the fastest
backend that can run on its inputs (Triton on CUDA tensors, the compiled extension where built,
the PyTorch reference elsewhere).
"""
from __future__ import annotations

import os

BACKENDS = ("ref", "triton", "cuda")


def forced_backend() -> str | None:
    """The backend named by NPEDIT_OPS, or None when unset (auto)."""
    value = os.environ.get("NPEDIT_OPS", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(f"NPEDIT_OPS={value!r} is not one of {', '.join(BACKENDS)} (or unset for auto)")
    return value


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The value of environment variable `name`, one of `choices`; the first when unset."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value
