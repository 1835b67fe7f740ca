"""adaLN modulation fused with the norm: y = (1 + scale) * norm(x) + shift, norm = LayerNorm or
RMSNorm without affine, statistics in fp32.

Forward: one program per (sample, tile of BLOCK_R tokens) holds whole rows ([BLOCK_R, D] padded to a
power of two), writes y and the per-row mean / rstd (fp32) for the backward.
Backward: one program per (sample, chunk of tokens) walks its rows; with xhat = (x - mean) * rstd and
g = dy * (1 + scale):
  layer: dx = rstd * (g - mean(g) - xhat * mean(g * xhat));  rms: dx = rstd * (g - xhat * mean(g * xhat));
  dshift = dy, dscale = dy * xhat, summed over the tokens when shift / scale are per sample
  ([B, 1, D]): each program writes one fp32 partial row per sample and the launcher sums the chunks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from npedit.ops.triton import interpreting
from npedit.ops.triton.attention import store_dtype


@triton.jit
def _adaln_fwd_kernel(X, Shift, Scale, Y, Mean, Rstd, S, D, eps,
                      stride_xb, stride_xs, stride_shb, stride_shs, stride_scb, stride_scs, stride_yb, stride_ys,
                      IS_RMS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < S
    mask = row_ok[:, None] & (cols[None, :] < D)
    r64 = rows[:, None].to(tl.int64)
    x = tl.load(X + b * stride_xb + r64 * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if IS_RMS:
        mean = tl.zeros([BLOCK_R], dtype=tl.float32)
        xc = x
    else:
        mean = tl.sum(x, 1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
    shift = tl.load(Shift + b * stride_shb + r64 * stride_shs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(Scale + b * stride_scb + r64 * stride_scs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = (1.0 + scale) * (xc * rstd[:, None]) + shift
    tl.store(Y + b * stride_yb + r64 * stride_ys + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + b * S + rows, mean, mask=row_ok)
    tl.store(Rstd + b * S + rows, rstd, mask=row_ok)


@triton.jit
def _adaln_bwd_kernel(DY, X, Scale, Mean, Rstd, DX, DShift, DScale, S, D, rows_per_program,
                      stride_dyb, stride_dys, stride_xb, stride_xs, stride_scb, stride_scs,
                      stride_dxb, stride_dxs, stride_dshb, stride_dshs, stride_dscb, stride_dscs,
                      IS_RMS: tl.constexpr, SHIFT_PER_SAMPLE: tl.constexpr, SCALE_PER_SAMPLE: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # per-sample grads: DShift / DScale are fp32 partials [B, num_chunks, D] (stride_*s = chunk stride)
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    dshift_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    s_lo = chunk * rows_per_program
    s_hi = tl.minimum(S, s_lo + rows_per_program)
    for s0 in range(s_lo, s_hi, BLOCK_R):
        rows = s0 + tl.arange(0, BLOCK_R)
        row_ok = rows < s_hi
        mask = row_ok[:, None] & col_ok[None, :]
        r64 = rows[:, None].to(tl.int64)
        dy = tl.load(DY + b * stride_dyb + r64 * stride_dys + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + b * stride_xb + r64 * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(Scale + b * stride_scb + r64 * stride_scs + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
        mean = tl.load(Mean + b * S + rows, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + b * S + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * (1.0 + scale)
        c1 = tl.sum(g * xhat, 1) / D
        if IS_RMS:
            dx = (g - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(g, 1) / D
            dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DX + b * stride_dxb + r64 * stride_dxs + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if SHIFT_PER_SAMPLE:
            dshift_acc += tl.sum(dy, 0)
        else:
            tl.store(DShift + b * stride_dshb + r64 * stride_dshs + cols[None, :], dy.to(DShift.dtype.element_ty),
                     mask=mask)
        if SCALE_PER_SAMPLE:
            dscale_acc += tl.sum(dy * xhat, 0)
        else:
            tl.store(DScale + b * stride_dscb + r64 * stride_dscs + cols[None, :],
                     (dy * xhat).to(DScale.dtype.element_ty), mask=mask)
    if SHIFT_PER_SAMPLE:
        tl.store(DShift + b * stride_dshb + chunk * stride_dshs + cols, dshift_acc, mask=col_ok)
    if SCALE_PER_SAMPLE:
        tl.store(DScale + b * stride_dscb + chunk * stride_dscs + cols, dscale_acc, mask=col_ok)


def _tiles(dim: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps)."""
    block_d = triton.next_power_of_2(dim)
    if interpreting():
        return max(1, min(4, 256 // block_d)), block_d, 4
    block_r = max(1, min(16, 4096 // block_d))
    return block_r, block_d, max(4, min(16, block_r * block_d // 512))  # <= 16 fp32 per thread per tile


def _modulation(t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """shift / scale [B or 1, S or 1, D] -> a [B, S or 1, D] view with last stride 1; per-sample flag."""
    if t.dim() != 3 or t.shape[-1] != x.shape[-1] or t.shape[0] not in (1, x.shape[0]) \
            or t.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"adaln_modulate: shift/scale must be [B, S, D] or [B, 1, D] for x {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t.expand(x.shape[0], t.shape[1], x.shape[2]), t.shape[1] == 1 and x.shape[1] != 1


def _row_strides(t: torch.Tensor) -> tuple[int, int]:
    return t.stride(0), (0 if t.shape[1] == 1 else t.stride(1))


def adaln_fwd(x, shift, scale, norm: str, eps: float):
    """x [B, S, D] -> y [B, S, D] (x's dtype), mean [B, S] fp32, rstd [B, S] fp32."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    batch, seqlen, dim = x.shape
    shift_v, _ = _modulation(shift, x)
    scale_v, _ = _modulation(scale, x)
    y = torch.empty(x.shape, dtype=store_dtype(x.dtype), device=x.device)
    mean = torch.empty(batch, seqlen, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if x.numel() == 0:
        return y.to(x.dtype), mean, rstd
    block_r, block_d, warps = _tiles(dim)
    _adaln_fwd_kernel[(batch, triton.cdiv(seqlen, block_r))](
        x, shift_v, scale_v, y, mean, rstd, seqlen, dim, eps, x.stride(0), x.stride(1), *_row_strides(shift_v),
        *_row_strides(scale_v), y.stride(0), y.stride(1),
        IS_RMS=norm == "rms", BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    return y.to(x.dtype), mean, rstd


def adaln_bwd(dy, x, shift, scale, mean, rstd, norm: str):
    """-> dx like x, dshift like shift, dscale like scale (shapes and dtypes)."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    batch, seqlen, dim = x.shape
    shift_v, shift_ps = _modulation(shift, x)
    scale_v, scale_ps = _modulation(scale, x)
    dx = torch.empty(x.shape, dtype=store_dtype(x.dtype), device=x.device)
    if x.numel() == 0:
        return dx.to(x.dtype), torch.zeros_like(shift), torch.zeros_like(scale)
    block_r, block_d, warps = _tiles(dim)
    if interpreting():
        chunks = triton.cdiv(seqlen, 2 * block_r)
    else:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
        chunks = max(1, min(triton.cdiv(seqlen, block_r), (4 * sms) // batch))
    rows_per_program = triton.cdiv(triton.cdiv(seqlen, chunks), block_r) * block_r
    chunks = triton.cdiv(seqlen, rows_per_program)

    def grad_buffer(per_sample: bool, like: torch.Tensor) -> torch.Tensor:
        if per_sample:
            return torch.empty(batch, chunks, dim, dtype=torch.float32, device=x.device)
        return torch.empty(batch, seqlen, dim, dtype=store_dtype(like.dtype), device=x.device)

    dshift = grad_buffer(shift_ps, shift)
    dscale = grad_buffer(scale_ps, scale)
    _adaln_bwd_kernel[(batch, chunks)](
        dy, x, scale_v, mean, rstd, dx, dshift, dscale, seqlen, dim, rows_per_program,
        dy.stride(0), dy.stride(1), x.stride(0), x.stride(1), *_row_strides(scale_v), dx.stride(0), dx.stride(1),
        dshift.stride(0), dshift.stride(1), dscale.stride(0), dscale.stride(1),
        IS_RMS=norm == "rms", SHIFT_PER_SAMPLE=shift_ps, SCALE_PER_SAMPLE=scale_ps,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    if shift_ps:
        dshift = dshift.sum(1, keepdim=True)
    if scale_ps:
        dscale = dscale.sum(1, keepdim=True)
    dshift = dshift.sum_to_size(shift.shape).to(shift.dtype)
    return dx.to(x.dtype), dshift, dscale.sum_to_size(scale.shape).to(scale.dtype)
