"""Memory-efficient attention in plain PyTorch (FlashAttention's algorithm, query blocks, full keys).

The "torch" implementation behind `npedit.ops.attention` off the GPU. `attention_ref` materialises
the [B, H, Sq, Sk] fp32 scores and probabilities at once (and its analytic backward several such
matrices); here the queries are processed `block` rows at a time, so the temporaries are
[B, H, block, Sk] and only (q, k, v, out, lse) are kept for backward:

- forward: per query block, scores = q_blk k^T * scale (masked), lse = logsumexp(scores),
  P = exp(scores - lse) (rows without keys -> 0), out_blk = P v;
- backward: per query block, P is recomputed from the saved lse, dV += P^T dO, dP = dO V^T,
  delta = rowsum(P * dP) - dlse, dS = P * (dP - delta), dQ_blk = dS K * scale, dK += dS^T Q * scale.

Grouped-query heads are handled without expanding k/v: a q block is viewed as
[B, bq, Hk, G, D] and the G query heads of one kv head share its keys, so dK/dV sum over the group.
Arithmetic is in fp32 (inputs `.float()`, outputs cast back to the input dtype), as in `attention_ref`.
Causal masking aligns the last query with the last key; keys no query of a block can see are not
touched, and blocks whose rows see no key give out 0, lse -inf and zero gradients.
"""
from __future__ import annotations

import torch

#: query rows per block (read at each call: `block=None` uses it); backward's temporaries are about
#: 3 x [B, H, BLOCK, Sk] fp32
BLOCK = 256


def _key_end(start: int, end: int, sq: int, sk: int, causal: bool) -> int:
    """Keys [0, key_end) are visible to some query of rows [start, end) (bottom-right causal)."""
    if not causal:
        return sk
    return max(0, min(sk, end + sk - sq))


def _block_scores(qb: torch.Tensor, kf: torch.Tensor, start: int, sq: int, sk: int, causal: bool,
                  scale: float) -> torch.Tensor:
    """qb [B, bq, Hk, G, D] fp32, kf [B, kend, Hk, D] fp32 -> masked scores [B, Hk, G, bq, kend]."""
    scores = torch.einsum("bqhgd,bkhd->bhgqk", qb, kf)
    scores.mul_(scale)
    if causal:
        bq, kend = qb.shape[1], kf.shape[1]
        rows = torch.arange(start, start + bq, device=qb.device).unsqueeze(1) + (sk - sq)
        cols = torch.arange(kend, device=qb.device).unsqueeze(0)
        scores.masked_fill_(cols > rows, float("-inf"))
    return scores


def _grouped(t: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[B, S, Hq, D] -> [B, S, Hk, G, D] (a view)."""
    b, s, h, d = t.shape
    return t.view(b, s, num_kv_heads, h // num_kv_heads, d)


def attention_fwd_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                          block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Sq, Hq, D], k [B, Sk, Hk, D], v [B, Sk, Hk, Dv] -> out [B, Sq, Hq, Dv] (q.dtype), lse [B, Hq, Sq] fp32."""
    block = block or BLOCK
    b, sq, hq, _ = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    if hq % hk:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hk})")
    out = torch.zeros((b, sq, hq, dv), dtype=q.dtype, device=q.device)
    lse = torch.full((b, hq, sq), float("-inf"), dtype=torch.float32, device=q.device)
    kf, vf = k.float(), v.float()
    for start in range(0, sq, block):
        end = min(sq, start + block)
        kend = _key_end(start, end, sq, sk, causal)
        if kend == 0:
            continue  # no query of this block sees a key: out 0, lse -inf
        qb = _grouped(q[:, start:end].float(), hk)
        scores = _block_scores(qb, kf[:, :kend], start, sq, sk, causal, scale)  # [B, Hk, G, bq, kend]
        lse_b = torch.logsumexp(scores, dim=-1)  # [B, Hk, G, bq]
        probs = scores.sub_(lse_b.unsqueeze(-1)).exp_().nan_to_num_(0.0)
        out_b = torch.einsum("bhgqk,bkhd->bqhgd", probs, vf[:, :kend])
        out[:, start:end] = out_b.reshape(b, end - start, hq, dv)
        lse[:, :, start:end] = lse_b.reshape(b, hq, end - start)
        del scores, probs, out_b
    return out, lse


def attention_bwd_chunked(dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                          v: torch.Tensor, lse: torch.Tensor, causal: bool, scale: float,
                          block: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (out, lse) = attention_fwd_chunked(q, k, v) given dout [B, Sq, Hq, Dv] and dlse
    [B, Hq, Sq] (or None) -> dq, dk, dv in the dtypes of q, k, v (dk/dv summed over grouped heads)."""
    block = block or BLOCK
    b, sq, hq, d = q.shape
    sk, hk, dvh = k.shape[1], k.shape[2], v.shape[-1]
    group = hq // hk
    kf, vf = k.float(), v.float()
    dq = torch.zeros_like(q)
    dk_acc = torch.zeros((b, sk, hk, d), dtype=torch.float32, device=q.device)
    dv_acc = torch.zeros((b, sk, hk, dvh), dtype=torch.float32, device=q.device)
    for start in range(0, sq, block):
        end = min(sq, start + block)
        bq = end - start
        kend = _key_end(start, end, sq, sk, causal)
        if kend == 0:
            continue  # P = 0 on these rows: no gradient flows through them
        qb = _grouped(q[:, start:end].float(), hk)
        dob = _grouped(dout[:, start:end].float(), hk)
        kb, vb = kf[:, :kend], vf[:, :kend]
        lse_b = lse[:, :, start:end].reshape(b, hk, group, bq)
        lse_b = torch.where(lse_b == float("-inf"), float("inf"), lse_b)  # rows without keys: P = 0
        probs = _block_scores(qb, kb, start, sq, sk, causal, scale)
        probs = probs.sub_(lse_b.unsqueeze(-1)).exp_()  # [B, Hk, G, bq, kend]
        dv_acc[:, :kend] += torch.einsum("bhgqk,bqhgd->bkhd", probs, dob)
        dprobs = torch.einsum("bqhgd,bkhd->bhgqk", dob, vb)
        delta = (probs * dprobs).sum(-1, keepdim=True)  # = rowsum(dO * O) in exact arithmetic
        if dlse is not None:
            delta = delta - dlse[:, :, start:end].float().reshape(b, hk, group, bq, 1)
        dscores = probs.mul_(dprobs.sub_(delta))
        del dprobs
        dq_b = torch.einsum("bhgqk,bkhd->bqhgd", dscores, kb).mul_(scale)
        dq[:, start:end] = dq_b.reshape(b, bq, hq, d)
        dk_acc[:, :kend] += torch.einsum("bhgqk,bqhgd->bkhd", dscores, qb).mul_(scale)
        del probs, dscores, dq_b
    return dq, dk_acc.to(k.dtype), dv_acc.to(v.dtype)


def attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                      softmax_scale: float | None = None, return_lse: bool = False, block: int | None = None):
    """Differentiable block-wise attention (same contract as `attention_ref`), for direct use and tests."""
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    out, lse = _ChunkedAttention.apply(q, k, v, causal, scale, block)
    return (out, lse) if return_lse else out


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block):
        out, lse = attention_fwd_chunked(q, k, v, causal, scale, block)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, scale, block)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout
        causal, scale, block = ctx.args
        dq, dk, dv = attention_bwd_chunked(dout, dlse, q, k, v, lse, causal, scale, block)
        return dq, dk, dv, None, None, None
