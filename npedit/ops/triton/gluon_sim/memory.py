"""Simulated memory: mbarriers (hardware phase semantics), shared memory, global pointers, TMA
descriptors and the TMA copies the copy engine lands."""
from __future__ import annotations

import math

import torch

from npedit.ops.triton.gluon_sim.program import Copy, SimError, current_thread, ready_value, scheduling_point

# ---------------------------------------------------------------------------------------------------
# mbarriers

class _Barrier:
    def __init__(self):
        self.count = None  # arrivals per phase (None: not initialised)
        self.pending = 0  # arrivals the current phase still needs
        self.tx = 0  # bytes the current phase still expects (negative: landed before their expect)
        self.completed = 0  # phases completed so far

    def state(self) -> str:
        if self.count is None:
            return "not initialised"
        return (f"{self.completed} phases completed; current phase needs {self.pending} of {self.count} "
                f"arrivals and {self.tx} bytes")

    def done(self, parity: int) -> bool:
        # the hardware's try_wait.parity: true once the phase of this parity has completed, i.e. the
        # current phase has the other parity
        return (self.completed & 1) != parity

    def arrive(self, count: int, where: str) -> None:
        if self.count is None:
            raise SimError(f"arrive on {where} before mbarrier.init")
        if count > self.pending:
            raise SimError(f"{count} arrival(s) on {where}, whose phase needs only {self.pending} more "
                           f"({self.state()})")
        self.pending -= count
        self._maybe_complete(where)

    def add_tx(self, nbytes: int, where: str) -> None:
        self.tx += nbytes
        self._maybe_complete(where)

    def _maybe_complete(self, where: str) -> None:
        if self.pending == 0:
            if self.tx < 0:
                raise SimError(f"{-self.tx} more bytes landed on {where} than its phase expected")
            if self.tx == 0:
                self.completed += 1
                self.pending = self.count


class BarrierArray:
    """`allocate_shared_memory(int64, [n] or [n, 1], MBarrierLayout())`: n barriers; with n = 1 the
    allocation itself is used as the barrier."""

    def __init__(self, n: int, name: str):
        self.bars = [_Barrier() for _ in range(n)]
        self.name = name

    def index(self, i):
        return _BarrierRef(self, int(i))


class _BarrierRef:
    def __init__(self, arr: BarrierArray, i: int):
        self.arr, self.i = arr, i

    @property
    def bar(self) -> _Barrier:
        return self.arr.bars[self.i]

    def __str__(self):
        return f"{self.arr.name}[{self.i}]"


def _bar(x) -> _BarrierRef:
    if isinstance(x, _BarrierRef):
        return x
    if isinstance(x, BarrierArray):
        if len(x.bars) != 1:
            raise SimError(f"{x.name} holds {len(x.bars)} barriers: index it")
        return _BarrierRef(x, 0)
    raise SimError(f"not an mbarrier: {type(x).__name__}")


def mbarrier_init(bar, count):
    scheduling_point()
    b = _bar(bar)
    b.bar.count = b.bar.pending = int(count)
    b.bar.tx = 0


def mbarrier_expect(bar, nbytes, pred=True):
    scheduling_point()
    if pred:
        b = _bar(bar)  # mbarrier.arrive.expect_tx: expect the bytes, then arrive
        b.bar.tx += int(nbytes)
        b.bar.arrive(1, str(b))


def mbarrier_arrive(bar, count=1, pred=True):
    scheduling_point()
    if pred:
        b = _bar(bar)
        b.bar.arrive(int(count), str(b))


def mbarrier_wait(bar, phase, pred=True, deps=()):
    me = current_thread()
    if not pred:
        me.program.switch(me)
        return
    b = _bar(bar)
    parity = int(phase)
    if parity not in (0, 1):
        raise SimError(f"mbarrier.wait on {b} with phase {phase}: a parity is 0 or 1")
    if b.bar.count is None:
        raise SimError(f"wait on {b} before mbarrier.init")
    me.program.block(me, lambda: b.bar.done(parity), f"{b} parity {parity} ({b.bar.state()})")


# ---------------------------------------------------------------------------------------------------
# shared memory, global memory, descriptors

class _BlockType:
    """Shape and bytes of a block: a descriptor's (`desc.block_type`) or a shared-memory buffer's (`.type`)."""

    def __init__(self, shape, dtype):
        self.shape = [int(s) for s in shape]
        self.nbytes = math.prod(self.shape) * torch.empty((), dtype=dtype).element_size()


class Shared:
    """A shared-memory allocation or a view of one ([n, ...] rings are indexed along dim 0)."""

    def __init__(self, data: torch.Tensor):
        self.data = data

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def shape(self):
        return list(self.data.shape)

    @property
    def type(self):
        return _BlockType(self.data.shape, self.data.dtype)

    def index(self, i):
        return Shared(self.data[int(i)])

    def reshape(self, shape):
        return Shared(self.data.view([int(s) for s in shape]))

    def permute(self, order):
        return Shared(self.data.permute(*order))

    def load(self, layout=None):
        scheduling_point()
        return self.data.clone()

    def store(self, value):
        scheduling_point()
        value = ready_value(value, "shared-memory store")
        if list(value.shape) != self.shape:
            raise SimError(f"store of a {list(value.shape)} tile into shared memory of shape {self.shape}")
        self.data.copy_(value)


class _PointerType:
    def __init__(self, dtype):
        self.element_ty = dtype


