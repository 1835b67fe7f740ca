"""Attention with flash-attn's calling conventions.

`attention(q, k, v)` takes [batch, seqlen, heads, head_dim] like `flash_attn_func`;
`attention_varlen` takes packed [total_tokens, heads, head_dim] with cumulative sequence lengths
like `flash_attn_varlen_func`. Grouped-query heads: k/v may have fewer heads than q (q heads must
be a multiple). The references below are the specification of the fused kernels.

Op stack: `attention_ref` / `attention_varlen_ref` (specification) -> Triton kernels in
`npedit/ops/triton/attention*.py` -> custom ops `npedit::attention_fwd|bwd` and
`npedit::attention_varlen_fwd|bwd` (autograd boundary, `impl` = "triton" or "torch") -> the
functional `attention` / `attention_varlen` below. The "torch" impl (`npedit.ops.attention_chunked`)
is FlashAttention in PyTorch: query blocks with full keys, forward and an analytic backward from the
saved log-sum-exp, so its temporaries are [B, H, block, Sk] rather than the reference's
[B, H, Sq, Sk]; under NPEDIT_OPS=ref (the "plain" stack) it is the reference forward plus the same
analytic backward, unblocked. Variable-length batches of short segments (captions, vision windows)
run as one padded pass (`npedit.ops.attention_varlen_padded`) instead of a loop over segments, which
on a GPU cost host syncs and launches per segment. Both backends save (q, k, v, out, lse), and selective checkpointing
(`npedit.ops.checkpoint`) can keep the attention output on either.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from npedit.ops.attention_chunked import attention_bwd_chunked, attention_fwd_chunked
from npedit.ops.attention_varlen_padded import fits_padded, varlen_bwd_padded, varlen_fwd_padded
from npedit.ops.backend import forced_backend
from npedit.ops.triton import use_triton


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



# ---------------------------------------------------------------------------------------------------
# "torch" implementation of the custom ops. Unforced (CPU tensors, or GPU shapes Triton cannot run):
# npedit.ops.attention_chunked, query blocks of [B, H, block, Sk] temporaries. NPEDIT_OPS=ref (the
# benchmarks' and planner's "plain" stack): the reference forward, materialising [B, H, Sq, Sk] scores,
# and the analytic backward below. Both save (q, k, v, out, lse); varlen runs them per segment, or
# (unforced, many short segments) as one padded pass: npedit.ops.attention_varlen_padded.


def _attention_bwd_ref(dout, dlse, q, k, v, lse, causal: bool, scale: float):
    """Recompute P = exp(S - lse) in fp32 and apply the softmax backward; GQA grads summed per kv head."""
    num_q_heads, num_kv_heads = q.shape[-2], k.shape[-2]
    qf, kf, vf, dof = q.float(), _expand_kv(k, num_q_heads).float(), _expand_kv(v, num_q_heads).float(), dout.float()
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale  # [B, H, Sq, Sk]
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        keep = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        scores = scores.masked_fill(~keep, float("-inf"))
    lse_safe = torch.where(lse == float("-inf"), float("inf"), lse)  # rows without keys: P = 0
    probs = torch.exp(scores - lse_safe.unsqueeze(-1))
    dv = torch.einsum("bhqk,bqhd->bkhd", probs, dof)
    dprobs = torch.einsum("bqhd,bkhd->bhqk", dof, vf)
    delta = (probs * dprobs).sum(-1, keepdim=True)  # = rowsum(dO * O) in exact arithmetic
    if dlse is not None:
        delta = delta - dlse.float().unsqueeze(-1)
    dscores = probs * (dprobs - delta)
    dq = torch.einsum("bhqk,bkhd->bqhd", dscores, kf) * scale
    dk = torch.einsum("bhqk,bqhd->bkhd", dscores, qf) * scale
    group = num_q_heads // num_kv_heads
    b, sk, d = k.shape[0], k.shape[1], k.shape[-1]
    dk = dk.view(b, sk, num_kv_heads, group, d).sum(3)
    dv = dv.view(b, sk, num_kv_heads, group, v.shape[-1]).sum(3)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _torch_fns():
    """(forward, backward) of the "torch" impl: the reference pair under NPEDIT_OPS=ref, else the blocked pair."""
    if forced_backend() == "ref":
        return _attention_fwd_ref, _attention_bwd_ref
    return attention_fwd_chunked, attention_bwd_chunked


def _attention_fwd_ref(q, k, v, causal: bool, scale: float):
    out, lse = attention_ref(q, k, v, causal, scale, return_lse=True)
    return out.contiguous(), lse.contiguous()


def _use_padded_varlen(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int) -> bool:
    """Unforced torch impl, many short segments: one padded pass instead of a loop over segments
    (npedit.ops.attention_varlen_padded). NPEDIT_OPS=ref keeps the per-segment reference."""
    return forced_backend() != "ref" and fits_padded(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                     q.shape[1])


def _segments(cu_seqlens_q, cu_seqlens_k):
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return [(cq[i], cq[i + 1], ck[i], ck[i + 1]) for i in range(len(cq) - 1)]


# ---------------------------------------------------------------------------------------------------
# autograd boundary: custom ops (visible to torch.compile, selective checkpointing, ZeRO-3 hooks)


@torch.library.custom_op("npedit::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                      impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Sq, Hq, D], k/v [B, Sk, Hk, D] -> out [B, Sq, Hq, D], lse [B, Hq, Sq] fp32."""
    if impl == "triton":
        from npedit.ops.triton.attention import attention_fwd
        return attention_fwd(q, k, v, causal, softmax_scale)
    return _torch_fns()[0](q, k, v, causal, softmax_scale)


