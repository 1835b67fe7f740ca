"""Tolerance rule shared by the op tests and the kernel lab (flash-attention's rule).

A fast op in dtype d is compared with the reference run in float64 on the same (rounded) inputs;
its error may be at most `factor` (2) times the error of the reference run in dtype d itself, plus
an absolute floor `atol + rtol * max|ref64|` declared per dtype next to the test's parametrisation.
"""
from __future__ import annotations

from typing import Sequence

import torch


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64; positions where both are equal infinities (e.g. lse = -inf) count as 0."""
    a, b = a.double(), b.double()
    same_inf = torch.isinf(a) & torch.isinf(b) & (a == b)
    diff = torch.where(same_inf, 0.0, (a - b).abs())
    return float(diff.max()) if diff.numel() else 0.0


def assert_close_to_reference(actual: torch.Tensor, ref_dtype: torch.Tensor, ref64: torch.Tensor, atol: float,
                              rtol: float = 0.0, factor: float = 2.0, name: str = "output") -> None:
    """|actual - ref64| <= factor * |ref_dtype - ref64| + atol + rtol * max|ref64| (max over elements)."""
    assert actual.shape == ref64.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(ref64.shape)}"
    err = max_err(actual, ref64)
    ref_err = max_err(ref_dtype, ref64)
    finite = ref64[torch.isfinite(ref64)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    bound = factor * ref_err + atol + rtol * scale
    assert err <= bound, (f"{name}: error {err:.3g} > bound {bound:.3g} (reference-in-dtype error {ref_err:.3g}, "
                          f"atol {atol:g}, rtol {rtol:g} x {scale:.3g})")


def assert_all_close_to_reference(actuals: Sequence[torch.Tensor], refs_dtype: Sequence[torch.Tensor],
                                  refs64: Sequence[torch.Tensor], atol: float, rtol: float = 0.0,
                                  names: Sequence[str] | None = None) -> None:
    names = names or [f"tensor {i}" for i in range(len(actuals))]
    for a, r, r64, n in zip(actuals, refs_dtype, refs64, names):
        assert_close_to_reference(a, r, r64, atol, rtol, name=n)


def attention_gqa_cuda_check(attention, attention_ref, sq: int, sk: int, head_dim: int, dtype: torch.dtype,
                             causal: bool, atol: float, rtol: float, device: str = "cuda") -> None:
    """The GPU tests' case for attention kernels: 8 query heads over 2 kv heads, batch 2, Sq / Sk tokens;
    out, lse and the three input gradients of `attention` (return_lse=True) against float64 by the rule."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, s, h, head_dim, device=device, dtype=dtype) for s, h in ((sq, 8), (sk, 2), (sk, 2)))
    do = torch.randn(2, sq, 8, head_dim, device=device, dtype=dtype)
    results = {}
    for name, fn, dt in (("ours", attention, dtype), ("ref", attention_ref, dtype),
                         ("ref64", attention_ref, torch.float64)):
        ins = [t.to(dt).requires_grad_() for t in (q, k, v)]
        out, lse = fn(*ins, causal=causal, return_lse=True)
        results[name] = [out.detach(), lse.detach(), *torch.autograd.grad(out, ins, do.to(dt))]
    for i, name in enumerate(("out", "lse", "dq", "dk", "dv")):
        assert_close_to_reference(results["ours"][i], results["ref"][i], results["ref64"][i], atol, rtol,
                                  name=f"{name} ({dtype}, {'causal' if causal else 'full'}, Sq {sq}, Sk {sk})")


class NotLaunched:
    """Stands in for a Triton kernel that a test says must not run: launching it (`kernel[grid]`)
    fails with "<what> was launched"."""

    def __init__(self, what: str):
        self.what = what

    def __getitem__(self, grid):
        raise AssertionError(f"{self.what} was launched")
