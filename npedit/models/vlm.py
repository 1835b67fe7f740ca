"""Small VLM judge: ViT image encoder + MLP projector + causal LM with next-token logits.

LM sequence per question: [image slot 0 tokens, ..., image slot M-1 tokens, text tokens]; an absent
slot holds a learned "no image" embedding. Text is right-padded, so with causal attention the
answer position (last real text token) never sees the pads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from npedit import ops
from npedit.engine.zero_rows import gather_rows
from npedit.models.layers import (
    TransformerBlock,
    init_transformer_weights,
    patchify,
    right_padded_lengths,
)
from npedit.models.serialization import (
    PretrainedModel,
    check_config_fields,
    check_positive,
)
from npedit.ops.checkpoint import checkpointed


@dataclass
class VLMConfig:
    vocab_size: int
    image_size: int = 32
    patch_size: int = 4
    vision_dim: int = 64
    vision_depth: int = 2
    dim: int = 128
    depth: int = 3
    heads: int = 4
    max_images: int = 2
    max_text_len: int = 32
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        check_config_fields(self)
        check_positive(self, "vocab_size", "image_size", "patch_size", "vision_dim", "vision_depth", "dim", "depth",
                       "heads", "max_images", "max_text_len")
        if self.image_size % self.patch_size:
            raise ValueError(f"VLMConfig.image_size ({self.image_size}) must be divisible by "
                             f"patch_size ({self.patch_size})")
        for name in ("dim", "vision_dim"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"VLMConfig.{name} ({getattr(self, name)}) must be divisible by heads ({self.heads})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"VLMConfig.image_mean/image_std must hold 3 values (std > 0), "
                             f"got {self.image_mean}, {self.image_std}")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class LMHead(nn.Module):
    """Vocabulary head; the answer losses run inside forward so ZeRO-3 gathers `weight` around them."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, dim) * 0.02)  # [V, dim]

    def forward(self, hidden: torch.Tensor, pos_ids: torch.Tensor | None = None, neg_ids: torch.Tensor | None = None,
                target_ids: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        """No ids: logits [..., V]. pos_ids + neg_ids [Q]: Yes/No loss [Q]. target_ids [Q]: vocab CE [Q].

        Loss modes take hidden [Q, dim] (the answer positions) and return fp32.
        """
        if (pos_ids is None) != (neg_ids is None):
            raise ValueError("LMHead: pos_ids and neg_ids must be given together")
        if pos_ids is not None and target_ids is not None:
            raise ValueError("LMHead: give either pos_ids/neg_ids (binary loss) or target_ids (vocab loss), not both")
        if pos_ids is not None:
            return ops.binary_answer_loss(hidden, self.weight, pos_ids, neg_ids, scale)
        if target_ids is not None:
            return ops.vocab_answer_loss(hidden, self.weight, target_ids, scale)
        return F.linear(hidden, self.weight)


class VisionTower(nn.Module):
    """Normalised pixels [N, 3, S, S] -> [N, P, vision_dim] (bidirectional ViT)."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch = nn.Linear(3 * config.patch_size ** 2, config.vision_dim)
        self.position = nn.Parameter(torch.randn(config.num_image_tokens, config.vision_dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(config.vision_dim, config.heads)
                                    for _ in range(config.vision_depth))
        self.norm = nn.LayerNorm(config.vision_dim)

    def forward(self, pixels: torch.Tensor, checkpointing: str = "none") -> torch.Tensor:
        x = self.patch(patchify(pixels.to(self.patch.weight.dtype), self.patch_size)) + self.position
        for block in self.blocks:
            x = checkpointed(block, x, mode=checkpointing)
        return self.norm(x)


class LMEmbeddings(nn.Module):
    """Image slots + text tokens -> LM input sequence [Q, M*P + L, dim] with learned positions."""

    row_gathered = ("token",)   # read through zero_rows.gather_rows: ZeRO-3 never gathers the whole table

    def __init__(self, config: VLMConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.dim)
        self.no_image = nn.Parameter(torch.randn(config.dim) * 0.02)
        self.position = nn.Parameter(
            torch.randn(config.max_images * config.num_image_tokens + config.max_text_len, config.dim) * 0.02)

    def forward(self, image_feats: torch.Tensor, image_present: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        text = gather_rows(self.token.weight, input_ids)  # [Q, L, dim]; ZeRO-3: only the used rows gathered
        images = torch.where(image_present[:, :, None, None], image_feats.to(text.dtype), self.no_image)
        x = torch.cat([images.flatten(1, 2), text], dim=1)
        return x + self.position[:x.shape[1]]


class TinyVLM(PretrainedModel):
    config_class = VLMConfig
    model_type = "npedit-tiny-vlm"
    answer_rows = ("lm_head",)   # the Yes/No answer loss reads two rows of it (zero_rows), never the whole
    # none | full | selective, per block of the vision tower and the LM (`npedit.ops.checkpoint`). For the
    # frozen judge in the student loss only the activations for the gradient to the image are needed:
    # checkpointing keeps each block's input (selective: and its attention output) and recomputes the rest
    # in backward, block by block. Same values and gradients as "none".
    checkpointing: str = "none"

    def __init__(self, config: VLMConfig):
        super().__init__(config)
        self.vision = VisionTower(config)
        self.projector = nn.Sequential(nn.Linear(config.vision_dim, config.dim), nn.GELU(approximate="tanh"),
                                       nn.Linear(config.dim, config.dim))
        self.embed = LMEmbeddings(config)
        self.blocks = nn.ModuleList(TransformerBlock(config.dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.lm_head = LMHead(config.dim, config.vocab_size)
        self.apply(init_transformer_weights)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, 3, S, S] normalised; antialiased bilinear resize, differentiable."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        mean = images.new_tensor(self.config.image_mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.config.image_std).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> LM-space image tokens [N, P, dim]."""
        return self.projector(self.vision(self.preprocess(images), self.checkpointing))

    def _trunk(self, image_feats, image_present, input_ids, attention_mask) -> torch.Tensor:
        """-> hidden states [Q, M*P + L, dim] before the final norm."""
        cfg = self.config
        q, length = input_ids.shape
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}")
        expected = (q, cfg.max_images, cfg.num_image_tokens, cfg.dim)
        if tuple(image_feats.shape) != expected:
            raise ValueError(f"image_feats must be {list(expected)}, got {list(image_feats.shape)}")
        if image_present.dtype != torch.bool or tuple(image_present.shape) != (q, cfg.max_images):
            raise ValueError(f"image_present must be bool [{q}, {cfg.max_images}], "
                             f"got {image_present.dtype} {list(image_present.shape)}")
        if length > cfg.max_text_len:
            raise ValueError(f"text of {length} tokens is longer than VLM max_text_len={cfg.max_text_len}")
        x = self.embed(image_feats, image_present, input_ids)
        for block in self.blocks:
            x = checkpointed(block, x, True, mode=self.checkpointing)   # causal
        return x

    def answer_hidden(self, image_feats: torch.Tensor, image_present: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        """-> final-norm hidden state at each question's last real text token [Q, dim]."""
        lengths = right_padded_lengths(attention_mask, "attention_mask", min_length=1)
        hidden = self._trunk(image_feats, image_present, input_ids, attention_mask)
        answer_pos = hidden.shape[1] - input_ids.shape[1] + lengths - 1  # [Q]
        return self.norm(hidden[torch.arange(hidden.shape[0], device=hidden.device), answer_pos])

    def forward(self, images: torch.Tensor, image_present: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """images [Q, M, 3, H, W] in [0, 1] -> logits [Q, L, V] at every text position (absent slots ignored)."""
        feats = self.encode_images(images.flatten(0, 1)).unflatten(0, images.shape[:2])
        hidden = self._trunk(feats, image_present, input_ids, attention_mask)
        return self.lm_head(self.norm(hidden[:, -input_ids.shape[1]:]))
