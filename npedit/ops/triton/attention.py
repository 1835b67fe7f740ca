"""FlashAttention-2 style forward in Triton: tiles of queries, an online softmax over key tiles,
the log-sum-exp saved instead of the attention matrix.

One kernel serves both layouts: [B, S, H, D] (batch) and packed [T, H, D] with cumulative
sequence lengths (varlen, treated as a batch of one with per-segment starts). Grouped-query heads
read kv head `h // (Hq // Hk)`. Head dims that are not a power of two are padded to the next one and
masked; sequence tails are masked. Causal masking is bottom-right aligned (flash-attn >= 2.1):
query i of a segment sees key j iff j <= i + (Sk - Sq); a query that sees no key gets out = 0 and
lse = -inf.

Numerics: scores and the softmax are fp32; on the GPU the two matmuls take fp16/bf16 operands with
fp32 accumulation (P is rounded to the input dtype before P @ V, as in FlashAttention), fp32 inputs
use IEEE fp32 dots. Under the interpreter bf16 loads are upcast to fp32 before any arithmetic.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the TMA variant falls back to the pointer kernel
    TensorDescriptor = None

from npedit.ops.backend import env_choice
from npedit.ops.triton import interpreting

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


@triton.jit
def _online_softmax_step(acc, l_i, m_i, s, v, cols, offs_m, seqlen_q, seqlen_k,
                         MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    # one key tile: s [BM, BN] scaled scores (log2 units) of keys `cols` [BN], v [BN, BD];
    # acc [BM, BD] fp32, l_i / m_i [BM] fp32 updated FlashAttention-2 style
    if MASKED:
        valid = cols[None, :] < seqlen_k
        if CAUSAL:
            valid = valid & (cols[None, :] <= offs_m[:, None] + (seqlen_k - seqlen_q))
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                    lo, hi, seqlen_q, seqlen_k, qk_scale,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    # acc [BM, BD] fp32, l_i/m_i [BM] fp32 (m in log2 units of the scaled scores)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_mask = (cols[:, None] < seqlen_k) & mask_d[None, :]
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        if q.dtype == tl.float32:  # q was upcast (interpreter bf16) or is fp32: keep k, v alike
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BM, BN]
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, s, v, cols, offs_m, seqlen_q, seqlen_k,
                                             MASKED, CAUSAL, PRECISION)
    return acc, l_i, m_i


@triton.jit
def _causal_key_ranges(start_m, seqlen_q, seqlen_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """(lo_mask, hi): keys [0, lo_mask) are visible to every row of the query tile at start_m and
    need no mask; [lo_mask, hi) need it (the causal diagonal, the sequence tail)."""
    full_k = (seqlen_k // BLOCK_N) * BLOCK_N
    if CAUSAL:
        shift = seqlen_k - seqlen_q
        hi = tl.maximum(tl.minimum(seqlen_k, start_m + BLOCK_M + shift), 0)
        lo_mask = tl.minimum((tl.maximum(start_m + shift + 1, 0) // BLOCK_N) * BLOCK_N, full_k)
    else:
        hi = seqlen_k
        lo_mask = full_k
    return lo_mask, hi


@triton.jit
def _query_tile_program(num_heads, group, BLOCK_M: tl.constexpr):
    """This program's query tile, grid (query tiles, B * Hq): -> (off_b, off_h, off_hk, start_m)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_heads
    off_h = pid_bh % num_heads
    return off_b, off_h, off_h // group, pid_m * BLOCK_M


@triton.jit
def _fwd_start(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The online softmax's state before the first key: acc [BM, BD] = 0, l_i [BM] = 0, m_i [BM] = -inf."""
    return (tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), tl.zeros([BLOCK_M], dtype=tl.float32),
            tl.full([BLOCK_M], float("-inf"), dtype=tl.float32))


