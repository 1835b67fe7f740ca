"""Run real model code on the meta device: shapes and memory without compute.

Floating-point tensors live on the meta device (no data, no arithmetic), while integer and bool
tensors (token ids, masks, image grids, positions, lengths) stay real on the CPU, so the code paths
that read them (`.tolist()`, boolean indexing, RoPE position builders, chat-prompt masks) behave as
in a real run. `MetaSimulation` is a TorchDispatchMode that enforces this:

- a factory op asked for an integer/bool tensor on the meta device makes it on the CPU instead, and
  moving a real integer/bool tensor to the meta device is a no-op;
- an op mixing meta and real CPU tensors gets the CPU ones moved to the meta device (a CPU boolean
  mask used as an index becomes the integer indices it selects, so the result's shape is known);
- PyTorch's scaled-dot-product attention is routed to the flash kernel's CPU variant, which saves
  what the flash / memory-efficient CUDA kernels save (q, k, v, out, log-sum-exp), instead of the
  math fallback the meta device would otherwise pick (`flash_sdpa`).

Data-dependent reads of *floating* meta tensors (`.item()` of a loss) still fail: nothing in one
training step needs them.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

__all__ = ["DecomposeCustomOps", "MetaSimulation", "SimFunctions", "flash_sdpa", "gpu_kernels", "simulate"]

_META = torch.device("meta")
_CPU = torch.device("cpu")
_INDEX_OPS = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
              torch.ops.aten._unsafe_index.Tensor, torch.ops.aten._index_put_impl_.default}


def _is_real_int(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "meta" and not (t.is_floating_point() or t.is_complex())


def _integral(dtype) -> bool:
    return dtype is not None and not (dtype.is_floating_point or dtype.is_complex)


def _to_meta(t):
    if isinstance(t, torch.Tensor) and t.device.type != "meta":
        return t.to(_META)
    return t


def _bool_index_to_long(indices: list) -> list:
    """A real boolean mask in an index list -> the integer indices it selects (one per masked dim)."""
    out = []
    for idx in indices:
        if isinstance(idx, torch.Tensor) and idx.dtype == torch.bool and idx.device.type != "meta":
            out.extend(idx.nonzero().unbind(1))
        else:
            out.append(idx)
    return out


class DecomposeCustomOps(TorchDispatchMode):
    """npedit's custom ops that run their PyTorch implementation (an `impl` argument "torch": the
    attention ops off the GPU, or under NPEDIT_OPS=ref) execute that implementation op by op, so a
    tracker below this mode sees their temporaries (the reference attention materialises
    [B, H, Sq, Sk] scores). Works on real tensors too."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        impl = _python_impl(func) if func.namespace == "npedit" and "torch" in args else None
        if impl is not None:
            with self:
                return impl(*args, **kwargs)
        return func(*args, **kwargs)


class MetaSimulation(TorchDispatchMode):
    """Keeps integer/bool tensors real on the CPU and everything else on the meta device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        any_meta = any(t.device.type == "meta" for t in tensors)
        device = kwargs.get("device")
        # copies of real integer tensors to the meta device stay on the CPU
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype_layout) and _is_real_int(args[0]) \
                and device is not None and torch.device(device).type == "meta" \
                and not (kwargs.get("dtype") is not None and kwargs["dtype"].is_floating_point):
            kwargs["device"] = _CPU
            return func(*args, **kwargs)
        # integer factories on the meta device are made on the CPU
        if device is not None and torch.device(device).type == "meta":
            dtype = kwargs.get("dtype")
            if dtype is None and not tensors:
                dtype = _default_factory_dtype(func, args)
            elif dtype is None and tensors and func.__name__.split(".")[0].endswith("_like"):
                dtype = tensors[0].dtype
            if _integral(dtype):
                kwargs["device"] = _CPU
                return func(*args, **kwargs)
        if any_meta:
            if func in _INDEX_OPS:
                args = list(args)
                args[1] = _bool_index_to_long(list(args[1]))
            if func in (torch.ops.aten.new_zeros.default, torch.ops.aten.new_ones.default,
                        torch.ops.aten.new_empty.default, torch.ops.aten.new_full.default) \
                    and _integral(kwargs.get("dtype")) and "device" not in kwargs:
                kwargs["device"] = _CPU
                return func(*args, **kwargs)
            args, kwargs = tree_map(_to_meta, (tuple(args), kwargs))
        return func(*args, **kwargs)


def _python_impl(func):
    """The Python function behind an npedit custom op (None when it is not a torch.library custom op)."""
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:  # private registry moved: fall back to the fake kernel
        return None
    opdef = OPDEFS.get(f"{func.namespace}::{func._schema.name.split('::')[-1]}")
    return getattr(opdef, "_init_fn", None)


def _default_factory_dtype(func, args) -> torch.dtype | None:
    name = func.__name__.split(".")[0]
    if name in ("arange", "randint", "randperm"):
        return torch.int64 if all(isinstance(a, int) for a in args if isinstance(a, (int, float))) else None
    return None


class SimFunctions(TorchFunctionMode):
    """Python-level half of the simulation: `torch.tensor(data, device=meta)` of integer/bool data stays
    on the CPU (it never reaches the dispatcher as a device move)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "meta":
            real = func(*args, **{k: v for k, v in kwargs.items() if k != "device"})
            return real if _integral(real.dtype) else real.to(_META)
        return func(*args, **kwargs)


def _flash_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False):
    if key.shape[-3] != query.shape[-3]:  # grouped-query attention: the CPU flash kernel wants equal heads
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attn_mask.to(query.device), float("-inf"))
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]
    return out


@contextlib.contextmanager
def flash_sdpa():
    """`F.scaled_dot_product_attention` -> the flash kernel's CPU variant, for meta inputs. A module
    attribute rather than a TorchFunctionMode: activation checkpointing recomputes forwards inside
    the autograd engine, where Python function modes are not active."""
    original = F.scaled_dot_product_attention

    def routed(query, key, value, *args, **kwargs):
        if query.device.type == "meta":
            return _flash_sdpa(query, key, value, *args, **kwargs)
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = routed
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def gpu_kernels():
    """npedit's ops pick their GPU kernels for meta tensors, as they would for CUDA tensors (unless
    NPEDIT_OPS forces the reference): the Triton custom ops, whose fake kernels give their outputs and
    whose autograd saves what the kernels save. A no-op where Triton is not importable."""
    from npedit.ops import adaln, answer_loss, attention
    from npedit.ops.backend import forced_backend
    from npedit.ops.triton import available, use_triton

    if not available():
        yield
        return

    def on_gpu(*tensors, op: str = "op") -> bool:
        if tensors and all(t.device.type == "meta" for t in tensors) and forced_backend() != "ref":
            return True
        return use_triton(*tensors, op=op)

    modules = (adaln, answer_loss, attention)
    for module in modules:
        module.use_triton = on_gpu
    try:
        yield
    finally:
        for module in modules:
            module.use_triton = use_triton


@contextlib.contextmanager
def simulate(decompose: bool = False):
    """Run code on meta parameters/inputs as in a real step (`decompose`: see DecomposeCustomOps)."""
    with flash_sdpa(), SimFunctions(), MetaSimulation():
        if decompose:
            with DecomposeCustomOps():
                yield
        else:
            yield
