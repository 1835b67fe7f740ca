"""Attention with flash-attn's calling conventions.

`attention(q, k, v)` takes [batch, seqlen, heads, head_dim] like `flash_attn_func`;
`attention_varlen` takes packed [total_tokens, heads, head_dim] with cumulative sequence lengths
like `flash_attn_varlen_func`. Grouped-query heads: k/v may have fewer heads than q (q heads must
be a multiple). The references below are the specification of the fused kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _expand_kv(k: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    # [B, S, Hk, D] -> [B, S, Hq, D] by repeating each kv head Hq // Hk times
    num_kv_heads = k.shape[-2]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of key/value heads ({num_kv_heads})")
    return k.repeat_interleave(num_q_heads // num_kv_heads, dim=-2)


def attention_ref(q, k, v, causal: bool = False, softmax_scale: float | None = None, return_lse: bool = False):
    """q [B, Sq, Hq, D], k/v [B, Sk, Hk, D] -> out [B, Sq, Hq, D] (and lse [B, Hq, Sq] in fp32).

    Causal masking aligns the last query with the last key (flash-attn >= 2.1 convention).
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    k = _expand_kv(k, q.shape[-2])
    v = _expand_kv(v, q.shape[-2])
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale  # [B, H, Sq, Sk]
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        keep = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, H, Sq]
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)
    return (out, lse) if return_lse else out


def attention_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                         causal: bool = False, softmax_scale: float | None = None):
    """q [Tq, Hq, D], k/v [Tk, Hk, D]; segment i is rows cu_seqlens[i]:cu_seqlens[i+1] -> [Tq, Hq, D]."""
    outs = []
    for i in range(cu_seqlens_q.numel() - 1):
        qs, qe = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        ks, ke = int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        outs.append(attention_ref(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke], causal, softmax_scale)[0])
    return torch.cat(outs, dim=0)


def attention(q, k, v, causal: bool = False, softmax_scale: float | None = None, return_lse: bool = False):
    """Fused attention, [B, S, H, D] layout (drop-in for flash_attn_func)."""
    return attention_ref(q, k, v, causal, softmax_scale, return_lse)


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                     causal: bool = False, softmax_scale: float | None = None):
    """Fused variable-length attention, packed [T, H, D] layout (drop-in for flash_attn_varlen_func)."""
    return attention_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale)


def sdpa_attention(q, k, v, causal: bool = False, softmax_scale: float | None = None):
    """PyTorch SDPA in the [B, S, H, D] layout: the baseline the fused kernel is measured against."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, scale=softmax_scale,
                                         enable_gqa=k.shape[-2] != q.shape[-2])
    return out.transpose(1, 2)
