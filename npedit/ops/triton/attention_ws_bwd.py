"""Warp-specialised attention backward for Hopper (sm_90), written in Gluon (`NPEDIT_ATTN_BWD=ws`).

The Triton backward (attention_bwd.py) keeps K and V of its key tile in registers as wgmma A operands
and leaves loads and matmuls to one instruction stream per warp: at hd128 it sits on the 255-register
limit with 32-query steps and reaches 342-358 TFLOP/s on an H200 against cuDNN's 500-529
(kernels/NOTES.md v2, v7). This kernel is FlashAttention-3's backward structure, by hand:

- one program per (key tile of BLOCK_N = 128 keys, kv head, batch) keeps K and V in shared memory
  (loaded once by TMA), so both are read by wgmma from shared memory and cost no registers;
- a load partition (1 warp, 24 registers) streams the query tiles Q_i and dO_i of every q head of the
  kv head's group, with their rows of lse and delta, by TMA into a NUM_STAGES-deep ring (`q_ready` /
  `do_ready` complete when the bytes land, `qdo_empty` when the compute partition is done with the
  stage), so the compute partition reads nothing from global memory itself;
- the compute partition (8 warps: two warpgroups, 64 keys each) works in the transposed frame, keys
  on the rows: S^T = K Q_i^T and dP^T = V dO_i^T (async wgmma, shared-memory operands, accumulators
  starting at -lse / scale and -delta so neither row statistic holds registers during the matmuls),
  P^T = exp2(S^T - lse), dS^T = P^T (dP^T - delta), then dV += P^T dO_i and dK += dS^T Q_i with P^T
  and dS^T as register A operands; dS^T also goes to shared memory (double-buffered), from which
  dQ_i = dS_i K runs as one more wgmma (warpgroups split dQ's head dim) and is added to an fp32 dQ
  accumulator: 5 matmuls per tile pair, no dQ launch, and a dQ summation order that changes from run
  to run (key tile j starts its walk over the query tiles j steps in, so a head's key tiles do not
  all add into one query tile at once). The addition is either by per-thread atomics, as the "fused"
  Triton variant does, or (DQ_TMA, FlashAttention-3's way) by one TMA reduction per step: the
  partition stores dQ_i to shared memory and one thread adds the whole [BM, D] tile into global
  memory (cp.reduce.async.bulk.tensor .add.f32), which the TMA unit carries out while the warps go
  on with the next tile. FUSE_DQ=False leaves dQ to the Triton dQ pass instead (deterministic,
  7 matmuls per pair, no atomics).

Scope: the batch layout [B, S, H, D] with (H, D) contiguous and 16-byte aligned (the forward's
`strides_fit`), fp16 / bf16, head dim 64 or 128, causal or not, grouped-query heads, a positive
softmax scale; everything else,
the interpreter and GPUs before sm_90 run the Triton backward. Tails need no masks: TMA reads rows past
a sequence as zeros, so a padded query row has Q = dO = 0 and lse = delta = 0 (its P^T column is
finite and meets only zero dO and dP rows: it adds nothing to dV or dK, and its dQ row is not
stored); padded key rows give dK / dV rows that are not stored and dQ terms that are multiplied by
their zero K rows. lse and delta reach the kernel through `row_stats_buffers` (TMA needs their rows
on 16-byte boundaries).

There is no CPU interpreter for Gluon. On the CPU the kernel is lowered for sm_90 through ptxas
(`kernels/compile_check.py`) and run by npedit's Gluon simulator (`npedit/ops/triton/gluon_sim`,
`tests/test_gluon_sim.py`: every dQ mode, numerics and the mbarrier protocol); on a GPU by
`tests/test_ops_attention_ws_bwd.py`.
"""
from __future__ import annotations

import torch
import triton

from npedit.ops.triton.attention_bwd import _causal_query_ranges, _key_tile_program
from npedit.ops.triton.attention_ws import NEW_WS_API, _smem_layout, _ws_tile, gluon, strides_fit, ws_descriptor

