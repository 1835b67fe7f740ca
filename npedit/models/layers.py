"""Shared pieces of the built-in models: embeddings, norms, attention, transformer block.

ZeRO-3 note: every parameter lives in a sub-module whose forward uses it, so DeepSpeed's
per-module hooks gather it even when a model is driven through methods other than forward.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from npedit import ops


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """t [N] (any float scale) -> [N, dim] fp32: [cos(t f_i), sin(t f_i)], f_i geometric in [1/max_period, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


@lru_cache(maxsize=32)
def _sincos_2d_cpu(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32),
                            indexing="ij")
    # half the channels encode the row, half the column (MAE / DiT convention)
    return torch.cat([sinusoidal_embedding(ys.flatten(), dim // 2), sinusoidal_embedding(xs.flatten(), dim // 2)], -1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding of a row-major grid -> [grid_h * grid_w, dim]; dim % 4 == 0."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    return _sincos_2d_cpu(grid_h, grid_w, dim).to(device=device, dtype=dtype)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p], row-major patches, channels outermost inside a patch."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image of size {h}x{w} is not divisible by patch size {patch}")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, channels: int, height: int, width: int, patch: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, (H/p)(W/p), C p p] -> [B, C, H, W]."""
    b = tokens.shape[0]
    gh, gw = height // patch, width // patch
    x = tokens.reshape(b, gh, gw, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, height, width)


def right_padded_lengths(mask: torch.Tensor, name: str = "attention_mask", min_length: int = 0) -> torch.Tensor:
    """Lengths [B] of a right-padded bool mask [B, L]; ValueError if a row has holes or is too short."""
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"{name} must be a bool tensor [B, L], got {mask.dtype} {tuple(mask.shape)}")
    lengths = mask.sum(1)
    expected = torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]
    if not torch.equal(mask, expected) or (lengths < min_length).any():
        raise ValueError(f"{name} must be right-padded (True then False in each row) with at least "
                         f"{min_length} True per row; got lengths {lengths.tolist()}")
    return lengths


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class TimestepEmbedder(nn.Module):
    """t in [0, 1] [N] -> [N, dim]: sinusoidal features of 1000 t, then an MLP (DiT)."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_embedding(t * 1000.0, self.frequency_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttention(nn.Module):
    """Multi-head self-attention through `ops.attention` (or `ops.attention_varlen` on packed tokens)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, causal: bool = False, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int = 0) -> torch.Tensor:
        """x [B, S, D], or packed [T, D] with cu_seqlens [B + 1] int32 (segments attend within themselves)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)  # [..., S, H, Dh]
        q, k = self.q_norm(q), self.k_norm(k)
        if cu_seqlens is None:
            out = ops.attention(q, k, v, causal=causal)
        else:
            out = ops.attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=causal)
        return self.proj(out.flatten(-2))


class TransformerBlock(nn.Module):
    """Pre-norm block of the ViT, the text encoder and the LM: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, causal: bool = False, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal, cu_seqlens, max_seqlen)
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) for Linear / Embedding weights, zero biases (apply with `model.apply`)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
