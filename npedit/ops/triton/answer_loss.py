"""VLM logit-to-loss kernels: the answer loss from answer-position hidden states, never forming
[Q, V] logits.

Binary (Yes/No): one program per question reads h_q and two rows of the LM head,
margin = h . (W[pos] - W[neg]), loss = softplus(-scale * margin). The backward writes dh in a kernel
and scatters the two row gradients of dW with `index_add_` (only when W needs a gradient).

Vocabulary: loss = logsumexp(scale h W^T) - scale h . W[target]. The forward grid is
(question tiles, vocabulary splits); each program walks its vocabulary tiles with an online
max / sum (log2 units) and writes one partial (max, sum) per question; a [splits, Q] combine in
torch gives the lse. Splitting the vocabulary fills the GPU when Q is small (one tile of questions).
The backward recomputes each logits tile from h and W and the saved lse,
dlogits = g * scale * (softmax - onehot), and accumulates dh (and dW) with fp32 atomics.
Every dot accumulates in fp32; the backward's dlogits enter the dots as a hi + lo pair in the
input dtype, so dh keeps ~fp32 accuracy although the operands are bf16/fp16.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from npedit.ops.triton import interpreting
from npedit.ops.triton.attention import LOG2E, dot_precision, store_dtype, upcast

IGNORE_INDEX = -100  # F.cross_entropy's default: loss 0 and no gradient


@triton.jit
def _binary_answer_loss_fwd_kernel(H, W, Pos, Neg, Loss, Margin, D, stride_hq, stride_wv, scale,
                                   BLOCK_D: tl.constexpr):
    q = tl.program_id(0)
    pos = tl.load(Pos + q).to(tl.int64)
    neg = tl.load(Neg + q).to(tl.int64)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        h = tl.load(H + q.to(tl.int64) * stride_hq + offs, mask=m, other=0.0).to(tl.float32)
        wp = tl.load(W + pos * stride_wv + offs, mask=m, other=0.0).to(tl.float32)
        wn = tl.load(W + neg * stride_wv + offs, mask=m, other=0.0).to(tl.float32)
        acc += h * (wp - wn)
    margin = tl.sum(acc, 0)
    z = scale * margin
    t = tl.exp(-tl.abs(z))
    log1p_t = tl.where(t < 1e-4, t * (1.0 - 0.5 * t), tl.log(1.0 + t))
    tl.store(Loss + q, tl.maximum(-z, 0.0) + log1p_t)  # softplus(-z) = -log sigmoid(z)
    tl.store(Margin + q, margin)


@triton.jit
def _binary_answer_loss_bwd_kernel(W, Pos, Neg, Coef, DH, D, stride_wv, stride_dhq, BLOCK_D: tl.constexpr):
    # dh_q = coef_q * (W[pos_q] - W[neg_q]); coef_q = dloss_q/dmargin_q, computed by the launcher
    q = tl.program_id(0)
    pos = tl.load(Pos + q).to(tl.int64)
    neg = tl.load(Neg + q).to(tl.int64)
    c = tl.load(Coef + q)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        wp = tl.load(W + pos * stride_wv + offs, mask=m, other=0.0).to(tl.float32)
        wn = tl.load(W + neg * stride_wv + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(DH + q.to(tl.int64) * stride_dhq + offs, (c * (wp - wn)).to(DH.dtype.element_ty), mask=m)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def binary_answer_loss_fwd(hidden, weight, pos_ids, neg_ids, scale: float):
    """hidden [Q, D], weight [V, D], ids [Q] -> loss [Q] fp32, margin [Q] fp32 (h . (W[pos] - W[neg]))."""
    hidden, weight = _rows(hidden), _rows(weight)
    num_q, dim = hidden.shape
    loss = torch.empty(num_q, dtype=torch.float32, device=hidden.device)
    margin = torch.empty_like(loss)
    if num_q:
        block_d = min(triton.next_power_of_2(dim), 16 if interpreting() else 1024)
        _binary_answer_loss_fwd_kernel[(num_q,)](hidden, weight, pos_ids.contiguous(), neg_ids.contiguous(), loss,
                                                 margin, dim, hidden.stride(0), weight.stride(0), scale,
                                                 BLOCK_D=block_d)
    return loss, margin


def binary_answer_loss_bwd(grad, hidden, weight, pos_ids, neg_ids, margin, scale: float, weight_grad: bool):
    """-> dh [Q, D] in hidden's dtype, dW [V, D] in weight's dtype (None unless weight_grad)."""
    hidden, weight = _rows(hidden), _rows(weight)
    num_q, dim = hidden.shape
    coef = (grad.float() * -scale * torch.sigmoid(-scale * margin)).contiguous()  # d loss / d margin
    dh = torch.empty(hidden.shape, dtype=store_dtype(hidden.dtype), device=hidden.device)
    if num_q:
        block_d = min(triton.next_power_of_2(dim), 16 if interpreting() else 1024)
        _binary_answer_loss_bwd_kernel[(num_q,)](weight, pos_ids.contiguous(), neg_ids.contiguous(), coef, dh, dim,
                                                 weight.stride(0), dh.stride(0), BLOCK_D=block_d)
    dw = None
    if weight_grad:
        rows = coef[:, None] * hidden.float()  # [Q, D]
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        dw.index_add_(0, pos_ids, rows).index_add_(0, neg_ids, -rows)
        dw = dw.to(weight.dtype)
    return dh.to(hidden.dtype), dw


@triton.jit
def _logits_tile(H, W, offs_q, offs_v, q_mask, v_mask, D, stride_hq, stride_wv,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    # [BQ, BV] fp32 = H[offs_q] @ W[offs_v]^T, reduced over D in BLOCK_K slices
    acc = tl.zeros([BLOCK_Q, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < D
        h = tl.load(H + offs_q[:, None].to(tl.int64) * stride_hq + offs_k[None, :],
                    mask=q_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(W + offs_v[:, None].to(tl.int64) * stride_wv + offs_k[None, :],
                    mask=v_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(h, tl.trans(w), input_precision=PRECISION)
    return acc


@triton.jit
def _vocab_answer_loss_fwd_kernel(H, W, Target, MaxPart, SumPart, TargetLogit, Q, V, D, stride_hq, stride_wv,
                                  scale_log2, tiles_per_split,
                                  UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr,
                                  BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = offs_q < Q
    target = tl.load(Target + offs_q, mask=q_mask, other=-1)
    v_lo = pid_s * tiles_per_split * BLOCK_V
    v_hi = tl.minimum(V, v_lo + tiles_per_split * BLOCK_V)
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    t_logit = tl.zeros([BLOCK_Q], dtype=tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        logits = _logits_tile(H, W, offs_q, offs_v, q_mask, v_mask, D, stride_hq, stride_wv,
                              UPCAST, PRECISION, BLOCK_Q, BLOCK_V, BLOCK_K)  # [BQ, BV], unscaled
        t_logit += tl.sum(tl.where(offs_v[None, :] == target[:, None], logits, 0.0), 1)
        s = tl.where(v_mask[None, :], logits * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every split holds >= 1 valid column
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    tl.store(MaxPart + pid_s * Q + offs_q, m_i, mask=q_mask)
    tl.store(SumPart + pid_s * Q + offs_q, l_i, mask=q_mask)
    tl.store(TargetLogit + offs_q, t_logit, mask=q_mask & (target >= v_lo) & (target < v_hi))


@triton.jit
def _vocab_answer_loss_bwd_kernel(H, W, Target, Lse, Grad, DH, DW, Q, V, D, stride_hq, stride_wv, scale,
                                  tiles_per_split,
                                  WEIGHT_GRAD: tl.constexpr, SPLIT_DS: tl.constexpr, UPCAST: tl.constexpr,
                                  PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr,
                                  BLOCK_K: tl.constexpr):
    # DH [Q, D] and DW [V, D] are zero-initialised fp32 buffers (contiguous)
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = offs_q < Q
    target = tl.load(Target + offs_q, mask=q_mask, other=-1)
    lse2 = tl.load(Lse + offs_q, mask=q_mask, other=0.0) * 1.4426950408889634
    g = tl.load(Grad + offs_q, mask=q_mask, other=0.0) * scale  # 0 for ignored / padded questions
    v_lo = pid_s * tiles_per_split * BLOCK_V
    v_hi = tl.minimum(V, v_lo + tiles_per_split * BLOCK_V)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        logits = _logits_tile(H, W, offs_q, offs_v, q_mask, v_mask, D, stride_hq, stride_wv,
                              UPCAST, PRECISION, BLOCK_Q, BLOCK_V, BLOCK_K)
        p = tl.math.exp2(logits * (scale * 1.4426950408889634) - lse2[:, None])
        p = tl.where(v_mask[None, :], p, 0.0)
        ds = g[:, None] * (p - tl.where(offs_v[None, :] == target[:, None], 1.0, 0.0))  # [BQ, BV] fp32
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < D
            w = tl.load(W + offs_v[:, None].to(tl.int64) * stride_wv + offs_k[None, :],
                        mask=v_mask[:, None] & k_mask[None, :], other=0.0)
            if UPCAST:
                w = w.to(tl.float32)
            if SPLIT_DS:
                ds_hi = ds.to(w.dtype)
                ds_lo = (ds - ds_hi.to(tl.float32)).to(w.dtype)
                dh = tl.dot(ds_hi, w, input_precision=PRECISION) + tl.dot(ds_lo, w, input_precision=PRECISION)
            else:
                dh = tl.dot(ds.to(w.dtype), w, input_precision=PRECISION)
            tl.atomic_add(DH + offs_q[:, None] * D + offs_k[None, :], dh, mask=q_mask[:, None] & k_mask[None, :])
            if WEIGHT_GRAD:
                h = tl.load(H + offs_q[:, None].to(tl.int64) * stride_hq + offs_k[None, :],
                            mask=q_mask[:, None] & k_mask[None, :], other=0.0)
                if UPCAST:
                    h = h.to(tl.float32)
                ds_t = tl.trans(ds)
                if SPLIT_DS:
                    ds_t_hi = ds_t.to(h.dtype)
                    ds_t_lo = (ds_t - ds_t_hi.to(tl.float32)).to(h.dtype)
                    dw = (tl.dot(ds_t_hi, h, input_precision=PRECISION)
                          + tl.dot(ds_t_lo, h, input_precision=PRECISION))
                else:
                    dw = tl.dot(ds_t.to(h.dtype), h, input_precision=PRECISION)
                tl.atomic_add(DW + offs_v[:, None].to(tl.int64) * D + offs_k[None, :], dw,
                              mask=v_mask[:, None] & k_mask[None, :])


def _vocab_config(num_q: int, vocab: int, device: torch.device, fp32: bool = False, backward: bool = False,
                  weight_grad: bool = False) -> dict:
    """Tiles and the vocabulary split: enough (question tile x split) programs to fill the GPU.
    GPU tiles: the largest that compile for sm_90 without register spills (kernels/compile_check.py);
    fp32 (or mixed-dtype) operands run FMA dots in smaller tiles."""
    if interpreting():
        return dict(BLOCK_Q=16, BLOCK_V=16, BLOCK_K=16, tiles_per_split=2, num_warps=4, num_stages=1)
    block_q = 16 if num_q <= 16 else (32 if num_q <= 32 else 64)
    if fp32:
        block_q, block_v, block_k, stages = 16, 32, 32, 2
    elif not backward:
        block_v, block_k, stages = 128, 64, 3
    else:
        block_v, block_k, stages = 64, (32 if weight_grad and block_q > 16 else 64), (2 if weight_grad else 3)
    q_tiles = triton.cdiv(num_q, block_q)
    v_tiles = triton.cdiv(vocab, block_v)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    splits = max(1, min(v_tiles, (4 * sms) // max(q_tiles, 1)))
    return dict(BLOCK_Q=block_q, BLOCK_V=block_v, BLOCK_K=block_k, tiles_per_split=triton.cdiv(v_tiles, splits),
                num_warps=4 if fp32 else 8, num_stages=stages)


def _numerics(hidden: torch.Tensor, weight: torch.Tensor) -> dict:
    """Mixed dtypes (e.g. fp32 hidden, bf16 head) compute on fp32 copies of the loads with fp32 dots."""
    up = upcast(hidden.dtype) or upcast(weight.dtype) or hidden.dtype != weight.dtype
    fp32 = up or hidden.dtype == torch.float32
    return dict(UPCAST=up, PRECISION="ieee" if fp32 else dot_precision(hidden.dtype))


def _launch_args(cfg: dict):
    meta = {k: cfg[k] for k in ("BLOCK_Q", "BLOCK_V", "BLOCK_K", "num_warps", "num_stages")}
    return cfg["tiles_per_split"], meta


def vocab_answer_loss_fwd(hidden, weight, target_ids, scale: float):
    """hidden [Q, D], weight [V, D], target_ids [Q] -> loss [Q] fp32, lse [Q] fp32 (natural log)."""
    hidden, weight = _rows(hidden), _rows(weight)
    num_q, dim = hidden.shape
    vocab = weight.shape[0]
    target_ids = target_ids.contiguous()
    if num_q == 0:
        empty = torch.empty(0, dtype=torch.float32, device=hidden.device)
        return empty, empty.clone()
    numerics = _numerics(hidden, weight)
    cfg = _vocab_config(num_q, vocab, hidden.device, fp32=numerics["PRECISION"] == "ieee")
    tiles_per_split, meta = _launch_args(cfg)
    splits = triton.cdiv(triton.cdiv(vocab, meta["BLOCK_V"]), tiles_per_split)
    max_part = torch.empty(splits, num_q, dtype=torch.float32, device=hidden.device)
    sum_part = torch.empty_like(max_part)
    t_logit = torch.zeros(num_q, dtype=torch.float32, device=hidden.device)
    grid = (triton.cdiv(num_q, meta["BLOCK_Q"]), splits)
    _vocab_answer_loss_fwd_kernel[grid](hidden, weight, target_ids, max_part, sum_part, t_logit, num_q, vocab, dim,
                                        hidden.stride(0), weight.stride(0), scale * LOG2E, tiles_per_split,
                                        **numerics, **meta)
    m = max_part.max(0).values
    lse = (m + torch.log2((sum_part * torch.exp2(max_part - m)).sum(0))) / LOG2E  # [Q]
    loss = torch.where(target_ids == IGNORE_INDEX, 0.0, lse - scale * t_logit)
    return loss, lse


def vocab_answer_loss_bwd(grad, hidden, weight, target_ids, lse, scale: float, weight_grad: bool):
    """-> dh [Q, D] in hidden's dtype, dW [V, D] in weight's dtype (None unless weight_grad)."""
    hidden, weight = _rows(hidden), _rows(weight)
    num_q, dim = hidden.shape
    vocab = weight.shape[0]
    target_ids = target_ids.contiguous()
    grad = torch.where(target_ids == IGNORE_INDEX, 0.0, grad.float()).contiguous()
    dh = torch.zeros(num_q, dim, dtype=torch.float32, device=hidden.device)
    dw = torch.zeros(vocab, dim, dtype=torch.float32, device=weight.device) if weight_grad else dh
    if num_q:
        numerics = _numerics(hidden, weight)
        cfg = _vocab_config(num_q, vocab, hidden.device, fp32=numerics["PRECISION"] == "ieee", backward=True,
                            weight_grad=weight_grad)
        tiles_per_split, meta = _launch_args(cfg)
        splits = triton.cdiv(triton.cdiv(vocab, meta["BLOCK_V"]), tiles_per_split)
        grid = (triton.cdiv(num_q, meta["BLOCK_Q"]), splits)
        split_ds = not numerics["UPCAST"] and hidden.dtype in (torch.float16, torch.bfloat16)
        _vocab_answer_loss_bwd_kernel[grid](hidden, weight, target_ids, lse.contiguous(), grad, dh, dw, num_q, vocab,
                                            dim, hidden.stride(0), weight.stride(0), scale, tiles_per_split,
                                            WEIGHT_GRAD=weight_grad, SPLIT_DS=split_ds, **numerics, **meta)
    return dh.to(hidden.dtype), (dw.to(weight.dtype) if weight_grad else None)
