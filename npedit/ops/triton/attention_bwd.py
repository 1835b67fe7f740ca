"""FlashAttention-2 style backward in Triton: the attention matrix is recomputed tile by tile from
q, k and the saved log-sum-exp.

Three launches, no atomics (deterministic; the default, "split"):
1. `_attention_bwd_preprocess_kernel`: delta = rowsum(dO * O) (minus dLSE when the lse was used);
2. `_attention_bwd_dkdv_kernel`: one program per (key tile, kv head) walks the query tiles of every
   q head of its group (grouped-query heads reduce inside the program);
3. `_attention_bwd_dq_kernel`: one program per (query tile, q head) walks the key tiles.
With P = exp(S - lse) and dS = P * (dO V^T - delta): dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K.

The "fused" variant (`NPEDIT_ATTN_BWD=fused`, or FUSE_DQ in a tile override) skips launch 3: the
dK/dV program also forms scale dS K for each query tile it visits and adds it to an fp32 dQ
accumulator [.., Sq, Hq, D] with atomics (FlashAttention-2's backward). Per (key tile, query tile)
it issues 5 dots instead of the split's 7 (S and dP are not recomputed by a second kernel), for
BLOCK_M x D fp32 atomic adds and a summation order that changes from run to run.

The "tma" variant (`NPEDIT_ATTN_BWD=tma`, or TMA in a tile override) runs launches 2 and 3 as
`_attention_bwd_dkdv_tma_kernel` / `_attention_bwd_dq_tma_kernel`: the same math on the batch layout
with every [rows, D] tile loaded and stored through tensor descriptors (Hopper's TMA), so no tile
carries pointers or load masks; on sm_90 the dQ pass then fits wider tiles without spills
(kernels/NOTES.md v7).

The "ws" variant (`NPEDIT_ATTN_BWD=ws`, or WS in a dK/dV tile override) is the warp-specialised
Gluon kernel of attention_ws_bwd.py (sm_90; a TMA load warp, K and V in shared memory, dQ by
atomics, or by TMA reductions with DQ_TMA in the override, unless the override drops FUSE_DQ); the
split default runs wherever it does not apply.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from npedit.ops.backend import env_choice
from npedit.ops.triton import interpreting
from npedit.ops.triton.attention import (LOG2E, _causal_key_ranges, _load_head_tile, _query_tile_program, as_4d,
                                        dot_precision, head_tile_descriptor, padded_head_dim, store_dtype,
                                        tile_override, tma_loads_fit, upcast)


@triton.jit
def _attention_bwd_preprocess_kernel(
    Out, DO, Delta, CuQ,
    stride_ob, stride_om, stride_oh, stride_dob, stride_dom, stride_doh, stride_lb, stride_lh, stride_lm,
    num_heads, seqlen_q, head_dim,
    IS_VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_heads
    off_h = pid_bh % num_heads
    if IS_VARLEN:
        q_start = tl.load(CuQ + off_b)
        seqlen_q = tl.load(CuQ + off_b + 1) - q_start
        q_start = q_start.to(tl.int64)
    else:
        q_start = 0
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen_q:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < seqlen_q) & (offs_d[None, :] < head_dim)
    off_b64 = off_b.to(tl.int64)
    off_h64 = off_h.to(tl.int64)
    o = tl.load(Out + off_b64 * stride_ob + off_h64 * stride_oh + (q_start + offs_m[:, None]) * stride_om
                + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off_b64 * stride_dob + off_h64 * stride_doh + (q_start + offs_m[:, None]) * stride_dom
                 + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    tl.store(Delta + off_b64 * stride_lb + off_h64 * stride_lh + (q_start + offs_m) * stride_lm, delta,
             mask=offs_m < seqlen_q)


@triton.jit
def _bwd_row_stats(l_base, d_base, offs_m, row_ok, stride_lm):
    """lse (log2 units; +inf for rows past the sequence and rows that saw no key, so their P = 0) and
    delta [BM] of the query rows offs_m."""
    lse = tl.load(l_base + offs_m * stride_lm, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(d_base + offs_m * stride_lm, mask=row_ok, other=0.0)
    return lse, delta


@triton.jit
def _dkdv_tile_step(dk, dv, k, v, q, do, lse, delta, offs_n, offs_m, seqlen_q, seqlen_k, qk_scale, on_diagonal,
                    CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """One query tile's share of dK/dV: k, v [BN, BD]; q, do [BM, BD]; lse, delta [BM]; on_diagonal
    (scalar): the tile straddles the causal diagonal and needs the mask.
    -> dk, dv [BN, BD] fp32 (dk unscaled) and dS^T [BN, BM] fp32."""
    p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])  # [BN, BM]
    if CAUSAL:
        if on_diagonal:  # key n visible to query m iff n <= m + (Sk - Sq)
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + (seqlen_k - seqlen_q), p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # [BN, BM]
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv, ds_t


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, d_base, dq_base, stride_qm, stride_dom, stride_lm,
                         stride_dqm, offs_n, offs_m0, offs_d, mask_d, lo, mask_hi, seqlen_q, seqlen_k, qk_scale,
                         sm_scale, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                         FUSE_DQ: tl.constexpr, BLOCK_M: tl.constexpr):
    # k, v [BN, BD]; dk, dv [BN, BD] fp32; walks query tiles [lo, Sq), masking those before mask_hi
    # (causal). One loop, not a masked and an unmasked one: two inlined copies of this body cost
    # 300-700 more spilled bytes per thread at hd128 on sm_90 (kernels/NOTES.md v7). FUSE_DQ: also
    # adds sm_scale * dS K [BM, BD] of each query tile to the fp32 dQ accumulator at dq_base (atomics).
    for start_m in range(lo, seqlen_q, BLOCK_M):
        offs_m = start_m + offs_m0
        row_ok = offs_m < seqlen_q
        mask = row_ok[:, None] & mask_d[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse, delta = _bwd_row_stats(l_base, d_base, offs_m, row_ok, stride_lm)
        dk, dv, ds_t = _dkdv_tile_step(dk, dv, k, v, q, do, lse, delta, offs_n, offs_m, seqlen_q, seqlen_k, qk_scale,
                                       start_m < mask_hi, CAUSAL, PRECISION)
        if FUSE_DQ:  # padded keys (n >= Sk) were loaded as 0: their dS rows add nothing here
            dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=PRECISION) * sm_scale  # [BM, BD]
            tl.atomic_add(dq_base + offs_m[:, None] * stride_dqm + offs_d[None, :], dq, mask=mask, sem="relaxed")
    return dk, dv


@triton.jit
def _causal_query_ranges(start_n, seqlen_q, seqlen_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """(lo, mask_hi) for the key tile at start_n: query tiles before lo see none of its keys, tiles
    [lo, mask_hi) straddle the causal diagonal (masked), tiles from mask_hi on see every key of the
    tile; non-causal: (0, 0)."""
    if CAUSAL:
        shift = seqlen_k - seqlen_q
        lo = (tl.maximum(start_n - shift, 0) // BLOCK_M) * BLOCK_M
        mask_hi = tl.maximum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M, lo)
    else:
        lo = 0
        mask_hi = 0
    return lo, mask_hi


@triton.jit
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, DQAcc, CuQ, CuK,
    qk_scale, sm_scale,
    stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_doh, stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
    stride_dqb, stride_dqm, stride_dqh, stride_lb, stride_lh, stride_lm,
    num_kv_heads, group, seqlen_q, seqlen_k, head_dim,
    CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    FUSE_DQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # DQAcc: fp32 [.., Sq, Hq, D], zeroed, read only when FUSE_DQ
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_kv_heads
    off_hk = pid_bh % num_kv_heads
    if IS_VARLEN:
        q_start = tl.load(CuQ + off_b)
        seqlen_q = tl.load(CuQ + off_b + 1) - q_start
        k_start = tl.load(CuK + off_b)
        seqlen_k = tl.load(CuK + off_b + 1) - k_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
    else:
        q_start = 0
        k_start = 0
    start_n = pid_n * BLOCK_N
    if start_n >= seqlen_k:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    kv_mask = (offs_n[:, None] < seqlen_k) & mask_d[None, :]
    off_b64 = off_b.to(tl.int64)
    off_hk64 = off_hk.to(tl.int64)
    # sequence starts go into the scalar base pointers, so tile offsets stay int32
    k_base = K + off_b64 * stride_kb + off_hk64 * stride_kh + k_start * stride_kn
    v_base = V + off_b64 * stride_vb + off_hk64 * stride_vh + k_start * stride_vn
    k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Padded keys (n >= Sk) need no mask: their rows of dK/dV are never stored.
    lo, mask_hi = _causal_query_ranges(start_n, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    for g in range(0, group):
        off_h64 = (off_hk * group + g).to(tl.int64)
        q_base = Q + off_b64 * stride_qb + off_h64 * stride_qh + q_start * stride_qm
        do_base = DO + off_b64 * stride_dob + off_h64 * stride_doh + q_start * stride_dom
        l_base = Lse + off_b64 * stride_lb + off_h64 * stride_lh + q_start * stride_lm
        d_base = Delta + off_b64 * stride_lb + off_h64 * stride_lh + q_start * stride_lm
        dq_base = DQAcc + off_b64 * stride_dqb + off_h64 * stride_dqh + q_start * stride_dqm
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, d_base, dq_base, stride_qm, stride_dom,
                                      stride_lm, stride_dqm, offs_n, offs_m0, offs_d, mask_d, lo, mask_hi,
                                      seqlen_q, seqlen_k, qk_scale, sm_scale, CAUSAL, UPCAST, PRECISION, FUSE_DQ,
                                      BLOCK_M)
    dk = dk * sm_scale
    dk_base = DK + off_b64 * stride_dkb + off_hk64 * stride_dkh + k_start * stride_dkn
    dv_base = DV + off_b64 * stride_dvb + off_hk64 * stride_dvh + k_start * stride_dvn
    tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_base + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_tile_step(dq, q, do, lse, delta, k, v, offs_m, offs_n, seqlen_q, seqlen_k, qk_scale,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile's share of dQ: q, do [BM, BD]; lse (log2 units), delta [BM]; k, v [BN, BD] (keys
    past the sequence read as 0). -> dq [BM, BD] fp32, unscaled."""
    p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])  # [BM, BN]
    if MASKED:  # padded keys would give P = exp(-lse) != 0 here
        valid = offs_n[None, :] < seqlen_k
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + (seqlen_k - seqlen_q))
        p = tl.where(valid, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n0, offs_d,
                       mask_d, lo, hi, seqlen_q, seqlen_k, qk_scale,
                       MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    # q, do [BM, BD]; lse (log2 units), delta [BM]; dq [BM, BD] fp32; walks key tiles [lo, hi)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kv_mask = (offs_n[:, None] < seqlen_k) & mask_d[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        dq = _dq_tile_step(dq, q, do, lse, delta, k, v, offs_m, offs_n, seqlen_q, seqlen_k, qk_scale,
                           MASKED, CAUSAL, PRECISION)
    return dq


