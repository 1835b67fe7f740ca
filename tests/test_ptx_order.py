"""kernels/ptx_order.py on hand-written PTX: each ordering it reports as kept is kept, and each way of
breaking it (the fence or the barrier missing, both before the store, a store after both) is counted
as broken. The compile tests (test_ops_attention_ws*.py) apply it to the real kernels' PTX."""
from __future__ import annotations

import pytest

from helpers import load_ptx_order

ptx_order = load_ptx_order()

# a compute partition's dS^T hand-off as Triton 3.6 / 3.7 lower it (instructions abridged)
STORE = "stmatrix.sync.aligned.m8n8.x4.shared.b16 [%r482+131072], {%r223, %r224, %r225, %r226};"
FENCE = "fence.proxy.async.shared::cta;"
SYNC = "bar.sync \t0, 256;"
WGMMA = "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r239,%r240}, %rd1, %rd2, p, 1, 1, 0, 1;"
REDUCE = "@%p16 cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.bulk_group [%rd1, {%r272, %r273, %r274}], [%r5];"
READER = "the reader under test"  # stands for WGMMA or REDUCE in a parametrised sequence


def _handoffs(*lines):
    report = ptx_order.partition_sync("\n".join(lines))
    return report["handoffs"], report["handoffs_fenced_and_synced"]


@pytest.mark.parametrize("reader", [WGMMA, REDUCE], ids=["wgmma", "tma-reduce"])
def test_a_fenced_and_synced_store_is_an_ordered_handoff(reader):
    """Fence then barrier (the Gluon kernels: each writer fences) or barrier then fence (Triton's own
    tl.dot lowering: the issuing threads fence once every warp's stores are done)."""
    assert _handoffs(STORE, STORE, FENCE, "mov.b32 %r1, 0;", SYNC, "$L__BB0_3:", reader, reader) == (1, 1)
    assert _handoffs(STORE, SYNC, "ld.shared.v2.b32 {%r1, %r2}, [%r3+49152];", FENCE, reader) == (1, 1)


@pytest.mark.parametrize("lines", [
    (STORE, SYNC, READER),  # no fence: the async proxy may not see the generic writes
    (STORE, FENCE, READER),  # no barrier: the other warps may not have stored their rows yet
    (STORE, FENCE, "@%p1 " + SYNC, READER),  # a guarded barrier: the threads it skips do not wait
    (FENCE, SYNC, STORE, READER),  # both before the store
    (STORE, FENCE, SYNC, "st.shared.v2.b32 [%r24+163840], {%r490, %r491};", READER),  # a store after both
], ids=["no-fence", "no-barrier", "guarded-barrier", "both-before", "store-after"])
@pytest.mark.parametrize("reader", [WGMMA, REDUCE], ids=["wgmma", "tma-reduce"])
def test_a_handoff_missing_its_fence_or_barrier_is_counted_unordered(lines, reader):
    assert _handoffs(*(reader if ln is READER else ln for ln in lines)) == (1, 0)


def test_fixed_address_stores_and_readers_of_loaded_tiles_open_no_handoff():
    """warp_specialize's state word and captured values go to [global_smem+N] and come back by ld.shared;
    a wgmma on TMA-loaded tiles (no store before it) hands nothing over."""
    assert _handoffs("st.shared.v2.b32 [global_smem+81920], {%r167, %r186};", "barrier.sync 1;", WGMMA) == (0, 0)
    assert _handoffs(WGMMA, SYNC, WGMMA) == (0, 0)


def test_arrives_and_bulk_read_waits_count_their_barriers():
    report = ptx_order.partition_sync("\n".join([
        SYNC, "add.s32 %r1, %r2, 8;", "@%p13 mbarrier.arrive.shared::cta.b64 _, [%r271];",  # synced
        "wgmma.wait_group.sync.aligned 0;", "@%p9 mbarrier.arrive.shared::cta.b64 _, [%r272];",  # not
        "@%p6 mbarrier.arrive.expect_tx.shared.b64 _, [%r43], 65536;",  # the TMA warp's: not counted
        "cp.async.bulk.wait_group.read 0;", SYNC,  # synced
        "cp.async.bulk.wait_group.read 0;", STORE]))  # not
    assert report["arrives"] == 2 and report["arrives_after_bar_sync"] == 1
    assert report["bulk_read_waits"] == 2 and report["bulk_read_waits_then_bar_sync"] == 1
