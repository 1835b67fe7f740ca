"""Variable-length attention in PyTorch without a loop over segments: pad, one batched pass, unpack.

The "torch" implementation of `npedit::attention_varlen_fwd|bwd` for many short segments (a text
encoder's batch of captions, a vision tower's windows): a Python loop over 128 segments costs 128 x
(a few kernels + host syncs) per layer, forward and backward, which dominated the toy teacher's step
on a GPU (3.4 steps/s on an H200). Here every segment sits in a row of a padded batch
[N, Lmax, H, D]; keys past a segment's length are masked; causal masking is bottom-right aligned per
segment (flash-attn's convention: query i of a segment with Sq queries and Sk keys sees keys
j <= i + Sk - Sq). Rows with no visible key give out 0 and lse -inf, as the other paths.

Padding wastes N * Lmax^2 - sum(L_i^2) score entries; `fits_padded` keeps the padded pass to batches
where that waste is bounded (the caller loops over segments otherwise).

Shapes: q [Tq, Hq, D], k/v [Tk, Hk, D] (Hq % Hk == 0), cu_seqlens int32 [N + 1];
out [Tq, Hq, D] in q's dtype, lse [Hq, Tq] fp32. Arithmetic in fp32.
"""
from __future__ import annotations

import torch

# padded score entries allowed per real one before the per-segment loop is cheaper in memory
MAX_PADDING_FACTOR = 4.0
# the padded pass holds [N, H, Lq, Lk] fp32 scores at once (x ~4 in backward): 2^25 entries = 128 MiB;
# longer segments go to the blocked per-segment path, whose temporaries are [H, 256, Lk] per block
MAX_SCORE_ENTRIES = 2 ** 25
MAX_SEGMENT = 256


def _lengths(cu: torch.Tensor) -> torch.Tensor:
    return (cu[1:] - cu[:-1]).long()


def fits_padded(cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int, heads: int = 1) -> bool:
    """Whether the padded pass is the better one: segments of at most MAX_SEGMENT queries, at most
    MAX_SCORE_ENTRIES padded scores, and N * max_q * max_k <= MAX_PADDING_FACTOR * sum(len_q * len_k)
    (+ a small floor). max_q / max_k must bound the segments' lengths (flash-attn's contract)."""
    n = cu_q.numel() - 1
    if max_q > MAX_SEGMENT or n * heads * max_q * max_k > MAX_SCORE_ENTRIES:
        return False
    real = int((_lengths(cu_q) * _lengths(cu_k)).sum())
    return n * max_q * max_k <= MAX_PADDING_FACTOR * real + 4096


def _pad_index(cu: torch.Tensor, max_len: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (packed row of each padded slot [N, L] (clamped), valid slots [N, L] bool)."""
    pos = torch.arange(max_len, device=cu.device)
    valid = pos[None, :] < _lengths(cu)[:, None]
    index = (cu[:-1, None].long() + pos[None, :]).clamp(max=max(total - 1, 0))
    return index, valid


def _pad(x: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """packed [T, H, D] -> padded [N, L, H, D] fp32, zeros at invalid slots."""
    return x.float()[index] * valid[:, :, None, None]


def _scores_mask(cu_q, cu_k, valid_q, valid_k, causal: bool) -> torch.Tensor:
    """Visible (query, key) pairs [N, 1, Lq, Lk]."""
    keep = valid_q[:, :, None] & valid_k[:, None, :]
    if causal:
        lq, lk = valid_q.shape[1], valid_k.shape[1]
        shift = (_lengths(cu_k) - _lengths(cu_q))[:, None, None]                   # [N, 1, 1]
        i = torch.arange(lq, device=keep.device)[None, :, None]
        j = torch.arange(lk, device=keep.device)[None, None, :]
        keep = keep & (j <= i + shift)
    return keep[:, None]


def _probs(qp, kp, keep, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """qp [N, Lq, H, D], kp [N, Lk, H, D] -> (P [N, H, Lq, Lk], lse [N, H, Lq])."""
    scores = torch.einsum("nqhd,nkhd->nhqk", qp, kp) * scale
    scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0), lse


def _expand(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[-2], dim=-2)


def varlen_fwd_padded(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float):
    """-> (out [Tq, Hq, D] in q.dtype, lse [Hq, Tq] fp32)."""
    hq = q.shape[1]
    iq, vq = _pad_index(cu_q, max_q, q.shape[0])
    ik, vk = _pad_index(cu_k, max_k, k.shape[0])
    qp, kp, vp = _pad(q, iq, vq), _expand(_pad(k, ik, vk), hq), _expand(_pad(v, ik, vk), hq)
    p, lse = _probs(qp, kp, _scores_mask(cu_q, cu_k, vq, vk, causal), scale)
    out = torch.einsum("nhqk,nkhd->nqhd", p, vp)                                  # [N, Lq, H, D]
    rows = iq[vq]                          # packed rows the segments cover (rows past cu[-1] stay 0 / -inf)
    out_packed = q.new_zeros(q.shape[:-1] + v.shape[-1:])
    out_packed[rows] = out[vq].to(q.dtype)
    lse_packed = torch.full((hq, q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    lse_packed[:, rows] = lse.transpose(1, 2)[vq].t()
    return out_packed, lse_packed


def varlen_bwd_padded(dout, dlse, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, causal: bool,
                      scale: float):
    """Softmax backward from the saved lse (P recomputed): -> (dq, dk, dv) in the inputs' dtypes; with
    grouped kv heads the gradients of the query heads sharing one are summed."""
    hq, hk = q.shape[1], k.shape[1]
    iq, vq = _pad_index(cu_q, max_q, q.shape[0])
    ik, vk = _pad_index(cu_k, max_k, k.shape[0])
    qp, kp, vp = _pad(q, iq, vq), _expand(_pad(k, ik, vk), hq), _expand(_pad(v, ik, vk), hq)
    dop, op = _pad(dout, iq, vq), _pad(out, iq, vq)
    keep = _scores_mask(cu_q, cu_k, vq, vk, causal)
    lse_p = _pad(lse.t()[:, :, None], iq, vq)[..., 0].transpose(1, 2)            # [N, H, Lq]
    scores = torch.einsum("nqhd,nkhd->nhqk", qp, kp) * scale
    p = torch.exp(scores.masked_fill(~keep, float("-inf")) - lse_p.unsqueeze(-1)).nan_to_num(0.0)
    p = p.masked_fill(~keep, 0.0)
    dv = torch.einsum("nhqk,nqhd->nkhd", p, dop)
    dp = torch.einsum("nqhd,nkhd->nhqk", dop, vp)
    delta = (dop * op).sum(-1).transpose(1, 2)                                     # [N, H, Lq]
    if dlse is not None:
        delta = delta - _pad(dlse.t()[:, :, None], iq, vq)[..., 0].transpose(1, 2)
    ds = p * (dp - delta.unsqueeze(-1))
    dq = torch.einsum("nhqk,nkhd->nqhd", ds, kp) * scale
    dk = torch.einsum("nhqk,nqhd->nkhd", ds, qp) * scale
    if hq != hk:
        g = hq // hk
        dk = dk.unflatten(2, (hk, g)).sum(3)
        dv = dv.unflatten(2, (hk, g)).sum(3)
    dq_p, dk_p, dv_p = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dq_p[iq[vq]] = dq[vq].to(q.dtype)
    dk_p[ik[vk]] = dk[vk].to(k.dtype)
    dv_p[ik[vk]] = dv[vk].to(v.dtype)
    return dq_p, dk_p, dv_p
