"""What the warp-specialised kernels' PTX says about ordering inside a partition.

The Gluon simulator (npedit/ops/triton/gluon_sim) runs each `warp_specialize` partition as one thread.
These read the compiled code for what that takes for granted, or cannot see, of a partition's several
warps: that its mbarrier arrive counts once, after all of them; that none overwrites a TMA store's tile
before the store read it; that tiles they store for the async proxy (wgmma, TMA) are fenced and synced
before the reader is issued. Text-order scans of one kernel's PTX: pure functions, no Triton needed
(`compile_check.py` calls them on every kernel it compiles; tests/test_ptx_order.py on hand-written PTX).
"""
from __future__ import annotations

import re

_ARITH = ("add", "sub", "mul", "mad", "mov", "cvt", "setp", "selp", "and", "or", "xor", "shl", "shr", "not")
_BARRIER = ("bar.sync", "barrier.sync")  # only unguarded ones count: every thread of the partition waits
_GUARD = re.compile(r"^@!?%\w+\s+")  # an instruction's predicate guard


def partition_sync(ptx: str) -> dict:
    """What the Gluon simulator (npedit/ops/triton/gluon_sim) takes for granted when it runs a partition
    as one thread: a partition's mbarrier arrive (not the TMA warp's arrive.expect_tx) counts once, after
    every warp of the partition got there, and a TMA store / reduction's shared-memory tile is not
    overwritten by any warp before its read completed. In the PTX: each plain `mbarrier.arrive` has a
    `bar.sync` before it with only address arithmetic between; each `cp.async.bulk.wait_group.read` is
    followed by a `bar.sync`. -> counts of each and of those that are so ordered."""
    lines = [ln.strip() for ln in ptx.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("//", ".loc", "$")) and not ln.endswith(":")]
    arrives = arrives_synced = waits = waits_synced = 0
    for i, ln in enumerate(lines):
        op = _GUARD.sub("", ln)
        if op.startswith("mbarrier.arrive") and "expect_tx" not in op:
            arrives += 1
            j = i - 1
            while j >= 0 and lines[j].startswith(_ARITH):
                j -= 1
            arrives_synced += j >= 0 and lines[j].startswith(_BARRIER)
        if op.startswith("cp.async.bulk.wait_group.read"):
            waits += 1
            waits_synced += i + 1 < len(lines) and lines[i + 1].startswith(_BARRIER)
    return {"arrives": arrives, "arrives_after_bar_sync": arrives_synced, "bulk_read_waits": waits,
            "bulk_read_waits_then_bar_sync": waits_synced, **shared_handoffs(lines)}


def shared_handoffs(lines: list[str]) -> dict:
    """Registers stored into shared memory by every warp of a partition and read next by the async proxy
    (wgmma's shared operands, a TMA store or reduction): the backward's dS^T tile for the dQ matmul, its
    dQ tile for the reduction. Each warp writes only its own rows and the reader takes the whole tile,
    so between the last store and the reader there must be a `bar.sync` (every warp's stores done) and
    a `fence.proxy.async` (the generic writes made visible to the async proxy): fence then barrier
    (each writer fences: CUTLASS's order, and the Gluon kernels') or barrier then fence (the issuing
    threads fence: Triton's own lowering of tl.dot's shared operands). A partition simulated as one
    thread cannot race itself, so this is the intra-partition ordering the Gluon simulator does not see.
    Sufficient, not necessary: a tile read only by the warpgroup that wrote it needs just the fence (its
    wgmma starts once all four of its warps issued it, each after its own fence). Triton's own lowering
    does that for the pointer-load backward's dS^T in the dK matmul (each warpgroup reads back the key
    rows it wrote), so an unsynced hand-off in a Triton kernel is not by itself a race. The Gluon
    backward's readers take both warpgroups' rows: there the barrier is due.
    A store to a computed address (`st.shared`, `stmatrix`) opens a hand-off; stores to a fixed one
    (`[global_smem+N]`: warp_specialize's state word and the values it hands its partitions, read back
    by `ld.shared`) do not. lines: the PTX's instructions in text order (labels and comments dropped).
    -> handoffs, handoffs_fenced_and_synced."""
    handoffs = ordered = 0
    pending = fenced = synced = False
    for ln in lines:
        op = _GUARD.sub("", ln)  # stores and readers count guarded or not; fences and barriers only unguarded
        if op.startswith("stmatrix") or (op.startswith("st.shared") and "[global_smem" not in op):
            pending, fenced, synced = True, False, False
        elif ln.startswith("fence.proxy.async"):
            fenced = True
        elif ln.startswith(_BARRIER):
            synced = True
        elif pending and ("wgmma.mma_async" in op or re.search(r"cp\.(reduce\.)?async\.bulk\.tensor\.\w+\.global\.shared", op)):
            handoffs += 1
            ordered += fenced and synced
            pending = False
    return {"handoffs": handoffs, "handoffs_fenced_and_synced": ordered}