@_attention_fwd_op.register_fake
def _(q, k, v, causal, softmax_scale, impl):
    b, sq, h, _ = q.shape
    return q.new_empty((b, sq, h, v.shape[-1])), q.new_empty((b, h, sq), dtype=torch.float32)


@torch.library.custom_op("npedit::attention_bwd", mutates_args=())
def _attention_bwd_op(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, causal: bool, softmax_scale: float,
                      impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if impl == "triton":
        from npedit.ops.triton.attention_bwd import attention_bwd
        return attention_bwd(dout, q, k, v, out, lse, causal, softmax_scale, dlse)
    return _torch_fns()[1](dout, dlse, q, k, v, lse, causal, softmax_scale)


@_attention_bwd_op.register_fake
def _(dout, dlse, q, k, v, out, lse, causal, softmax_scale, impl):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, softmax_scale, impl = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = (causal, softmax_scale, impl)


def _attention_backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    dq, dk, dv = torch.ops.npedit.attention_bwd(dout, dlse, q, k, v, out, lse, *ctx.args)
    return dq, dk, dv, None, None, None


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup)


@torch.library.custom_op("npedit::attention_varlen_fwd", mutates_args=())
def _attention_varlen_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                             softmax_scale: float, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """q [Tq, Hq, D], k/v [Tk, Hk, D], cu_seqlens int32 [N + 1] -> out [Tq, Hq, D], lse [Hq, Tq] fp32."""
    if impl == "triton":
        from npedit.ops.triton.attention import attention_fwd
        return attention_fwd(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q)
    if _use_padded_varlen(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        return varlen_fwd_padded(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                 softmax_scale)
    out = torch.zeros(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    fwd = _torch_fns()[0]
    for qs, qe, ks, ke in _segments(cu_seqlens_q, cu_seqlens_k):
        o, l = fwd(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke], causal, softmax_scale)
        out[qs:qe], lse[:, qs:qe] = o[0], l[0]
    return out, lse


@_attention_varlen_fwd_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale, impl):
    return q.new_empty(q.shape[:-1] + v.shape[-1:]), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("npedit::attention_varlen_bwd", mutates_args=())
