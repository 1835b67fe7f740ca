"""Warp-specialised attention forward for Hopper (sm_90), written in Gluon.

The Triton forwards in attention.py leave the scheduling of loads and matmuls to the compiler, one
instruction stream per warp; on an H200 they reach ~73% of cuDNN's forward (kernels/NOTES.md v2),
and Triton's automatic warp specialisation does not split their loop on sm_90 (v5). This kernel
splits the work by hand, FlashAttention-3 style:

- a load partition (1 warp, few registers) loads the query tile once and streams K and V tiles by
  TMA into a NUM_STAGES-deep shared-memory ring. Per stage: `k_ready` / `v_ready` complete when the
  TMA bytes land, `kv_empty` when the softmax partition has finished reading the stage;
- the softmax partition (num_warps = 8: two warpgroups, BLOCK_M / 2 query rows each) issues
  S_{j+1} = Q K_{j+1}^T and O += P_j V_j as asynchronous wgmma, then computes the softmax of S_{j+1}
  while the tensor cores still run P_j V_j.

Scope: the batch layout [B, S, H, D] whose (H, D) dims are contiguous and 16-byte aligned, fp16 /
bf16, head dim 64 or 128, causal or not, grouped-query heads. `ws_fits` says whether inputs are in
scope; the launcher uses the Triton kernels for everything else, under the interpreter and on GPUs
before sm_90. Outputs match `_attention_fwd_kernel`: out [B, Sq, Hq, D], lse [B, Hq, Sq] (natural
log); a query row that sees no key gets out = 0 and lse = -inf.

There is no CPU interpreter for Gluon. On the CPU this kernel is lowered for sm_90 through ptxas
(`kernels/compile_check.py`: registers, spills, shared memory) and run by npedit's Gluon simulator
(`npedit/ops/triton/gluon_sim`, `tests/test_gluon_sim.py`: numerics and the mbarrier protocol under
adversarial schedules); on a GPU by the gpu-marked tests of `tests/test_ops_attention_ws.py` and
`tests/test_ops_attention.py` and by `kernels/attention/validate_and_time.py`.
"""
from __future__ import annotations

import inspect

import torch
import triton

# Triton jit helpers the Gluon kernel calls: the Triton forwards' key ranges and epilogue
from npedit.ops.triton.attention import _causal_key_ranges, _fwd_epilogue

try:  # Triton >= 3.4 ships Gluon
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the variant falls back to the Triton kernels
    gluon = None

WS_HEAD_DIMS = (64, 128)

