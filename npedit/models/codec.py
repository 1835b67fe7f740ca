"""Latent codec of the built-in world: parameter-free, differentiable, invertible.

latent = pixel_unshuffle(2 x - 1, f): f x f pixel blocks become channels, values in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npedit.models.serialization import PretrainedModel, check_config_fields, check_positive


@dataclass
class CodecConfig:
    factor: int = 2
    image_channels: int = 3

    def __post_init__(self):
        check_config_fields(self)
        check_positive(self, "factor", "image_channels")


class PatchCodec(PretrainedModel):
    """encode [B, C, H, W] in [0, 1] -> [B, C f², H/f, W/f]; decode is its inverse (no clamp).

    Round trip is exact in floating point wherever 2x - 1 is (e.g. x on a k/2^n grid, or x >= 1/4);
    elsewhere it is off by one rounding of 2x - 1 (at most 2^-26 in fp32).
    """

    config_class = CodecConfig
    model_type = "npedit-patch-codec"

    @property
    def latent_channels(self) -> int:
        return self.config.image_channels * self.config.factor ** 2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        f, c = self.config.factor, self.config.image_channels
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"images must be [B, {c}, H, W] with H, W divisible by {f}, got {tuple(images.shape)}")
        return F.pixel_unshuffle(2 * images - 1, f)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, h, w], got {tuple(latents.shape)}")
        return (F.pixel_shuffle(latents, self.config.factor) + 1) / 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Round trip decode(encode(images))."""
        return self.decode(self.encode(images))
