"""What the simulator puts in place of `gl` / `tl`, `mbarrier`, `tma` and the wgmma functions: register
tensors are torch tensors, layouts are accepted and ignored."""
from __future__ import annotations

import inspect
import linecache
import re
import types

import torch

from npedit.ops.triton.gluon_sim.memory import (BarrierArray, Shared, atomic_add, mbarrier_arrive, mbarrier_expect,
                                              mbarrier_init, mbarrier_wait, store, tma_load, tma_reduce_add,
                                              tma_store, tma_store_wait)
from npedit.ops.triton.gluon_sim.program import SimError, current_thread, ready_value, yield_only
from npedit.ops.triton.gluon_sim.wgmma import warpgroup_mma, warpgroup_mma_wait


class _Layout:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    @classmethod
    def get_default_for(cls, *args, **kwargs):
        return cls(*args, **kwargs)


class _MBarrierLayout(_Layout):
    pass


def _t(x):
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def _allocate_shared_memory(element_ty, shape, layout=None, value=None):
    me = current_thread()
    shape = [int(s) for s in shape]
    if isinstance(layout, _MBarrierLayout):
        arr = BarrierArray(shape[0], _caller_target())
        me.program.barriers.append(arr)
        return arr
    data = torch.full(shape, float("nan"), dtype=element_ty) if element_ty.is_floating_point else \
        torch.zeros(shape, dtype=element_ty)
    if value is not None:
        data.copy_(value)
    return Shared(data)


def _caller_target() -> str:
    # the variable a barrier allocation is assigned to, for messages ("k_ready = gl.allocate_...")
    frame = inspect.currentframe().f_back.f_back
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    m = re.match(r"\s*(\w+)\s*=", line)
    return m.group(1) if m else f"barrier@{frame.f_lineno}"


def _program_id(axis):
    return torch.tensor(current_thread().program.pid[int(axis)], dtype=torch.int32)


def _static_assert(cond, msg=""):
    if not cond:
        raise SimError(f"static_assert failed: {msg}")


def _expand_dims(x, axis):
    return ready_value(x, "expand_dims").unsqueeze(int(axis))


def _cdiv(a, b):
    return (a + b - 1) // b


def _warp_specialize(functions_and_args, worker_num_warps, worker_num_regs=None):
    return current_thread().program.warp_specialize(functions_and_args, worker_num_warps)


def _convert_layout(x, layout=None, assert_trivial=False):
    return ready_value(x, "convert_layout")


def _reduce(op):
    def fn(x, axis=None, keep_dims=False, **_):
        x = ready_value(x, "reduction")
        return op(x) if axis is None else op(x, dim=int(axis), keepdim=keep_dims)
    return fn


_math = types.SimpleNamespace(log2=torch.log2, exp2=torch.exp2, exp=torch.exp, log=torch.log, sqrt=torch.sqrt)

LANGUAGE = types.SimpleNamespace(
    float16=torch.float16, bfloat16=torch.bfloat16, float32=torch.float32, int32=torch.int32, int64=torch.int64,
    int1=torch.bool,
    constexpr=lambda x: x, static_range=range, static_assert=_static_assert,
    num_warps=lambda: current_thread().num_warps, program_id=_program_id, cdiv=_cdiv,
    arange=lambda start, end, layout=None: torch.arange(start, end, dtype=torch.int32),
    full=lambda shape, value, dtype, layout=None: torch.full([int(s) for s in shape], value, dtype=dtype),
    zeros=lambda shape, dtype, layout=None: torch.zeros([int(s) for s in shape], dtype=dtype),
    expand_dims=_expand_dims, where=lambda c, a, b: torch.where(_t(c), _t(a), _t(b)),
    maximum=lambda a, b: torch.maximum(_t(a), _t(b)), minimum=lambda a, b: torch.minimum(_t(a), _t(b)),
    max=_reduce(torch.amax), sum=_reduce(torch.sum), exp2=torch.exp2, exp=torch.exp, log2=torch.log2, math=_math,
    convert_layout=_convert_layout, store=store, atomic_add=atomic_add,
    allocate_shared_memory=_allocate_shared_memory, warp_specialize=_warp_specialize,
    thread_barrier=yield_only, barrier=yield_only,
    NVMMADistributedLayout=_Layout, DotOperandLayout=_Layout, SliceLayout=_Layout, BlockedLayout=_Layout,
    NVMMASharedLayout=_Layout, SwizzledSharedLayout=_Layout, AutoLayout=_Layout,
)
MBARRIER = types.SimpleNamespace(MBarrierLayout=_MBarrierLayout, init=mbarrier_init, expect=mbarrier_expect,
                                 arrive=mbarrier_arrive, wait=mbarrier_wait, invalidate=yield_only)
TMA = types.SimpleNamespace(async_copy_global_to_shared=tma_load, async_copy_shared_to_global=tma_store,
                            store_wait=tma_store_wait)

# names a kernel module binds to Gluon / Triton objects -> what the simulator puts in their place
OVERRIDES = {
    "gl": LANGUAGE, "tl": LANGUAGE, "mbarrier": MBARRIER, "tma": TMA,
    "warpgroup_mma": warpgroup_mma, "warpgroup_mma_wait": warpgroup_mma_wait,
    "fence_async_shared": yield_only, "_partition_barrier": yield_only, "_tma_reduce_add": tma_reduce_add,
    "NEW_WS_API": True,
}


