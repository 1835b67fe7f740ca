"""Pieces shared by the pretraining loops: vocabulary, weight EMA, LR schedule, threads."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from npedit.build import default_words
from npedit.models.tokenizer import WordTokenizer


def shapes_tokenizer(extra_texts: list[str] = ()) -> WordTokenizer:
    """Word tokenizer of the shapes world: the trainer's default vocabulary plus `extra_texts`' words."""
    return WordTokenizer.from_words(default_words(list(extra_texts)))


class EMA:
    """Exponential moving average of a model's parameters (buffers copied): the weights that ship."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))   # short memory at the start
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1 - decay)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.05) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