@triton.jit
def _fwd_epilogue(acc, l_i, m_i):
    """-> out [BM, BD] fp32, lse [BM] (natural log); rows that saw no key: out = 0, lse = -inf."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    return out, lse


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, Out, Lse, CuQ, CuK,
    qk_scale,  # softmax_scale * log2(e)
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_ob, stride_om, stride_oh,
    stride_lb, stride_lh, stride_lm,
    num_heads, group, seqlen_q, seqlen_k, head_dim,
    CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_heads
    off_h = pid_bh % num_heads
    off_hk = off_h // group
    if IS_VARLEN:  # segment off_b: rows cu[off_b]:cu[off_b + 1] of a batch of one
        q_start = tl.load(CuQ + off_b)
        seqlen_q = tl.load(CuQ + off_b + 1) - q_start
        k_start = tl.load(CuK + off_b)
        seqlen_k = tl.load(CuK + off_b + 1) - k_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
    else:
        q_start = 0
        k_start = 0
    start_m = pid_m * BLOCK_M  # (after the varlen loads: taking it from _query_tile_program costs 73 registers)
    if start_m >= seqlen_q:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    off_b64 = off_b.to(tl.int64)
    q_base = Q + off_b64 * stride_qb + off_h.to(tl.int64) * stride_qh + q_start * stride_qm
    k_base = K + off_b64 * stride_kb + off_hk.to(tl.int64) * stride_kh + k_start * stride_kn
    v_base = V + off_b64 * stride_vb + off_hk.to(tl.int64) * stride_vh + k_start * stride_vn
    q_mask = (offs_m[:, None] < seqlen_q) & mask_d[None, :]
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    acc, l_i, m_i = _fwd_start(BLOCK_M, BLOCK_D)
    lo_mask, hi = _causal_key_ranges(start_m, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n,
                                    offs_d, mask_d, 0, lo_mask, seqlen_q, seqlen_k, qk_scale,
                                    False, CAUSAL, PRECISION, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n,
                                    offs_d, mask_d, lo_mask, hi, seqlen_q, seqlen_k, qk_scale,
                                    True, CAUSAL, PRECISION, BLOCK_N)
    out, lse = _fwd_epilogue(acc, l_i, m_i)
    o_base = Out + off_b64 * stride_ob + off_h.to(tl.int64) * stride_oh + q_start * stride_om
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(Out.dtype.element_ty), mask=q_mask)
    l_base = Lse + off_b64 * stride_lb + off_h.to(tl.int64) * stride_lh + q_start * stride_lm
    tl.store(l_base + offs_m * stride_lm, lse, mask=offs_m < seqlen_q)


@triton.jit
def _load_head_tile(desc, off_b, start, off_h, UPCAST: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """[ROWS, BLOCK_D] tile of tokens start.. of head off_h through a `head_tile_descriptor` (rows past
    the sequence and columns past D read as 0); fp32 when UPCAST."""
    tile = desc.load([off_b, start, off_h, 0]).reshape(ROWS, BLOCK_D)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _attn_fwd_tma_tile(acc, l_i, m_i, q, desc_k, desc_v, off_b, off_hk, start_n, offs_n, offs_m, seqlen_q, seqlen_k,
                       qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # the key tile at start_n of kv head off_hk through the descriptors, then one softmax step
    k = _load_head_tile(desc_k, off_b, start_n, off_hk, UPCAST, BLOCK_N, BLOCK_D)
    v = _load_head_tile(desc_v, off_b, start_n, off_hk, UPCAST, BLOCK_N, BLOCK_D)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BM, BN]
    return _online_softmax_step(acc, l_i, m_i, s, v, start_n + offs_n, offs_m, seqlen_q, seqlen_k,
                                MASKED, CAUSAL, PRECISION)


@triton.jit
def _attention_fwd_tma_kernel(
    desc_q, desc_k, desc_v, desc_o, Lse,
    qk_scale,  # softmax_scale * log2(e)
    stride_lb, stride_lh, stride_lm,
    num_heads, group, seqlen_q, seqlen_k,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The batch forward with tensor-memory-accelerator loads (Hopper's TMA; plain loads elsewhere):
    descriptors over q/k/v/out [B, S, H, D] with blocks [1, rows, 1, BLOCK_D], out-of-range rows and
    padded head-dim columns read as 0 and are not written. Same math as `_attention_fwd_kernel`."""
    off_b, off_h, off_hk, start_m = _query_tile_program(num_heads, group, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q = _load_head_tile(desc_q, off_b, start_m, off_h, UPCAST, BLOCK_M, BLOCK_D)
    acc, l_i, m_i = _fwd_start(BLOCK_M, BLOCK_D)
    lo_mask, hi = _causal_key_ranges(start_m, seqlen_q, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in tl.range(0, lo_mask, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        acc, l_i, m_i = _attn_fwd_tma_tile(acc, l_i, m_i, q, desc_k, desc_v, off_b, off_hk, start_n, offs_n, offs_m,
                                           seqlen_q, seqlen_k, qk_scale, False, CAUSAL, UPCAST, PRECISION,
                                           BLOCK_N, BLOCK_D)
    for start_n in range(lo_mask, hi, BLOCK_N):  # the diagonal and the tail: masked
        acc, l_i, m_i = _attn_fwd_tma_tile(acc, l_i, m_i, q, desc_k, desc_v, off_b, off_hk, start_n, offs_n, offs_m,
                                           seqlen_q, seqlen_k, qk_scale, True, CAUSAL, UPCAST, PRECISION,
                                           BLOCK_N, BLOCK_D)
    out, lse = _fwd_epilogue(acc, l_i, m_i)
    desc_o.store([off_b, start_m, off_h, 0], out.to(desc_o.dtype).reshape(1, BLOCK_M, 1, BLOCK_D))
    l_base = Lse + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
    tl.store(l_base + offs_m * stride_lm, lse, mask=offs_m < seqlen_q)


# ---------------------------------------------------------------------------------------------------
# launcher helpers shared with the backward


def padded_head_dim(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 dots (tf32 would be ~1e-3 off the fp32 reference)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast(dtype: torch.dtype) -> bool:
    """Compute on fp32 copies of the loads: always for bf16 under the interpreter (its bf16
    arithmetic is wrong), never needed on the GPU where dots take bf16/fp16 with fp32 accumulate."""
    return interpreting() and dtype == torch.bfloat16


def store_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the buffers a kernel writes: the interpreter casts fp32 -> bf16 by truncation (the GPU
    rounds to nearest even), so under it bf16 results are written in fp32 and rounded by torch."""
    return torch.float32 if upcast(dtype) else dtype


# Tile sweeps (kernels/attention/validate_and_time.py) put configs here to time them:
# {"fwd": {...}, "dkdv": {...}, "dq": {...}} with BLOCK_M, BLOCK_N, num_warps, num_stages each (and
# the variant keys TMA / WARP_SPECIALIZE / FUSE_DQ); a present key replaces the launchers' choice for
# fp16/bf16 at padded head dim TILE_OVERRIDE_HEAD_DIM on the GPU path (never under the interpreter,
# never for other head dims, whose tiles would not fit the same way).
TILE_OVERRIDES: dict[str, dict] = {}
TILE_OVERRIDE_HEAD_DIM = 128


def tile_override(kind: str, head_dim_pad: int, dtype: torch.dtype) -> dict | None:
    if (kind in TILE_OVERRIDES and head_dim_pad == TILE_OVERRIDE_HEAD_DIM and dtype != torch.float32
            and not interpreting()):
        return dict(TILE_OVERRIDES[kind])
    return None


FWD_VARIANTS = ("pointer", "tma", "ws")


def fwd_variant() -> str:
    """`NPEDIT_ATTN_FWD`: "pointer" (default: masked pointer loads), "tma" (the batch layout through
    tensor descriptors, `_attention_fwd_tma_kernel`; varlen inputs, inputs whose strides TMA cannot
    take and GPUs before sm_90 keep the pointer kernel) or "ws" (the warp-specialised Gluon kernel of
    attention_ws.py on sm_90, fp16/bf16, head dim 64 or 128; the pointer kernel elsewhere)."""
    return env_choice("NPEDIT_ATTN_FWD", FWD_VARIANTS)


def fwd_config(head_dim_pad: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Block sizes and the variant (TMA: descriptor loads; WARP_SPECIALIZE: Triton's automatic warp
    specialisation of the TMA kernel's unmasked key loop, only through tile overrides; WS: the Gluon
    kernel, whose num_stages is the depth of its K/V ring and num_warps always 8). The
    interpreter uses small tiles so tests cross several tiles and tails. GPU configs are the largest
    tiles that compile for sm_90 without register spills in the common cases
    (kernels/compile_check.py; NOTES.md has the sweep); fp32 runs FMA dots in small tiles."""
    override = tile_override("fwd", head_dim_pad, dtype)
    if override is None:
        variant = fwd_variant()
        if variant == "ws" and head_dim_pad in WS_TILES and dtype != torch.float32 and not interpreting():
            override = dict(WS_TILES[head_dim_pad], WS=True)
        else:
            override = dict(_default_fwd_tiles(head_dim_pad, dtype), TMA=variant == "tma")
    for key in ("TMA", "WARP_SPECIALIZE", "WS"):
        override.setdefault(key, False)
    return override


# the Gluon kernel's default tiles per padded head dim (FlashAttention-3's hd64 / hd128 forward shapes)
WS_TILES = {64: dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
            128: dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2)}


def _default_fwd_tiles(head_dim_pad: int, dtype: torch.dtype) -> dict:
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        if head_dim_pad <= 64:
            return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=1)
        if head_dim_pad <= 128:
            return dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=1)
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if head_dim_pad <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    if head_dim_pad <= 128:   # H200 sweep (kernels/NOTES.md): ties (128, 64, 8, 3), the tile that was timed
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)