@triton.jit
def _attention_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, CuQ, CuK,
    qk_scale, sm_scale,
    stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_doh, stride_dqb, stride_dqm, stride_dqh,
    stride_lb, stride_lh, stride_lm,
    num_heads, group, seqlen_q, seqlen_k, head_dim,
    CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    off_b, off_h, off_hk, start_m = _query_tile_program(num_heads, group, BLOCK_M)
    if IS_VARLEN:
        q_start = tl.load(CuQ + off_b)
        seqlen_q = tl.load(CuQ + off_b + 1) - q_start
        k_start = tl.load(CuK + off_b)
        seqlen_k = tl.load(CuK + off_b + 1) - k_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
    else:
        q_start = 0
        k_start = 0
    if start_m >= seqlen_q:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    row_ok = offs_m < seqlen_q
    q_mask = row_ok[:, None] & mask_d[None, :]
    off_b64 = off_b.to(tl.int64)
    off_h64 = off_h.to(tl.int64)
    # sequence starts go into the scalar base pointers, so tile offsets stay int32
    q_base = Q + off_b64 * stride_qb + off_h64 * stride_qh + q_start * stride_qm
    do_base = DO + off_b64 * stride_dob + off_h64 * stride_doh + q_start * stride_dom
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    l_off = off_b64 * stride_lb + off_h64 * stride_lh + q_start * stride_lm
    lse, delta = _bwd_row_stats(Lse + l_off, Delta + l_off, offs_m, row_ok, stride_lm)
    k_base = K + off_b64 * stride_kb + off_hk.to(tl.int64) * stride_kh + k_start * stride_kn
    v_base = V + off_b64 * stride_vb + off_hk.to(tl.int64) * stride_vh + k_start * stride_vn
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo_mask, hi = _causal_key_ranges(start_m, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n0, offs_d,
                            mask_d, 0, lo_mask, seqlen_q, seqlen_k, qk_scale, False, CAUSAL, UPCAST, PRECISION,
                            BLOCK_N)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n0, offs_d,
                            mask_d, lo_mask, hi, seqlen_q, seqlen_k, qk_scale, True, CAUSAL, UPCAST, PRECISION,
                            BLOCK_N)
    dq = dq * sm_scale
    dq_base = DQ + off_b64 * stride_dqb + off_h64 * stride_dqh + q_start * stride_dqm
    tl.store(dq_base + offs_m[:, None] * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _key_tile_program(num_kv_heads, BLOCK_N: tl.constexpr):
    """This program's key tile, grid (key tiles, B * Hk): -> (off_b, off_hk, start_n)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    return pid_bh // num_kv_heads, pid_bh % num_kv_heads, pid_n * BLOCK_N


@triton.jit
def _attn_bwd_dkdv_tma_tile(dk, dv, k, v, desc_q, desc_do, l_base, d_base, off_b, off_h, start_m, offs_m0, offs_n,
                            stride_lm, seqlen_q, seqlen_k, qk_scale, on_diagonal, CAUSAL: tl.constexpr,
                            UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    # the query tile at start_m of q head off_h through the descriptors, then its dK/dV share
    q = _load_head_tile(desc_q, off_b, start_m, off_h, UPCAST, BLOCK_M, BLOCK_D)
    do = _load_head_tile(desc_do, off_b, start_m, off_h, UPCAST, BLOCK_M, BLOCK_D)
    offs_m = start_m + offs_m0
    lse, delta = _bwd_row_stats(l_base, d_base, offs_m, offs_m < seqlen_q, stride_lm)
    dk, dv, _ = _dkdv_tile_step(dk, dv, k, v, q, do, lse, delta, offs_n, offs_m, seqlen_q, seqlen_k, qk_scale,
                                on_diagonal, CAUSAL, PRECISION)
    return dk, dv


@triton.jit
def _attention_bwd_dkdv_tma_kernel(
    desc_q, desc_k, desc_v, desc_do, desc_dk, desc_dv, Lse, Delta,
    qk_scale, sm_scale,
    stride_lb, stride_lh, stride_lm,
    num_kv_heads, group, seqlen_q, seqlen_k,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """`_attention_bwd_dkdv_kernel` (split, batch layout) with tensor-descriptor (TMA) tile loads and
    stores: descriptors over q/do [B, Sq, Hq, D] with blocks [1, BLOCK_M, 1, BLOCK_D] and over k/v/dk/dv
    [B, Sk, Hk, D] with blocks [1, BLOCK_N, 1, BLOCK_D]; rows past a sequence and padded head-dim
    columns read as 0 and are not written, so no tile carries a pointer or a load mask."""
    off_b, off_hk, start_n = _key_tile_program(num_kv_heads, BLOCK_N)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    k = _load_head_tile(desc_k, off_b, start_n, off_hk, UPCAST, BLOCK_N, BLOCK_D)
    v = _load_head_tile(desc_v, off_b, start_n, off_hk, UPCAST, BLOCK_N, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, mask_hi = _causal_query_ranges(start_n, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    for g in range(0, group):
        off_h = off_hk * group + g
        l_off = off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
        for start_m in range(lo, seqlen_q, BLOCK_M):  # one loop, as in `_attn_bwd_dkdv_inner`
            dk, dv = _attn_bwd_dkdv_tma_tile(dk, dv, k, v, desc_q, desc_do, Lse + l_off, Delta + l_off, off_b, off_h,
                                             start_m, offs_m0, offs_n, stride_lm, seqlen_q, seqlen_k, qk_scale,
                                             start_m < mask_hi, CAUSAL, UPCAST, PRECISION, BLOCK_M, BLOCK_D)
    dk = dk * sm_scale
    desc_dk.store([off_b, start_n, off_hk, 0], dk.to(desc_dk.dtype).reshape(1, BLOCK_N, 1, BLOCK_D))
    desc_dv.store([off_b, start_n, off_hk, 0], dv.to(desc_dv.dtype).reshape(1, BLOCK_N, 1, BLOCK_D))


@triton.jit
def _attn_bwd_dq_tma_tile(dq, q, do, lse, delta, desc_k, desc_v, off_b, off_hk, start_n, offs_m, offs_n0,
                          seqlen_q, seqlen_k, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                          UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    # the key tile at start_n of kv head off_hk through the descriptors, then its dQ share
    k = _load_head_tile(desc_k, off_b, start_n, off_hk, UPCAST, BLOCK_N, BLOCK_D)
    v = _load_head_tile(desc_v, off_b, start_n, off_hk, UPCAST, BLOCK_N, BLOCK_D)
    return _dq_tile_step(dq, q, do, lse, delta, k, v, offs_m, start_n + offs_n0, seqlen_q, seqlen_k, qk_scale,
                         MASKED, CAUSAL, PRECISION)


@triton.jit
def _attention_bwd_dq_tma_kernel(
    desc_q, desc_k, desc_v, desc_do, desc_dq, Lse, Delta,
    qk_scale, sm_scale,
    stride_lb, stride_lh, stride_lm,
    num_heads, group, seqlen_q, seqlen_k,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """`_attention_bwd_dq_kernel` (batch layout) with tensor-descriptor loads and store (blocks as in
    `_attention_bwd_dkdv_tma_kernel`; dq's descriptor like q's)."""
    off_b, off_h, off_hk, start_m = _query_tile_program(num_heads, group, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    q = _load_head_tile(desc_q, off_b, start_m, off_h, UPCAST, BLOCK_M, BLOCK_D)
    do = _load_head_tile(desc_do, off_b, start_m, off_h, UPCAST, BLOCK_M, BLOCK_D)
    l_off = off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
    lse, delta = _bwd_row_stats(Lse + l_off, Delta + l_off, offs_m, offs_m < seqlen_q, stride_lm)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo_mask, hi = _causal_key_ranges(start_m, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(0, lo_mask, BLOCK_N):
        dq = _attn_bwd_dq_tma_tile(dq, q, do, lse, delta, desc_k, desc_v, off_b, off_hk, start_n, offs_m, offs_n0,
                                   seqlen_q, seqlen_k, qk_scale, False, CAUSAL, UPCAST, PRECISION, BLOCK_N, BLOCK_D)
    for start_n in range(lo_mask, hi, BLOCK_N):  # the diagonal and the tail: masked
        dq = _attn_bwd_dq_tma_tile(dq, q, do, lse, delta, desc_k, desc_v, off_b, off_hk, start_n, offs_m, offs_n0,
                                   seqlen_q, seqlen_k, qk_scale, True, CAUSAL, UPCAST, PRECISION, BLOCK_N, BLOCK_D)
    dq = dq * sm_scale
    desc_dq.store([off_b, start_m, off_h, 0], dq.to(desc_dq.dtype).reshape(1, BLOCK_M, 1, BLOCK_D))


def preprocess_block_m(head_dim_pad: int) -> int:
    """Rows per delta program: two [BM, BD] fp32 tiles stay in registers (hd256 at BM 64 spills)."""
    return 16 if interpreting() else max(16, min(64, 8192 // head_dim_pad))


BWD_VARIANTS = ("split", "fused", "tma", "ws")


def bwd_variant() -> str:
    """`NPEDIT_ATTN_BWD`: "split" (default; three launches, deterministic), "fused" (dQ by atomics
    inside the dK/dV pass; see the module docstring), "tma" (the split passes with tensor-descriptor
    loads and stores, batch layout, head dims up to 128; varlen inputs, head dims above 128, strides
    TMA cannot take and GPUs before sm_90 keep the pointer kernels) or "ws" (the warp-specialised Gluon
    backward of attention_ws_bwd.py, dQ by atomics, on sm_90 for fp16 / bf16 at head dim 64 or 128
    in the batch layout; "split" elsewhere)."""
    return env_choice("NPEDIT_ATTN_BWD", BWD_VARIANTS)


# the Gluon backward's default tiles per padded head dim (attention_ws_bwd.py: BLOCK_M query rows per
# step, BLOCK_N = 16 keys per warp of its compute partition, num_stages = depth of the Q / dO ring):
# FlashAttention-3's hd128 backward shape, not yet timed
WS_BWD_TILES = {64: dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2),
                128: dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2)}


def bwd_configs(head_dim_pad: int, dtype: torch.dtype = torch.bfloat16) -> tuple[dict, dict]:
    """(dK/dV config, dQ config): the dK/dV pass holds a key tile and walks query tiles, the dQ pass
    the reverse. GPU values: the largest tiles with no or few spills on sm_90 (compile_check.py);
    attention.TILE_OVERRIDES["dkdv" / "dq"] replaces them for tile sweeps. FUSE_DQ in the dK/dV
    config (from `bwd_variant()` or the override) means the dQ pass is not launched; TMA in either
    config runs that pass's tensor-descriptor kernel where the inputs allow it; WS in the dK/dV config
    runs the Gluon backward (its dQ by atomics with FUSE_DQ, by TMA reductions with FUSE_DQ and DQ_TMA,
    else by the dQ pass) where the inputs allow it, the split default elsewhere."""
    variant = bwd_variant()
    fused, tma = variant == "fused", variant == "tma"
    kv, q = _default_bwd_configs(head_dim_pad, dtype, fused)
    kv = dict(kv, FUSE_DQ=fused, TMA=tma)
    if variant == "ws" and head_dim_pad in WS_BWD_TILES and dtype != torch.float32 and not interpreting():
        kv = dict(WS_BWD_TILES[head_dim_pad], WS=True, FUSE_DQ=True)
    kv = tile_override("dkdv", head_dim_pad, dtype) or kv
    q = tile_override("dq", head_dim_pad, dtype) or dict(q, TMA=tma)
    for key in ("FUSE_DQ", "TMA", "WS", "DQ_TMA"):
        kv.setdefault(key, False)
    q.setdefault("TMA", False)
    return kv, q


def _default_bwd_configs(head_dim_pad: int, dtype: torch.dtype, fused: bool = False) -> tuple[dict, dict]:
    def cfg(m, n, warps, stages):
        return dict(BLOCK_M=m, BLOCK_N=n, num_warps=warps, num_stages=stages)
    if interpreting():
        return cfg(16, 16, 4, 1), cfg(16, 16, 4, 1)
    if fused and dtype != torch.float32 and 64 < head_dim_pad <= 128:
        # the dQ tile [BM, BD] fp32 joins dK/dV's registers: at 4 warps the split's tile spills 216 B
        # on sm_90, at 8 warps 8 B (kernels/NOTES.md v5); not timed yet
        return cfg(32, 64, 8, 3), cfg(64, 32, 4, 3)
    if dtype == torch.float32:
        if head_dim_pad <= 64:  # dK/dV (64, 32, 8, 1) compiled to 64 registers and 1.6 KB of spills under
            # Triton 3.6 (the GPU image's; 3.7: none); this tile spills at most 40-48 B under either
            return cfg(32, 32, 8, 1), cfg(64, 32, 8, 1)
        if head_dim_pad <= 128:
            return cfg(32, 16, 4, 1), cfg(32, 16, 4, 1)
        return cfg(16, 16, 4, 1), cfg(16, 16, 4, 1)
    if head_dim_pad <= 64:
        return cfg(32, 128, 8, 2), cfg(128, 32, 8, 2)
    if head_dim_pad <= 128:   # H200 sweep (kernels/NOTES.md): 1.9x / 1.4x faster than (16,64,8,3) / (64,32,8,3)
        return cfg(32, 64, 4, 3), cfg(64, 32, 4, 3)
    return cfg(16, 32, 8, 1), cfg(32, 32, 8, 1)


def _strides3(x: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, token, head) strides of a [B, S, H, D] view (batch stride 0 for varlen)."""
    return (0 if varlen else x.stride(0)), x.stride(1), x.stride(2)


def attention_bwd(dout, q, k, v, out, lse, causal: bool, softmax_scale: float, dlse=None,
                  cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: int = 0, max_seqlen_k: int = 0):
    """Launch the backward; shapes as in `attention_fwd` (lse [B, Hq, Sq] or varlen [Hq, Tq]).
    dlse (optional, lse's shape): gradient reaching the returned lse. -> dq, dk, dv like q, k, v."""
    varlen = cu_seqlens_q is not None
    dout, q, k, v, out = (t if t.stride(-1) == 1 else t.contiguous() for t in (dout, q, k, v, out))
    q4, k4, v4, o4, do4 = (as_4d(t) for t in (q, k, v, out, dout))
    batch, seqlen_q, num_heads, head_dim = q4.shape
    seqlen_k, num_kv_heads = k4.shape[1], k4.shape[2]
    block_d = padded_head_dim(head_dim)
    kv_cfg, q_cfg = bwd_configs(block_d, q.dtype)
    kv_tma, q_tma, fused, ws = kv_cfg.pop("TMA"), q_cfg.pop("TMA"), kv_cfg.pop("FUSE_DQ"), kv_cfg.pop("WS")
    dq_tma = kv_cfg.pop("DQ_TMA") and ws and fused  # the Gluon backward's dQ by TMA reductions
    if ws:
        from npedit.ops.triton.attention_ws_bwd import attention_bwd_ws, row_stats_buffers, ws_bwd_fits
        # out of the Gluon kernel's scope (its accumulators start at -lse / scale: a positive scale)
        if varlen or not softmax_scale > 0 or not ws_bwd_fits(q4, k4, v4, do4, interpreting()):
            kv_cfg, fused, ws = _default_bwd_configs(block_d, q.dtype)[0], False, False
    if fused:  # the dK/dV pass accumulates dQ here in fp32 (atomics or TMA reductions), rounded once at the end
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    else:
        dq = torch.empty(q.shape, dtype=store_dtype(q.dtype), device=q.device)
    dk = torch.empty(k.shape, dtype=store_dtype(k.dtype), device=k.device)
    dv = torch.empty(v.shape, dtype=store_dtype(v.dtype), device=v.device)
    dq4, dk4, dv4 = as_4d(dq), as_4d(dk), as_4d(dv)
    lse = lse.contiguous()
    if ws:  # the Gluon kernel reads lse and delta by TMA: rows on 16-byte boundaries
        lse, delta = row_stats_buffers(lse)
    else:
        delta = torch.empty_like(lse)
    if varlen:
        num_seqs, rows_q, rows_k = cu_seqlens_q.numel() - 1, max_seqlen_q, max_seqlen_k
        l_strides = (0, lse.stride(0), lse.stride(1))
        cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
    else:
        num_seqs, rows_q, rows_k = batch, seqlen_q, seqlen_k
        l_strides = lse.stride()
        cu_q, cu_k = q, q  # unused
    if num_seqs == 0 or rows_q == 0 or rows_k == 0:
        return dq.zero_().to(q.dtype), dk.zero_().to(k.dtype), dv.zero_().to(v.dtype)
    common = dict(IS_VARLEN=varlen, BLOCK_D=block_d)
    pre_m = preprocess_block_m(block_d)
    _attention_bwd_preprocess_kernel[(triton.cdiv(rows_q, pre_m), num_seqs * num_heads)](
        o4, do4, delta, cu_q, *_strides3(o4, varlen), *_strides3(do4, varlen), *l_strides,
        num_heads, seqlen_q, head_dim, BLOCK_M=pre_m, **common)
    if dlse is not None:
        delta -= dlse.float()
    up, prec = upcast(q.dtype), dot_precision(q.dtype)
    args = (q4, k4, v4, do4, lse, delta)
    strides = (*_strides3(q4, varlen), *_strides3(k4, varlen), *_strides3(v4, varlen), *_strides3(do4, varlen))
    qk_scale = softmax_scale * LOG2E
    group = num_heads // num_kv_heads
    # (hd256 stays on the pointer kernels: its descriptor tiles spill 570-1330 B per thread on sm_90)
    tma_fits = (kv_tma or q_tma) and not varlen and block_d <= 128 and tma_loads_fit(q4, k4, v4, do4, dq4, dk4, dv4)
    kv_grid = (triton.cdiv(rows_k, kv_cfg["BLOCK_N"]), num_seqs * num_kv_heads)
    if ws:
        attention_bwd_ws(q4, k4, v4, do4, lse, delta, dq4 if fused else None, dk4, dv4, causal, qk_scale,
                         softmax_scale, dq_tma=dq_tma, **kv_cfg)
    elif kv_tma and tma_fits and not fused:
        bm, bn = kv_cfg["BLOCK_M"], kv_cfg["BLOCK_N"]
        tiles = ((q4, bm), (k4, bn), (v4, bn), (do4, bm), (dk4, bn), (dv4, bn))
        descs = [head_tile_descriptor(t, rows, block_d) for t, rows in tiles]
        _attention_bwd_dkdv_tma_kernel[kv_grid](
            *descs, lse, delta, qk_scale, softmax_scale, *l_strides, num_kv_heads, group, seqlen_q, seqlen_k,
            CAUSAL=causal, UPCAST=up, PRECISION=prec, BLOCK_D=block_d, **kv_cfg)
    else:
        _attention_bwd_dkdv_kernel[kv_grid](
            *args, dk4, dv4, dq4, cu_q, cu_k, qk_scale, softmax_scale,
            *strides, *_strides3(dk4, varlen), *_strides3(dv4, varlen), *_strides3(dq4, varlen), *l_strides,
            num_kv_heads, group, seqlen_q, seqlen_k, head_dim,
            CAUSAL=causal, UPCAST=up, PRECISION=prec, FUSE_DQ=fused, **common, **kv_cfg)
    if fused:
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    q_grid = (triton.cdiv(rows_q, q_cfg["BLOCK_M"]), num_seqs * num_heads)
    if q_tma and tma_fits:
        bm, bn = q_cfg["BLOCK_M"], q_cfg["BLOCK_N"]
        tiles = ((q4, bm), (k4, bn), (v4, bn), (do4, bm), (dq4, bm))
        descs = [head_tile_descriptor(t, rows, block_d) for t, rows in tiles]
        _attention_bwd_dq_tma_kernel[q_grid](
            *descs, lse, delta, qk_scale, softmax_scale, *l_strides, num_heads, group, seqlen_q, seqlen_k,
            CAUSAL=causal, UPCAST=up, PRECISION=prec, BLOCK_D=block_d, **q_cfg)
    else:
        _attention_bwd_dq_kernel[q_grid](
            *args, dq4, cu_q, cu_k, qk_scale, softmax_scale,
            *strides, *_strides3(dq4, varlen), *l_strides,
            num_heads, group, seqlen_q, seqlen_k, head_dim,
            CAUSAL=causal, UPCAST=up, PRECISION=prec, **common, **q_cfg)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