if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    from triton._C.libtriton import ir as _ir
    from triton.experimental.gluon.language._core import builtin as _gluon_builtin

    # a CTA-wide barrier of the calling partition: `gl.barrier` since Triton 3.7, `gl.thread_barrier` before
    _partition_barrier = getattr(gl, "barrier", None) or gl.thread_barrier

    @_gluon_builtin
    def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        # global tile of tensor_desc at coord += the shared-memory tile src, as one TMA reduction
        # (cp.reduce.async.bulk.tensor .add; rows past the tensor are dropped like a TMA store's).
        # Completion is tracked like a TMA store's (`tma.store_wait`). Gluon 3.6 / 3.7 build the op
        # (create_async_tma_reduce) but give it no Python name; this is async_copy_shared_to_global's body
        # with the reduction op
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(_ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord,
                                                  src.handle)

    @gluon.jit
    def _wsb_query_tile(it, rot, n_iter, n_m, lo, off_hk, group, BLOCK_M: gl.constexpr):
        # iteration it of a program -> (q head, first query row): the group's q heads one after the
        # other, each over its query tiles from lo on, the walk starting at step rot (< n_iter)
        step = it + rot
        step = gl.where(step >= n_iter, step - n_iter, step)
        return off_hk * group + step // n_m, lo + (step % n_m) * BLOCK_M

    @gluon.jit
    def _wsb_load_partition(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_bufs, do_bufs,
                            lse_bufs, delta_bufs, kv_bar, q_ready, do_ready, qdo_empty, off_b, off_hk, start_n, lo,
                            n_m, n_iter, rot, group):
        # TMA issue only: K and V once, then Q_i with its lse rows and dO_i with its delta rows of
        # iteration i into stage i % NUM_STAGES once the compute partition released the stage's previous
        # tile (fresh barriers pass the wait on phase 1)
        NUM_STAGES: gl.constexpr = q_bufs.type.shape[0]
        BLOCK_M: gl.constexpr = desc_q.block_type.shape[1]
        BLOCK_D: gl.constexpr = desc_q.block_type.shape[2]
        mbarrier.expect(kv_bar, desc_k.block_type.nbytes + desc_v.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_k, [off_b, start_n, off_hk * BLOCK_D], kv_bar, k_smem)
        tma.async_copy_global_to_shared(desc_v, [off_b, start_n, off_hk * BLOCK_D], kv_bar, v_smem)
        for it in range(n_iter):
            stage = it % NUM_STAGES
            off_h, start_m = _wsb_query_tile(it, rot, n_iter, n_m, lo, off_hk, group, BLOCK_M)
            mbarrier.wait(qdo_empty.index(stage), ((it // NUM_STAGES) & 1) ^ 1)
            mbarrier.expect(q_ready.index(stage), desc_q.block_type.nbytes + desc_lse.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_q, [off_b, start_m, off_h * BLOCK_D], q_ready.index(stage),
                                            q_bufs.index(stage))
            tma.async_copy_global_to_shared(desc_lse, [off_b, off_h, start_m], q_ready.index(stage),
                                            lse_bufs.index(stage))
            mbarrier.expect(do_ready.index(stage), desc_do.block_type.nbytes + desc_delta.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_do, [off_b, start_m, off_h * BLOCK_D], do_ready.index(stage),
                                            do_bufs.index(stage))
            tma.async_copy_global_to_shared(desc_delta, [off_b, off_h, start_m], do_ready.index(stage),
                                            delta_bufs.index(stage))

    @gluon.jit
    def _wsb_compute_partition(k_smem, v_smem, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_bufs, dq_smem, kv_bar,
                               q_ready, do_ready, qdo_empty, DQ, DK, DV, qk_scale, sm_scale,
                               stride_dqb, stride_dqm, stride_dqh,
                               stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
                               off_b, off_hk, start_n, lo, mask_hi, n_m, n_iter, rot, group, seqlen_q, seqlen_k,
                               CAUSAL: gl.constexpr, FUSE_DQ: gl.constexpr, DQ_TMA: gl.constexpr):
        NUM_WARPS: gl.constexpr = gl.num_warps()
        NUM_STAGES: gl.constexpr = q_bufs.type.shape[0]
        BLOCK_N: gl.constexpr = k_smem.type.shape[0]
        BLOCK_M: gl.constexpr = q_bufs.type.shape[2]
        BLOCK_D: gl.constexpr = k_smem.type.shape[1]
        # wgmma accumulators. S^T, dP^T [BN, BM] and dK, dV [BN, BD]: 16-row atoms, warps stacked along
        # the keys (each warpgroup owns BN / 2 of them). dQ [BM, BD]: a warpgroup per BM rows if BM
        # holds both, else the two split the head dim (BM = 64: each reads all of dS and half of K)
        st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                           instr_shape=[16, BLOCK_M, 16])
        kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                           instr_shape=[16, BLOCK_D, 16])
        DQ_WARPS_M: gl.constexpr = min(NUM_WARPS, BLOCK_M // 16)
        DQ_WARPS_D: gl.constexpr = NUM_WARPS // DQ_WARPS_M
        dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[DQ_WARPS_M, DQ_WARPS_D],
                                                           instr_shape=[16, BLOCK_D // DQ_WARPS_D, 16])
        op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kv_layout, k_width=2)
        col_s: gl.constexpr = gl.SliceLayout(0, st_layout)
        dtype: gl.constexpr = k_smem.dtype

        offs_n = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, st_layout))
        offs_m0 = gl.arange(0, BLOCK_M, layout=col_s)
        dk = gl.zeros([BLOCK_N, BLOCK_D], gl.float32, layout=kv_layout)
        dv = gl.zeros([BLOCK_N, BLOCK_D], gl.float32, layout=kv_layout)
        st_zero = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=st_layout)
        dq_zero = gl.zeros([BLOCK_M, BLOCK_D], gl.float32, layout=dq_layout)
        dq_rows0 = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, dq_layout))
        dq_cols = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, dq_layout))
        mbarrier.wait(kv_bar, 0)
        # invariant at the top of iteration it: dK, dV hold the sums over iterations < it (dK unscaled);
        # every wgmma of earlier iterations is complete and their stages are released
        for it in range(n_iter):
            stage = it % NUM_STAGES
            phase = (it // NUM_STAGES) & 1
            off_h, start_m = _wsb_query_tile(it, rot, n_iter, n_m, lo, off_hk, group, BLOCK_M)
            offs_m = start_m + offs_m0
            q_tile = _ws_tile(q_bufs, stage)
            do_tile = _ws_tile(do_bufs, stage)
            # the tile's lse (natural log; TMA reads rows past Sq as 0, harmless: their Q and dO rows are
            # 0 too) and delta [BM] came with Q_i and dO_i; they enter the accumulators' initial values,
            # so no register holds them while the matmuls run: S^T - lse2 / qk_scale and dP^T - delta
            # come out of the wgmma (lse2: log2 units, +inf for rows that saw no key, so their P = 0)
            mbarrier.wait(q_ready.index(stage), phase)
            lse = lse_bufs.index(stage).reshape([BLOCK_M]).load(col_s)
            lse2 = gl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
            st = warpgroup_mma(k_smem, q_tile.permute((1, 0)), st_zero - gl.expand_dims(lse2 / qk_scale, 0),
                               is_async=True)
            mbarrier.wait(do_ready.index(stage), phase)
            delta = delta_bufs.index(stage).reshape([BLOCK_M]).load(col_s)
            dpt = warpgroup_mma(v_smem, do_tile.permute((1, 0)), st_zero - gl.expand_dims(delta, 0), is_async=True)
            st = warpgroup_mma_wait(1, deps=(st, ))  # S^T - lse / qk_scale is done; dP^T may still run
            pt = gl.exp2(st * qk_scale)
            if CAUSAL:
                if start_m < mask_hi:  # a diagonal tile: key n visible to query m iff n <= m + (Sk - Sq)
                    visible = gl.expand_dims(offs_n, 1) <= gl.expand_dims(offs_m, 0) + (seqlen_k - seqlen_q)
                    pt = gl.where(visible, pt, 0.0)
            dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), op_layout), do_tile, dv, is_async=True)
            dpt = warpgroup_mma_wait(1, deps=(dpt, ))  # dP^T - delta is done; P^T dO may still run
            ds_t = (pt * dpt).to(dtype)
            dk = warpgroup_mma(gl.convert_layout(ds_t, op_layout), q_tile, dk, is_async=True)
            if FUSE_DQ:
                # dQ_i = dS K reads every key's dS row: both warpgroups store theirs, fence (Triton
                # 3.6 adds no proxy fence itself), then sync. Two buffers: a warpgroup cannot store
                # into the one the other may still read, the barrier being between (kernels/NOTES.md v11)
                ds_smem = ds_bufs.index(it % 2)
                ds_smem.store(ds_t)
                fence_async_shared()
                _partition_barrier()
                dq = warpgroup_mma(ds_smem.permute((1, 0)), k_smem, dq_zero, use_acc=False, is_async=True)
                dq, dv, dk = warpgroup_mma_wait(0, deps=(dq, dv, dk))
                mbarrier.arrive(qdo_empty.index(stage), count=1)
                if DQ_TMA:
                    # the previous step's reduction has read dq_smem (its whole iteration to drain) before
                    # the tile is overwritten; rows past Sq are dropped by the TMA unit
                    tma.store_wait(0)
                    dq_smem.reshape([BLOCK_M, BLOCK_D]).store(dq * sm_scale)
                    fence_async_shared()
                    _tma_reduce_add(DQ, [off_b, start_m, off_h * BLOCK_D], dq_smem)
                else:
                    dq_rows = start_m + dq_rows0
                    dq_off = (off_b.to(gl.int64) * stride_dqb + off_h.to(gl.int64) * stride_dqh
                              + gl.expand_dims(dq_rows, 1) * stride_dqm + gl.expand_dims(dq_cols, 0))
                    gl.atomic_add(DQ + dq_off, dq * sm_scale, mask=gl.expand_dims(dq_rows < seqlen_q, 1),
                                  sem="relaxed")
            else:
                dv, dk = warpgroup_mma_wait(0, deps=(dv, dk))
                mbarrier.arrive(qdo_empty.index(stage), count=1)
        if DQ_TMA:
            tma.store_wait(0)  # the last reduction has read its tile before the program ends
        # epilogue: dK (scaled), dV rows of this key tile that exist
        rows = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, kv_layout))
        cols = gl.expand_dims(gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, kv_layout)), 0)
        row_ok = gl.expand_dims(rows < seqlen_k, 1)
        dk_off = off_b.to(gl.int64) * stride_dkb + off_hk.to(gl.int64) * stride_dkh + gl.expand_dims(rows, 1) * stride_dkn
        dv_off = off_b.to(gl.int64) * stride_dvb + off_hk.to(gl.int64) * stride_dvh + gl.expand_dims(rows, 1) * stride_dvn
        gl.store(DK + dk_off + cols, (dk * sm_scale).to(DK.dtype.element_ty), mask=row_ok)
        gl.store(DV + dv_off + cols, dv.to(DV.dtype.element_ty), mask=row_ok)

    @gluon.jit
    def _attention_bwd_ws_kernel(
        desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, DQ, DK, DV,
        qk_scale, sm_scale,  # qk_scale = softmax_scale * log2(e)
        stride_dqb, stride_dqm, stride_dqh, stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
        num_kv_heads, group, seqlen_q, seqlen_k,
        CAUSAL: gl.constexpr, FUSE_DQ: gl.constexpr, DQ_TMA: gl.constexpr, NUM_STAGES: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """desc_q / desc_do: TMA descriptors over q, dO [B, Sq, Hq * D] with blocks [1, BLOCK_M, D];
        desc_k / desc_v over k, v [B, Sk, Hk * D], blocks [1, BLOCK_N, D]. desc_lse / desc_delta over
        lse / delta [B, Hq, Sq] fp32, blocks [1, 1, BLOCK_M] (natural-log lse; delta = rowsum(dO * O) -
        dLSE); DQ: the fp32 dQ accumulator [B, Sq, Hq, D],
        zeroed, as a pointer (atomics) or, with DQ_TMA, as a TMA descriptor over [B, Sq, Hq * D] with
        blocks [1, BLOCK_M, D] (reductions; the dq strides are then unused); DK / DV [B, Sk, Hk, D].
        Grid (key tiles, B * Hk)."""
        BLOCK_M: gl.constexpr = desc_q.block_type.shape[1]
        BLOCK_N: gl.constexpr = desc_k.block_type.shape[1]
        BLOCK_D: gl.constexpr = desc_q.block_type.shape[2]
        gl.static_assert(BLOCK_N == 16 * num_warps, "each warp owns 16 keys of the tile")
        gl.static_assert(FUSE_DQ or not DQ_TMA, "DQ_TMA is a way of adding dQ in the kernel (FUSE_DQ)")
        off_b, off_hk, start_n = _key_tile_program(num_kv_heads, BLOCK_N)
        lo, mask_hi = _causal_query_ranges(start_n, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
        n_m = gl.maximum(gl.cdiv(seqlen_q - lo, BLOCK_M), 0)  # query tiles per q head that see a key of this tile
        n_iter = group * n_m
        # with dQ by atomics, key tile j starts its walk j steps in, so a head's key tiles do not all
        # add into the same query tile at once (the summation order is free already)
        rot = (start_n // BLOCK_N) % gl.maximum(n_iter, 1) if FUSE_DQ else 0

        # shared memory: K, V of the tile, a ring of Q / dO tiles, two dS^T buffers, with DQ_TMA the fp32
        # dQ tile the reductions read (hd128, 2 stages: 164 KB + 32 KB)
        k_smem = gl.allocate_shared_memory(desc_k.dtype, desc_k.block_type.shape, desc_k.layout)
        v_smem = gl.allocate_shared_memory(desc_v.dtype, desc_v.block_type.shape, desc_v.layout)
        q_bufs = gl.allocate_shared_memory(desc_q.dtype, [NUM_STAGES] + desc_q.block_type.shape, desc_q.layout)
        do_bufs = gl.allocate_shared_memory(desc_do.dtype, [NUM_STAGES] + desc_do.block_type.shape, desc_do.layout)
        ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], desc_q.dtype)
        ds_bufs = gl.allocate_shared_memory(desc_q.dtype, [2, BLOCK_N, BLOCK_M], ds_layout)
        lse_bufs = gl.allocate_shared_memory(gl.float32, [NUM_STAGES] + desc_lse.block_type.shape, desc_lse.layout)
        delta_bufs = gl.allocate_shared_memory(gl.float32, [NUM_STAGES] + desc_delta.block_type.shape,
                                               desc_delta.layout)
        if DQ_TMA:
            dq_smem = gl.allocate_shared_memory(DQ.dtype, DQ.block_type.shape, DQ.layout)
        else:
            dq_smem = ds_bufs  # not used
        kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        do_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        qdo_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(kv_bar, count=1)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(q_ready.index(i), count=1)
            mbarrier.init(do_ready.index(i), count=1)
            mbarrier.init(qdo_empty.index(i), count=1)
        fence_async_shared()

        k2 = k_smem.reshape([BLOCK_N, BLOCK_D])
        v2 = v_smem.reshape([BLOCK_N, BLOCK_D])
        # (argument tuples are written in the calls: a constexpr kept in a tuple variable becomes a tensor)
        if NEW_WS_API:
            gl.warp_specialize([
                (_wsb_compute_partition, (k2, v2, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_bufs, dq_smem, kv_bar,
                                          q_ready, do_ready, qdo_empty, DQ, DK, DV, qk_scale, sm_scale,
                                          stride_dqb, stride_dqm, stride_dqh, stride_dkb, stride_dkn, stride_dkh,
                                          stride_dvb, stride_dvn, stride_dvh, off_b, off_hk, start_n, lo, mask_hi,
                                          n_m, n_iter, rot, group, seqlen_q, seqlen_k, CAUSAL, FUSE_DQ, DQ_TMA)),
                (_wsb_load_partition, (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_bufs,
                                       do_bufs, lse_bufs, delta_bufs, kv_bar, q_ready, do_ready, qdo_empty, off_b,
                                       off_hk, start_n, lo, n_m, n_iter, rot, group)),
            ], [1], [24])
        else:
            gl.warp_specialize((k2, v2, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_bufs, dq_smem, kv_bar, q_ready,
                                do_ready, qdo_empty, DQ, DK, DV, qk_scale, sm_scale, stride_dqb,
                                stride_dqm, stride_dqh, stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn,
                                stride_dvh, off_b, off_hk, start_n, lo, mask_hi, n_m, n_iter, rot, group, seqlen_q,
                                seqlen_k, CAUSAL, FUSE_DQ, DQ_TMA),
                               _wsb_compute_partition,
                               (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_bufs,
                                do_bufs, lse_bufs, delta_bufs, kv_bar, q_ready, do_ready, qdo_empty, off_b, off_hk,
                                start_n, lo, n_m, n_iter, rot, group),
                               [_wsb_load_partition], [1], [24])


# ---------------------------------------------------------------------------------------------------
# launcher

def ws_bwd_fits(q4, k4, v4, do4, interpreting: bool) -> bool:
    """Whether `attention_bwd_ws` takes these [B, S, H, D] tensors: Gluon present, compiled kernels, an
    sm_90 GPU, and q, k, v, dO each in the forward's descriptor scope (`strides_fit`: fp16 / bf16, head
    dim 64 or 128, (H, D) contiguous, 16-byte aligned)."""
    if gluon is None or interpreting or not q4.is_cuda or torch.cuda.get_device_capability(q4.device)[0] != 9:
        return False
    return all(strides_fit(t) for t in (q4, k4, v4, do4))


def row_stats_buffers(lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lse [B, H, S] fp32 (contiguous) -> (lse, delta): [B, H, S] views the kernel's TMA can read, rows
    starting on 16 bytes (a row stride that is a multiple of 4 floats); delta uninitialised, with
    lse's strides. lse itself when S is a multiple of 4, else a copy into a padded buffer."""
    batch, heads, seqlen = lse.shape
    padded = -(-seqlen // 4) * 4
    if padded == seqlen:
        return lse, torch.empty_like(lse)
    lse_pad, delta = lse.new_empty(2, batch, heads, padded)[..., :seqlen].unbind(0)
    lse_pad.copy_(lse)
    return lse_pad, delta


def _row_stats_descriptor(t: torch.Tensor, rows: int) -> "GluonTensorDescriptor":
    """lse or delta [B, H, S] fp32 (from `row_stats_buffers`) -> a descriptor with blocks [1, 1, rows]
    (the layout of a `ws_descriptor` block of 1 row and `rows` columns; its kernel-signature type is
    `descriptor_signature(torch.float32, 1, rows)`)."""
    return GluonTensorDescriptor.from_tensor(t, [1, 1, rows], _smem_layout(torch.float32, 1, rows))


def attention_bwd_ws(q4, k4, v4, do4, lse, delta, dq32, dk4, dv4, causal: bool, qk_scale: float, sm_scale: float,
                     BLOCK_M: int = 64, BLOCK_N: int = 128, num_warps: int = 8, num_stages: int = 2,
                     dq_tma: bool = False) -> None:
    """Fill dk4, dv4 (like k4, v4) and, unless dq32 is None, add dQ into dq32 (fp32 [B, Sq, Hq, D], zeroed
    by the caller; None: the caller runs a dQ pass) from q4 [B, Sq, Hq, D], k4 / v4 [B, Sk, Hk, D], do4
    (like q4), lse / delta [B, Hq, Sq] fp32 from `row_stats_buffers` (inputs must pass `ws_bwd_fits`).
    BLOCK_N keys per program, 16 per warp of the compute partition; BLOCK_M query rows per step; num_stages Q / dO tiles in flight;
    dq_tma: dQ added by one TMA reduction per step instead of atomics (needs a contiguous dq32)."""
    batch, seqlen_q, num_heads, _ = q4.shape
    seqlen_k, num_kv_heads = k4.shape[1], k4.shape[2]
    if BLOCK_N != 16 * num_warps:
        raise ValueError(f"the warp-specialised backward takes BLOCK_N = 16 * num_warps, got {BLOCK_N}, {num_warps}")
    fuse_dq = dq32 is not None
    if dq_tma and not fuse_dq:
        raise ValueError("dq_tma adds dQ inside the kernel: pass the fp32 dQ accumulator, not None")
    if not fuse_dq:
        dq32 = lse.new_empty(1, 1, 1, 1)  # never written: FUSE_DQ=False removes the atomics
    # the dQ accumulator as the kernel takes it: a pointer (atomics) or a TMA descriptor (reductions)
    dq_arg = ws_descriptor(dq32, BLOCK_M) if dq_tma else dq32
    desc_q, desc_do = (ws_descriptor(t, BLOCK_M) for t in (q4, do4))
    desc_k, desc_v = (ws_descriptor(t, BLOCK_N) for t in (k4, v4))
    desc_lse, desc_delta = (_row_stats_descriptor(t, BLOCK_M) for t in (lse, delta))
    grid = (triton.cdiv(seqlen_k, BLOCK_N), batch * num_kv_heads)
    _attention_bwd_ws_kernel[grid](
        desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, dq_arg, dk4, dv4, qk_scale, sm_scale,
        dq32.stride(0), dq32.stride(1), dq32.stride(2), dk4.stride(0), dk4.stride(1), dk4.stride(2),
        dv4.stride(0), dv4.stride(1), dv4.stride(2), num_kv_heads, num_heads // num_kv_heads, seqlen_q, seqlen_k,
        CAUSAL=causal, FUSE_DQ=fuse_dq, DQ_TMA=dq_tma, NUM_STAGES=num_stages, num_warps=num_warps)