def tma_loads_fit(*tensors: torch.Tensor) -> bool:
    """Whether TMA descriptors can address these [B, S, H, D] tensors: 16-byte aligned base and
    strides, unit last stride, no broadcast (zero-stride) dims, and (on the GPU) a Hopper or newer card."""
    if TensorDescriptor is None:
        return False
    for t in tensors:
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * t.element_size() % 16 for st in t.stride()[:-1]):
            return False
        if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
            return False
    if interpreting():
        return True
    return tensors[0].is_cuda and torch.cuda.get_device_capability(tensors[0].device)[0] >= 9


def head_tile_descriptor(t: torch.Tensor, rows: int, block_d: int) -> "TensorDescriptor":
    """A TMA descriptor over [B, S, H, D] whose blocks [1, rows, 1, block_d] are `rows` tokens of one
    head; rows past S and columns past D read as 0 and are not written."""
    return TensorDescriptor.from_tensor(t, [1, rows, 1, block_d])


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def check_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take these inputs, or None when they can."""
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} (fp16, bf16, fp32 supported)"
    if not (q.dtype == k.dtype == v.dtype):
        return f"mixed dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}"
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        return f"head dims differ (q {q.shape[-1]}, k {k.shape[-1]}, v {v.shape[-1]})"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    return None


def as_4d(x: torch.Tensor) -> torch.Tensor:
    """[T, H, D] (varlen) -> [1, T, H, D] view; [B, S, H, D] unchanged."""
    return x.unsqueeze(0) if x.dim() == 3 else x


def attention_fwd(q, k, v, causal: bool, softmax_scale: float, cu_seqlens_q=None, cu_seqlens_k=None,
                  max_seqlen_q: int = 0):
    """Launch the forward. Batch: q [B, Sq, Hq, D], k/v [B, Sk, Hk, D] -> out [B, Sq, Hq, D],
    lse [B, Hq, Sq] fp32. Varlen: q [Tq, Hq, D], k/v [Tk, Hk, D], cu_seqlens int32 [N + 1] ->
    out [Tq, Hq, D], lse [Hq, Tq] fp32."""
    varlen = cu_seqlens_q is not None
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    q4, k4, v4 = as_4d(q), as_4d(k), as_4d(v)
    batch, seqlen_q, num_heads, head_dim = q4.shape
    seqlen_k, num_kv_heads = k4.shape[1], k4.shape[2]
    out = torch.empty(q.shape, dtype=store_dtype(q.dtype), device=q.device)
    o4 = as_4d(out)
    if varlen:
        num_seqs = cu_seqlens_q.numel() - 1
        lse = torch.empty(num_heads, seqlen_q, dtype=torch.float32, device=q.device)
        lse_strides = (0, lse.stride(0), lse.stride(1))
        rows, cu_q, cu_k = max_seqlen_q, cu_seqlens_q, cu_seqlens_k
    else:
        num_seqs = batch
        lse = torch.empty(batch, num_heads, seqlen_q, dtype=torch.float32, device=q.device)
        lse_strides = lse.stride()
        rows, cu_q, cu_k = seqlen_q, q, q  # cu pointers unused
    if rows == 0 or num_seqs == 0:
        lse.fill_(float("-inf"))
        return out.zero_().to(q.dtype), lse
    cfg = fwd_config(padded_head_dim(head_dim), q.dtype)
    tma, warp_specialize, ws = cfg.pop("TMA"), cfg.pop("WARP_SPECIALIZE"), cfg.pop("WS")
    if ws:
        from npedit.ops.triton.attention_ws import attention_fwd_ws, ws_fits
        if not varlen and ws_fits(q4, k4, v4, interpreting()):
            attention_fwd_ws(q4, k4, v4, o4, lse, causal, softmax_scale * LOG2E, BLOCK_M=cfg["BLOCK_M"],
                             BLOCK_N=cfg["BLOCK_N"], NUM_STAGES=cfg["num_stages"])
            return out.to(q.dtype), lse  # (a no-op on the GPU; simulated on the CPU, out is fp32 for bf16)
        cfg = _default_fwd_tiles(padded_head_dim(head_dim), q.dtype)  # out of its scope: the pointer kernel
    grid = (triton.cdiv(rows, cfg["BLOCK_M"]), num_seqs * num_heads)
    if tma and not varlen and tma_loads_fit(q4, k4, v4, o4):
        block_d = padded_head_dim(head_dim)
        desc_q, desc_o = (head_tile_descriptor(t, cfg["BLOCK_M"], block_d) for t in (q4, o4))
        desc_k, desc_v = (head_tile_descriptor(t, cfg["BLOCK_N"], block_d) for t in (k4, v4))
        _attention_fwd_tma_kernel[grid](
            desc_q, desc_k, desc_v, desc_o, lse, softmax_scale * LOG2E, *lse_strides,
            num_heads, num_heads // num_kv_heads, seqlen_q, seqlen_k,
            CAUSAL=causal, UPCAST=upcast(q.dtype), PRECISION=dot_precision(q.dtype),
            WARP_SPECIALIZE=warp_specialize, BLOCK_D=block_d, **cfg)
        return out.to(q.dtype), lse
    _attention_fwd_kernel[grid](
        q4, k4, v4, o4, lse, cu_q, cu_k, softmax_scale * LOG2E,
        q4.stride(0) if not varlen else 0, q4.stride(1), q4.stride(2),
        k4.stride(0) if not varlen else 0, k4.stride(1), k4.stride(2),
        v4.stride(0) if not varlen else 0, v4.stride(1), v4.stride(2),
        o4.stride(0) if not varlen else 0, o4.stride(1), o4.stride(2),
        *lse_strides,
        num_heads, num_heads // num_kv_heads, seqlen_q, seqlen_k, head_dim,
        CAUSAL=causal, IS_VARLEN=varlen, UPCAST=upcast(q.dtype), PRECISION=dot_precision(q.dtype),
        BLOCK_D=padded_head_dim(head_dim), **cfg,
    )
    return out.to(q.dtype), lse


def default_scale(head_dim: int, softmax_scale: float | None) -> float:
    return softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
