"""Flow-matching DiT: the built-in teacher (text-only) and student (text + reference image).

Flow convention: x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0 (t = 1 is noise).
One stream of joint attention over [text tokens, reference patch tokens (optional), target patch
tokens]; the output is cropped to the target tokens. Conditioning is adaLN-Zero per token:
text and target tokens use cond(t), reference tokens use cond(0) (the reference is clean).

`reference_skip` (students only) also adds a linear projection of the reference patch at the same
position to each target token, i.e. channel concatenation (InstructPix2Pix) on top of the sequence
concatenation. It starts at zero, so a student widened from a text-only teacher computes exactly the
teacher's function until it trains. Why: a DiT this small learns to copy the reference through
position-matched attention slowly (shapes world, oracle preservation after the 1,200-step copy
warm-up: 35% without, 72% with; experiments/shapes/reference_skip/).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from npedit import ops
from npedit.models.layers import MLP, SelfAttention, TimestepEmbedder, patchify, sincos_2d, unpatchify
from npedit.models.serialization import PretrainedModel, check_config_fields, check_positive
from npedit.ops.checkpoint import checkpointed

TARGET, REFERENCE = 0, 1  # frame ids; also the index of each token's conditioning vector


@dataclass
class DiTConfig:
    in_channels: int = 12
    sample_size: int = 16         # latent height = width the model is built for
    patch_size: int = 2
    dim: int = 128
    depth: int = 4
    heads: int = 4
    text_dim: int = 64
    mlp_ratio: float = 4.0
    norm: str = "layer"           # layer | rms: the norm inside adaLN modulation
    reference_skip: bool = False  # add a zero-initialised projection of the same-position reference patch

    def __post_init__(self):
        check_config_fields(self)
        check_positive(self, "in_channels", "sample_size", "patch_size", "dim", "depth", "heads", "text_dim",
                       "mlp_ratio")
        if self.sample_size % self.patch_size:
            raise ValueError(f"DiTConfig.sample_size ({self.sample_size}) must be divisible by "
                             f"patch_size ({self.patch_size})")
        if self.dim % self.heads or self.dim % 4:
            raise ValueError(f"DiTConfig.dim ({self.dim}) must be divisible by heads ({self.heads}) and by 4")
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"DiTConfig.norm must be 'layer' or 'rms', got {self.norm!r}")


def _modulation(ada: nn.Module, conds: torch.Tensor, token_cond: torch.Tensor | None) -> torch.Tensor:
    """conds [B, K, dim] -> per-token modulation [B, S, n*dim] (or [B, 1, n*dim] when K == 1)."""
    mod = ada(conds)  # [B, K, n*dim]: one Linear per distinct conditioning vector, not per token
    return mod if token_cond is None else mod[:, token_cond]


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm = config.norm
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(config.dim, 6 * config.dim))
        self.attn = SelfAttention(config.dim, config.heads, qk_norm=True)
        self.mlp = MLP(config.dim, int(config.dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor, conds: torch.Tensor, token_cond: torch.Tensor | None) -> torch.Tensor:
        """x [B, S, dim]; conds [B, K, dim]; token_cond [S] index into K (None when K == 1)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = _modulation(self.ada, conds, token_cond).chunk(6, dim=-1)
        x = x + gate1 * self.attn(ops.adaln_modulate(x, shift1, scale1, norm=self.norm))
        return x + gate2 * self.mlp(ops.adaln_modulate(x, shift2, scale2, norm=self.norm))