if gluon is not None:
    # Triton 3.6 and 3.7 take warp_specialize([(default_fn, args), (worker_fn, args), ...], warps, regs);
    # older Gluon took warp_specialize(default_args, default_fn, worker_args, worker_fns, warps, regs).
    NEW_WS_API = gl.constexpr("functions_and_args" in inspect.signature(gl.warp_specialize).parameters)

    @gluon.jit
    def _ws_load_partition(desc_q, desc_k, desc_v, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty,
                           off_b, q_col, kv_col, start_m, n_tiles):
        # TMA issue only: Q once, then K/V tile j into stage j % NUM_STAGES once the softmax
        # partition released the stage's previous tile (fresh barriers pass the first wait on phase 1)
        NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
        BLOCK_N: gl.constexpr = desc_k.block_type.shape[1]
        if n_tiles > 0:
            mbarrier.expect(q_bar, desc_q.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_q, [off_b, start_m, q_col], q_bar, q_smem)
        for j in range(n_tiles):
            stage = j % NUM_STAGES
            phase = (j // NUM_STAGES) & 1
            mbarrier.wait(kv_empty.index(stage), phase ^ 1)
            mbarrier.expect(k_ready.index(stage), desc_k.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_k, [off_b, j * BLOCK_N, kv_col], k_ready.index(stage),
                                            k_bufs.index(stage))
            mbarrier.expect(v_ready.index(stage), desc_v.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_v, [off_b, j * BLOCK_N, kv_col], v_ready.index(stage),
                                            v_bufs.index(stage))

    @gluon.jit
    def _ws_tile(bufs, stage):
        # stage `stage` of a [NUM_STAGES, 1, rows, D] TMA ring as the [rows, D] operand wgmma reads
        return bufs.index(stage).reshape([bufs.type.shape[2], bufs.type.shape[3]])

    @gluon.jit
    def _ws_softmax_step(s, m_i, l_i, qk_scale, start_n, lo_mask, offs_m, offs_n, seqlen_q, seqlen_k,
                         CAUSAL: gl.constexpr):
        # s [BM, BN] fp32 raw scores of keys start_n + offs_n -> p [BM, BN] fp32 (unnormalised),
        # alpha [BM] (the rescale of what was accumulated so far), l_i, m_i [BM] (log2 units).
        # The math of attention.py's `_online_softmax_step` without its P @ V, which the caller issues
        # as an async wgmma (calling a split-out Triton helper from both made the Triton forward spill)
        s = s * qk_scale
        if start_n + s.shape[1] > lo_mask:  # the causal diagonal or the sequence tail
            cols = start_n + offs_n
            valid = gl.expand_dims(cols, 0) < seqlen_k
            if CAUSAL:
                valid = valid & (gl.expand_dims(cols, 0) <= gl.expand_dims(offs_m, 1) + (seqlen_k - seqlen_q))
            s = gl.where(valid, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
        p = gl.exp2(s - gl.expand_dims(m_use, 1))
        alpha = gl.exp2(m_i - m_use)
        l_i = l_i * alpha + gl.sum(p, 1)
        return p, alpha, l_i, m_new

    @gluon.jit
    def _ws_softmax_partition(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, Out, Lse, qk_scale,
                              o_base, stride_om, l_base, stride_lm, start_m, seqlen_q, seqlen_k, lo_mask,
                              n_tiles, CAUSAL: gl.constexpr):
        NUM_WARPS: gl.constexpr = gl.num_warps()
        NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
        BLOCK_M: gl.constexpr = q_smem.type.shape[0]
        BLOCK_N: gl.constexpr = k_bufs.type.shape[2]
        BLOCK_D: gl.constexpr = q_smem.type.shape[1]
        # wgmma accumulators: 16-row atoms, warps stacked along the rows (each warpgroup owns BM / 2)
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                          instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                          instr_shape=[16, BLOCK_D, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        offs_m = start_m + gl.arange(0, BLOCK_M, layout=row_s)
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_M, BLOCK_D], gl.float32, layout=o_layout)
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
        if n_tiles > 0:
            mbarrier.wait(q_bar, 0)
            mbarrier.wait(k_ready.index(0), 0)
            s = warpgroup_mma(q_smem, _ws_tile(k_bufs, 0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s, ))
            p, alpha, l_i, m_i = _ws_softmax_step(s, m_i, l_i, qk_scale, 0, lo_mask, offs_m, offs_n, seqlen_q,
                                                  seqlen_k, CAUSAL)
            p_op = gl.convert_layout(p.to(q_smem.dtype), p_layout)
            # invariant at the top of iteration j: S_j was consumed into p_op, acc holds sum_{i<j} P_i V_i
            # already rescaled to the running max of S_0..S_j; stages of tiles < j are released
            for j in range(n_tiles - 1):
                stage = j % NUM_STAGES
                nxt = (j + 1) % NUM_STAGES
                mbarrier.wait(k_ready.index(nxt), ((j + 1) // NUM_STAGES) & 1)
                s = warpgroup_mma(q_smem, _ws_tile(k_bufs, nxt).permute((1, 0)), s_zero, use_acc=False, is_async=True)
                mbarrier.wait(v_ready.index(stage), (j // NUM_STAGES) & 1)
                acc = warpgroup_mma(p_op, _ws_tile(v_bufs, stage), acc, is_async=True)
                s = warpgroup_mma_wait(1, deps=(s, ))  # S_{j+1} is done; P_j V_j may still run
                p, alpha, l_i, m_i = _ws_softmax_step(s, m_i, l_i, qk_scale, (j + 1) * BLOCK_N, lo_mask, offs_m,
                                                      offs_n, seqlen_q, seqlen_k, CAUSAL)
                acc = warpgroup_mma_wait(0, deps=(acc, ))
                mbarrier.arrive(kv_empty.index(stage), count=1)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                p_op = gl.convert_layout(p.to(q_smem.dtype), p_layout)
            last = n_tiles - 1
            mbarrier.wait(v_ready.index(last % NUM_STAGES), (last // NUM_STAGES) & 1)
            acc = warpgroup_mma(p_op, _ws_tile(v_bufs, last % NUM_STAGES), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=(acc, ))
            mbarrier.arrive(kv_empty.index(last % NUM_STAGES), count=1)
        # the Triton forwards' epilogue on the accumulator's row layout: out, lse; empty rows 0 / -inf
        out, lse = _fwd_epilogue(acc, gl.convert_layout(l_i, row_o), gl.convert_layout(m_i, row_o))
        rows = start_m + gl.arange(0, BLOCK_M, layout=row_o)
        gl.store(Lse + l_base + rows * stride_lm, lse, mask=rows < seqlen_q)
        cols = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, o_layout))
        offs = gl.expand_dims(rows, 1) * stride_om + gl.expand_dims(cols, 0)
        mask = (gl.expand_dims(rows, 1) < seqlen_q) & (gl.expand_dims(cols, 0) < BLOCK_D)
        gl.store(Out + o_base + offs, out.to(Out.dtype.element_ty), mask=mask)

    @gluon.jit
    def _attention_fwd_ws_kernel(
        desc_q, desc_k, desc_v, Out, Lse,
        qk_scale,  # softmax_scale * log2(e)
        stride_ob, stride_om, stride_oh,
        stride_lb, stride_lh, stride_lm,
        num_heads, group, seqlen_q, seqlen_k,
        CAUSAL: gl.constexpr, NUM_STAGES: gl.constexpr, num_warps: gl.constexpr,
    ):
        """desc_q / desc_k / desc_v: TMA descriptors over q [B, Sq, Hq * D] and k, v [B, Sk, Hk * D]
        with blocks [1, BLOCK_M or BLOCK_N, D] (rows past a sequence read as zeros)."""
        BLOCK_M: gl.constexpr = desc_q.block_type.shape[1]
        BLOCK_N: gl.constexpr = desc_k.block_type.shape[1]
        BLOCK_D: gl.constexpr = desc_q.block_type.shape[2]
        pid_m = gl.program_id(0)
        pid_bh = gl.program_id(1)
        off_b = pid_bh // num_heads
        off_h = pid_bh % num_heads
        start_m = pid_m * BLOCK_M
        lo_mask, hi = _causal_key_ranges(start_m, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
        n_tiles = gl.cdiv(hi, BLOCK_N)

        # shared memory: the query tile and a ring of K / V tiles, seen as 2-D [rows, D] by wgmma
        q_smem = gl.allocate_shared_memory(desc_q.dtype, desc_q.block_type.shape, desc_q.layout)
        k_bufs = gl.allocate_shared_memory(desc_k.dtype, [NUM_STAGES] + desc_k.block_type.shape, desc_k.layout)
        v_bufs = gl.allocate_shared_memory(desc_v.dtype, [NUM_STAGES] + desc_v.block_type.shape, desc_v.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(kv_empty.index(i), count=1)
        fence_async_shared()

        q2 = q_smem.reshape([BLOCK_M, BLOCK_D])
        o_base = off_b.to(gl.int64) * stride_ob + off_h.to(gl.int64) * stride_oh
        l_base = off_b.to(gl.int64) * stride_lb + off_h.to(gl.int64) * stride_lh
        # (argument tuples are written in the calls: a constexpr kept in a tuple variable becomes a tensor)
        if NEW_WS_API:
            gl.warp_specialize([
                (_ws_softmax_partition, (q2, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, Out, Lse, qk_scale,
                                         o_base, stride_om, l_base, stride_lm, start_m, seqlen_q, seqlen_k, lo_mask,
                                         n_tiles, CAUSAL)),
                (_ws_load_partition, (desc_q, desc_k, desc_v, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty,
                                      off_b, off_h * BLOCK_D, (off_h // group) * BLOCK_D, start_m, n_tiles)),
            ], [1], [24])
        else:
            gl.warp_specialize((q2, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, Out, Lse, qk_scale, o_base,
                                stride_om, l_base, stride_lm, start_m, seqlen_q, seqlen_k, lo_mask, n_tiles, CAUSAL),
                               _ws_softmax_partition,
                               (desc_q, desc_k, desc_v, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty,
                                off_b, off_h * BLOCK_D, (off_h // group) * BLOCK_D, start_m, n_tiles),
                               [_ws_load_partition], [1], [24])


# ---------------------------------------------------------------------------------------------------
# launcher

def strides_fit(t: torch.Tensor) -> bool:
    """Whether one [B, S, H, D] tensor is in the kernel's scope: fp16 / bf16, D of 64 or 128, (H, D)
    contiguous (the descriptors view it as [B, S, H * D]), 16-byte aligned base and strides."""
    return (t.dtype in (torch.float16, torch.bfloat16) and t.shape[-1] in WS_HEAD_DIMS and t.stride(3) == 1
            and t.stride(2) == t.shape[3] and t.data_ptr() % 16 == 0
            and all(st * t.element_size() % 16 == 0 for st in t.stride()[:2]))


def ws_fits(q4: torch.Tensor, k4: torch.Tensor, v4: torch.Tensor, interpreting: bool) -> bool:
    """Whether `attention_fwd_ws` takes these [B, S, H, D] inputs: Gluon present, compiled kernels, an
    sm_90 GPU (wgmma is Hopper-only), and each tensor in scope (`strides_fit`)."""
    if gluon is None or interpreting or not q4.is_cuda or torch.cuda.get_device_capability(q4.device)[0] != 9:
        return False
    return all(strides_fit(t) for t in (q4, k4, v4))


# torch dtype -> (Gluon dtype, kernel-signature name) of the tensors the Gluon kernels take by TMA:
# fp16 / bf16 operands, and the backward's fp32 dQ accumulator (TMA reductions)
_GL_DTYPES = {torch.float16: ("float16", "fp16"), torch.bfloat16: ("bfloat16", "bf16"),
              torch.float32: ("float32", "fp32")}


def _smem_layout(dtype: torch.dtype, rows: int, head_dim: int):
    """The (swizzled where the row is wide enough) shared-memory layout of a [1, rows, head_dim] TMA block
    (what wgmma reads)."""
    return gl.NVMMASharedLayout.get_default_for([1, rows, head_dim], getattr(gl, _GL_DTYPES[dtype][0]))


def descriptor_signature(dtype: torch.dtype, rows: int, head_dim: int) -> str:
    """The kernel-signature type of `ws_descriptor`'s result, for compiling without a GPU."""
    return f"tensordesc<{_GL_DTYPES[dtype][1]}[1,{rows},{head_dim}],{_smem_layout(dtype, rows, head_dim)!r}>"


def ws_descriptor(t: torch.Tensor, rows: int) -> "GluonTensorDescriptor":
    """[B, S, H, D] with (H, D) contiguous -> a descriptor over the [B, S, H * D] view, blocks [1, rows, D]."""
    batch, seqlen, heads, head_dim = t.shape
    view = t.as_strided((batch, seqlen, heads * head_dim), (t.stride(0), t.stride(1), 1))
    return GluonTensorDescriptor.from_tensor(view, [1, rows, head_dim], _smem_layout(t.dtype, rows, head_dim))


def attention_fwd_ws(q4, k4, v4, out4, lse, causal: bool, qk_scale: float, BLOCK_M: int = 128, BLOCK_N: int = 128,
                     NUM_STAGES: int = 2) -> None:
    """Fill out4 [B, Sq, Hq, D] and lse [B, Hq, Sq] (fp32) from q4 [B, Sq, Hq, D], k4 / v4 [B, Sk, Hk, D]
    (inputs must pass `ws_fits`). BLOCK_M is split between the two warpgroups (a multiple of 128 rows
    keeps each at 64); NUM_STAGES K/V tiles are in flight."""
    batch, seqlen_q, num_heads, head_dim = q4.shape
    desc_q = ws_descriptor(q4, BLOCK_M)
    desc_k, desc_v = (ws_descriptor(t, BLOCK_N) for t in (k4, v4))
    grid = (triton.cdiv(seqlen_q, BLOCK_M), batch * num_heads)
    _attention_fwd_ws_kernel[grid](
        desc_q, desc_k, desc_v, out4, lse, qk_scale, out4.stride(0), out4.stride(1), out4.stride(2), *lse.stride(),
        num_heads, num_heads // k4.shape[2], seqlen_q, k4.shape[1],
        CAUSAL=causal, NUM_STAGES=NUM_STAGES, num_warps=8)