class Pointer:
    """A global pointer: a tensor's storage from its first element, plus element offsets."""

    def __init__(self, tensor: torch.Tensor, offset=0):
        self.tensor = tensor
        self.offset = offset

    @property
    def dtype(self):
        return _PointerType(self.tensor.dtype)

    def __add__(self, other):
        if isinstance(other, torch.Tensor):
            other = other.to(torch.int64)
        return Pointer(self.tensor, self.offset + other)

    __radd__ = __add__

    def flat(self) -> torch.Tensor:
        t = self.tensor
        n = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
        return t.as_strided((n,), (1,), t.storage_offset())


def _scatter(ptr: Pointer, value, mask, add: bool) -> None:
    scheduling_point()
    value = ready_value(value, "global store")
    flat = ptr.flat()
    offs = torch.as_tensor(ptr.offset, dtype=torch.int64)
    shape = torch.broadcast_shapes(offs.shape, value.shape, *(() if mask is None else (torch.as_tensor(mask).shape,)))
    offs = offs.expand(shape)
    value = value.expand(shape)
    keep = torch.ones(shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask).expand(shape)
    offs, value = offs[keep], value[keep]
    if offs.numel() and (int(offs.min()) < 0 or int(offs.max()) >= flat.numel()):
        raise SimError(f"global store out of bounds: offsets {int(offs.min())}..{int(offs.max())} of a "
                       f"{flat.numel()}-element buffer")
    if add:
        flat.index_add_(0, offs, value.to(flat.dtype))
    else:
        flat[offs] = value.to(flat.dtype)


def store(pointer, value, mask=None, other=None, **_):
    _scatter(pointer, value, mask, add=False)


def atomic_add(pointer, value, mask=None, sem=None, scope=None):
    _scatter(pointer, value, mask, add=True)


class SimDescriptor:
    """A TMA descriptor: the tensor (a view whose strides TMA follows) and the block (box) shape."""

    def __init__(self, base: torch.Tensor, block_shape, layout=None):
        _check_tma_rules(base, [int(b) for b in block_shape])
        self.base, self.layout = base, layout
        self.block_type = _BlockType(block_shape, base.dtype)

    @property
    def dtype(self):
        return self.base.dtype

    def box(self, coord):
        """-> (the in-bounds part of the tensor, the slice of the block it fills)."""
        coord = [int(c) for c in coord]
        if len(coord) != self.base.dim():
            raise SimError(f"TMA coordinates {coord} for a rank-{self.base.dim()} descriptor")
        src, dst = [], []
        for c, b, n in zip(coord, self.block_type.shape, self.base.shape):
            lo, hi = max(c, 0), min(c + b, n)
            hi = max(hi, lo)
            src.append(slice(lo, hi))
            dst.append(slice(lo - c, hi - c))
        return self.base[tuple(src)], tuple(dst)


def _check_tma_rules(base: torch.Tensor, block: list[int]) -> None:
    """The limits cuTensorMapEncodeTiled puts on a tiled descriptor: 16-byte aligned base, unit inner
    stride, the other strides multiples of 16 bytes, a box of 1..256 elements per dimension whose inner
    dimension spans a multiple of 16 bytes."""
    size = base.element_size()
    problems = []
    if base.dim() != len(block):
        problems.append(f"a rank-{len(block)} block over a rank-{base.dim()} tensor")
    if base.data_ptr() % 16:
        problems.append(f"base address {base.data_ptr()} not 16-byte aligned")
    if base.stride(-1) != 1:
        problems.append(f"inner stride {base.stride(-1)} (must be 1)")
    if any(st * size % 16 for st in base.stride()[:-1]):
        problems.append(f"strides {base.stride()} of {size}-byte elements not multiples of 16 bytes")
    if any(not 1 <= b <= 256 for b in block):
        problems.append(f"block {block} outside 1..256 per dimension")
    if block and block[-1] * size % 16:
        problems.append(f"block's inner dimension ({block[-1]} x {size} bytes) not a multiple of 16 bytes")
    if problems:
        raise SimError(f"TMA descriptor over {list(base.shape)} {base.dtype}: " + "; ".join(problems))


def tma_load(desc, coord, bar, result, pred=True):
    program = scheduling_point().program
    if not pred:
        return
    b = _bar(bar)
    if result.shape != desc.block_type.shape or result.dtype != desc.dtype:
        raise SimError(f"TMA load of a {desc.block_type.shape} {desc.dtype} block into shared memory of "
                       f"{result.shape} {result.dtype}")
    src, dst = desc.box(coord)
    nbytes = desc.block_type.nbytes

    def land():
        tile = torch.zeros(desc.block_type.shape, dtype=desc.dtype)
        tile[dst] = src
        result.data.copy_(tile)
        b.bar.add_tx(-nbytes, str(b))

    program.issue(Copy("load", land, None))


def _tma_store_like(desc, coord, src_smem, add: bool):
    me = scheduling_point()
    program = me.program
    if src_smem.shape != desc.block_type.shape:
        raise SimError(f"TMA {'reduction' if add else 'store'} of shared memory {src_smem.shape} through a "
                       f"{desc.block_type.shape} descriptor")
    region, dst = desc.box(coord)

    def land():
        tile = src_smem.data[dst].to(region.dtype)
        if add:
            region.add_(tile)
        else:
            region.copy_(tile)

    program.issue(Copy("reduction" if add else "store", land, me))


def tma_store(desc, coord, src):
    _tma_store_like(desc, coord, src, add=False)


def tma_reduce_add(tensor_desc, coord, src):
    _tma_store_like(tensor_desc, coord, src, add=True)


def tma_store_wait(pendings):
    me = current_thread()
    n = int(pendings)
    me.program.block(me, lambda: len(me.stores) <= n, f"its TMA stores to drain to {n}")