class FinalLayer(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm = config.norm
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(config.dim, 2 * config.dim))
        self.proj = nn.Linear(config.dim, config.patch_size ** 2 * config.in_channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, N, dim] target tokens; cond [B, 1, dim] -> [B, N, p*p*C]."""
        shift, scale = self.ada(cond).chunk(2, dim=-1)
        return self.proj(ops.adaln_modulate(x, shift, scale, norm=self.norm))


class DiTEmbeddings(nn.Module):
    """Input tokens and conditioning vectors."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch = nn.Linear(config.in_channels * config.patch_size ** 2, config.dim)
        self.text = nn.Linear(config.text_dim, config.dim)
        self.text_type = nn.Parameter(torch.randn(config.dim) * 0.02)
        self.frame = nn.Parameter(torch.randn(2, config.dim) * 0.02)  # [TARGET, REFERENCE]
        self.time = TimestepEmbedder(config.dim)
        self.pooled = nn.Linear(config.text_dim, config.dim)
        patch_values = config.in_channels * config.patch_size ** 2
        self.reference_skip = nn.Linear(patch_values, config.dim) if config.reference_skip else None

    def image_tokens(self, image: torch.Tensor, frame: int) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)(W/p), dim] with 2D sin-cos positions and the frame embedding."""
        tokens = self.patch(patchify(image, self.patch_size))
        pos = sincos_2d(image.shape[2] // self.patch_size, image.shape[3] // self.patch_size, tokens.shape[-1],
                        device=tokens.device, dtype=tokens.dtype)
        return tokens + pos + self.frame[frame]

    def forward(self, x_t, t, text, ref):
        """-> tokens [B, S, dim] in order [text, ref?, target], conds [B, K, dim] (K = 2 with ref)."""
        parts = [self.text(text) + self.text_type]
        if ref is not None:
            parts.append(self.image_tokens(ref, REFERENCE))
        target = self.image_tokens(x_t, TARGET)                                      # [B, N, dim]
        if ref is not None and self.reference_skip is not None:
            if ref.shape[2:] != x_t.shape[2:]:
                raise ValueError(f"reference_skip needs the reference and target latents the same size, got "
                                 f"{tuple(ref.shape[2:])} and {tuple(x_t.shape[2:])}")
            target = target + self.reference_skip(patchify(ref, self.patch_size))   # same patch grid
        parts.append(target)
        times = t if ref is None else torch.cat([t, torch.zeros_like(t)])
        temb = self.time(times).unflatten(0, (-1, x_t.shape[0])).transpose(0, 1)  # [B, K, dim]
        conds = temb + self.pooled(text.mean(dim=1))[:, None]
        return torch.cat(parts, dim=1), conds


class FlowDiT(PretrainedModel):
    """forward(x_t [B,C,H,W], t [B], text [B,L,text_dim], ref [B,C,H',W'] | None) -> v [B,C,H,W]."""

    config_class = DiTConfig
    model_type = "npedit-flow-dit"
    checkpointing: str = "none"   # set by the trainer: none | full | selective, per block

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        self.embed = DiTEmbeddings(config)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final = FinalLayer(config)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for mlp in self.embed.time.mlp[0], self.embed.time.mlp[2]:
            nn.init.normal_(mlp.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output as zero; the reference skip as zero
        zero = [block.ada[-1] for block in self.blocks] + [self.final.ada[-1], self.final.proj]
        zero += [self.embed.reference_skip] if self.embed.reference_skip is not None else []
        for linear in zero:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def with_reference_skip(self) -> "FlowDiT":
        """This model with a zero-initialised `reference_skip` added (itself if it has one): the same
        function until trained. Weights, dtype, device and train/eval mode are kept."""
        if self.config.reference_skip:
            return self
        param = self.embed.patch.weight
        with torch.random.fork_rng(devices=[]):   # the new layer is zeroed: leave the caller's RNG alone
            widened = FlowDiT(dataclasses.replace(self.config, reference_skip=True))
        widened.to(device=param.device, dtype=param.dtype)
        missing, unexpected = widened.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and sorted(missing) == ["embed.reference_skip.bias", "embed.reference_skip.weight"]
        widened.checkpointing = self.checkpointing
        return widened.train(self.training)

    def _check_latent(self, name: str, x: torch.Tensor, batch: int) -> None:
        c, p = self.config.in_channels, self.config.patch_size
        if x.ndim != 4 or x.shape[:2] != (batch, c) or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"{name} must be [{batch}, {c}, H, W] with H, W divisible by {p}, got {tuple(x.shape)}")

    def _check_inputs(self, x_t, t, text, ref) -> torch.Tensor:
        """Shape errors name the argument; returns t as fp32 [B]."""
        cfg = self.config
        self._check_latent("x_t", x_t, x_t.shape[0])
        if ref is not None:
            self._check_latent("ref", ref, x_t.shape[0])
        if text.ndim != 3 or text.shape[0] != x_t.shape[0] or text.shape[2] != cfg.text_dim or text.shape[1] == 0:
            raise ValueError(f"text must be [{x_t.shape[0]}, L >= 1, {cfg.text_dim}], got {tuple(text.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be a scalar or [{x_t.shape[0]}], got {tuple(t.shape)}")
        return t

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                ref: torch.Tensor | None = None) -> torch.Tensor:
        t = self._check_inputs(x_t, t, text, ref)
        dtype = self.embed.patch.weight.dtype
        tokens, conds = self.embed(x_t.to(dtype), t, text.to(dtype), None if ref is None else ref.to(dtype))
        num_target = (x_t.shape[2] // self.config.patch_size) * (x_t.shape[3] // self.config.patch_size)
        token_cond = None
        if ref is not None:
            token_cond = torch.full((tokens.shape[1],), TARGET, dtype=torch.long, device=tokens.device)
            token_cond[text.shape[1]:tokens.shape[1] - num_target] = REFERENCE
        for block in self.blocks:
            tokens = checkpointed(block, tokens, conds, token_cond, mode=self.checkpointing)
        out = self.final(tokens[:, -num_target:], conds[:, TARGET:TARGET + 1])  # crop to the target tokens
        v = unpatchify(out, self.config.in_channels, x_t.shape[2], x_t.shape[3], self.config.patch_size)
        return v.to(x_t.dtype)
