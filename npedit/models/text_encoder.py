"""Small bidirectional text encoder (the built-in world's stand-in for T5 / CLIP)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from npedit.engine.zero_rows import gather_rows
from npedit.models.layers import (
    TransformerBlock,
    init_transformer_weights,
    right_padded_lengths,
)
from npedit.models.serialization import (
    PretrainedModel,
    check_config_fields,
    check_positive,
)


@dataclass
class TextEncoderConfig:
    vocab_size: int
    dim: int = 64
    depth: int = 2
    heads: int = 4
    max_length: int = 24

    def __post_init__(self):
        check_config_fields(self)
        check_positive(self, "vocab_size", "dim", "depth", "heads", "max_length")
        if self.dim % self.heads:
            raise ValueError(f"TextEncoderConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")


class TextEmbeddings(nn.Module):
    row_gathered = ("token",)   # read through zero_rows.gather_rows: ZeRO-3 never gathers the whole table

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.dim)
        self.position = nn.Parameter(torch.randn(config.max_length, config.dim) * 0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # the table through gather_rows, not self.token(...): under ZeRO-3 only the used rows are gathered
        return gather_rows(self.token.weight, input_ids) + self.position[:input_ids.shape[1]]


class TextEncoder(PretrainedModel):
    """input_ids [B, L], mask [B, L] -> [B, L, dim]; zeros at pad positions.

    The real tokens of each row are packed and attend only to each other (`ops.attention_varlen`),
    so the output does not depend on how much padding there is.
    """

    config_class = TextEncoderConfig
    model_type = "npedit-text-encoder"

    def __init__(self, config: TextEncoderConfig):
        super().__init__(config)
        self.embed = TextEmbeddings(config)
        self.blocks = nn.ModuleList(TransformerBlock(config.dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.apply(init_transformer_weights)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length = input_ids.shape
        if length > self.config.max_length:
            raise ValueError(f"text of {length} tokens is longer than TextEncoder max_length={self.config.max_length}")
        if mask.shape != input_ids.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
        lengths = right_padded_lengths(mask, "text mask")
        cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))  # [B + 1]
        x = self.embed(input_ids)[mask]  # packed real tokens [T, dim]
        for block in self.blocks:
            x = block(x, cu_seqlens=cu_seqlens, max_seqlen=length)
        out = x.new_zeros(b, length, x.shape[-1])
        out[mask] = self.norm(x)
        return out