def _attention_varlen_bwd_op(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                             softmax_scale: float, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if impl == "triton":
        from npedit.ops.triton.attention_bwd import attention_bwd
        return attention_bwd(dout, q, k, v, out, lse, causal, softmax_scale, dlse, cu_seqlens_q, cu_seqlens_k,
                             max_seqlen_q, max_seqlen_k)
    if _use_padded_varlen(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        return varlen_bwd_padded(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                 max_seqlen_k, causal, softmax_scale)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    bwd = _torch_fns()[1]
    for qs, qe, ks, ke in _segments(cu_seqlens_q, cu_seqlens_k):
        seg_dlse = None if dlse is None else dlse[None, :, qs:qe]
        g = bwd(dout[None, qs:qe], seg_dlse, q[None, qs:qe], k[None, ks:ke], v[None, ks:ke], lse[None, :, qs:qe],
                causal, softmax_scale)
        dq[qs:qe], dk[ks:ke], dv[ks:ke] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv


@_attention_varlen_bwd_op.register_fake
def _(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
      softmax_scale, impl):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_varlen_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, softmax_scale, impl = inputs
    ctx.save_for_backward(q, k, v, *output, cu_q, cu_k)
    ctx.args = (max_q, max_k, causal, softmax_scale, impl)


def _attention_varlen_backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    dq, dk, dv = torch.ops.npedit.attention_varlen_bwd(dout, dlse, q, k, v, out, lse, cu_q, cu_k, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


_attention_varlen_fwd_op.register_autograd(_attention_varlen_backward, setup_context=_attention_varlen_setup)

#: ops whose outputs selective checkpointing keeps (their backward never re-runs the forward)
ATTENTION_OPS = (torch.ops.npedit.attention_fwd.default, torch.ops.npedit.attention_varlen_fwd.default)


# ---------------------------------------------------------------------------------------------------
# functional API


def _check(q, k, v, ndim: int, what: str) -> None:
    layout = "[batch, seqlen, heads, head_dim]" if ndim == 4 else "[total_tokens, heads, head_dim]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != ndim:
            raise ValueError(f"{what}: {name} must be {layout}, got shape {tuple(t.shape)}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"{what}: k {tuple(k.shape)} and v {tuple(v.shape)} must agree except in head_dim")
    if ndim == 4 and (q.shape[0] != k.shape[0]):
        raise ValueError(f"{what}: batch sizes differ (q {q.shape[0]}, k {k.shape[0]})")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{what}: q head_dim {q.shape[-1]} != k head_dim {k.shape[-1]}")
    if q.shape[-2] % k.shape[-2]:
        raise ValueError(f"{what}: query heads ({q.shape[-2]}) must be a multiple of key/value heads ({k.shape[-2]})")


def _impl(q, k, v, what: str) -> str:
    if not use_triton(q, k, v, op=what):
        return "torch"
    from npedit.ops.triton.attention import check_supported
    reason = check_supported(q, k, v)
    if reason is None:
        return "triton"
    if forced_backend() == "triton":
        raise ValueError(f"{what}: NPEDIT_OPS=triton cannot run {reason}")
    return "torch"


def attention(q, k, v, causal: bool = False, softmax_scale: float | None = None, return_lse: bool = False):
    """Fused attention, [B, S, H, D] layout (drop-in for flash_attn_func); see `attention_ref`.

    q [B, Sq, Hq, D], k/v [B, Sk, Hk, D] (Hq % Hk == 0) -> out [B, Sq, Hq, D] (and lse [B, Hq, Sq] fp32,
    differentiable). fp16/bf16/fp32, head_dim <= 256 on the Triton path.
    """
    _check(q, k, v, 4, "attention")
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, lse = torch.ops.npedit.attention_fwd(q, k, v, causal, scale, _impl(q, k, v, "attention"))
    return (out, lse) if return_lse else out


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                     causal: bool = False, softmax_scale: float | None = None):
    """Fused variable-length attention, packed [T, H, D] layout (drop-in for flash_attn_varlen_func).

    cu_seqlens_* [N + 1] (int32; other integer dtypes are converted), max_seqlen_* the longest segment.
    """
    _check(q, k, v, 3, "attention_varlen")
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"attention_varlen: cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k "
                         f"{tuple(cu_seqlens_k.shape)} must both be [num_seqs + 1]")
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32)
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, _ = torch.ops.npedit.attention_varlen_fwd(q, k, v, cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k),
                                                   causal, scale, _impl(q, k, v, "attention_varlen"))
    return out


def sdpa_attention(q, k, v, causal: bool = False, softmax_scale: float | None = None):
    """PyTorch SDPA in the [B, S, H, D] layout: the baseline the fused kernel is measured against."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, scale=softmax_scale,
                                         enable_gqa=k.shape[-2] != q.shape[-2])
    return out.transpose(1, 2)
