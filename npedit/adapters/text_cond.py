"""Text conditioning of the diffusers students: frozen CLIP / T5 encoders run once per prompt batch.

`encode_*` follow the pipelines' `encode_prompt` (StableDiffusion3Pipeline, FluxPipeline) so the
teacher sees exactly the conditioning it was trained with. They run without gradient; each call
makes one forward per encoder (no caching across calls: ranks must make identical module calls
under ZeRO-3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TextCond:
    """Conditioning of a prompt batch: sequence embeddings and pooled embeddings, sliced together."""
    tokens: torch.Tensor    # [N, L, D]
    pooled: torch.Tensor    # [N, P]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> TextCond:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TextCond(self.tokens[index], self.pooled[index])

    def to(self, *args, **kwargs) -> TextCond:
        return TextCond(self.tokens.to(*args, **kwargs), self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(conds: list[TextCond]) -> TextCond:
        lengths = {c.tokens.shape[1] for c in conds}
        if len(lengths) != 1:
            raise ValueError(f"TextCond.cat: conditionings have different sequence lengths {sorted(lengths)}")
        return TextCond(torch.cat([c.tokens for c in conds]), torch.cat([c.pooled for c in conds]))


def _device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _ids(tokenizer, prompts: list[str], max_length: int, device) -> torch.Tensor:
    """Token ids padded / truncated to max_length (the pipelines' tokenisation)."""
    out = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    return out.input_ids.to(device)


@torch.no_grad()
def clip_embeds(tokenizer, encoder: nn.Module, prompts: list[str], penultimate: bool):
    """-> (hidden [N, 77, D] (penultimate layer if asked, else None), pooled [N, P])."""
    ids = _ids(tokenizer, prompts, tokenizer.model_max_length, _device(encoder))
    out = encoder(ids, output_hidden_states=penultimate)
    pooled = out[0] if penultimate else out.pooler_output  # text_embeds (with projection) | pooler_output
    return (out.hidden_states[-2] if penultimate else None), pooled


@torch.no_grad()
def t5_embeds(tokenizer, encoder: nn.Module, prompts: list[str], max_length: int) -> torch.Tensor:
    """-> last hidden state [N, max_length, D]."""
    return encoder(_ids(tokenizer, prompts, max_length, _device(encoder)))[0]


@torch.no_grad()
def encode_sd3(prompts: list[str], clips: list[tuple], t5: tuple | None, max_length: int,
               joint_dim: int) -> TextCond:
    """StableDiffusion3Pipeline.encode_prompt (clip_skip None): CLIP-L and CLIP-G penultimate states
    side by side, zero-padded to the T5 width, followed by the T5 states; pooled = both CLIP projections."""
    hidden, pooled = zip(*(clip_embeds(tok, enc, prompts, penultimate=True) for tok, enc in clips))
    clip_hidden = torch.cat(hidden, dim=-1)                                 # [N, 77, D_l + D_g]
    if t5 is not None:
        t5_hidden = t5_embeds(t5[0], t5[1], prompts, max_length)            # [N, max_length, joint]
    else:
        t5_hidden = clip_hidden.new_zeros(len(prompts), max_length, joint_dim)
    clip_hidden = F.pad(clip_hidden, (0, t5_hidden.shape[-1] - clip_hidden.shape[-1]))
    return TextCond(torch.cat([clip_hidden, t5_hidden.to(clip_hidden.dtype)], dim=-2), torch.cat(pooled, dim=-1))


@torch.no_grad()
def encode_flux(prompts: list[str], clip: tuple, t5: tuple, max_length: int) -> TextCond:
    """FluxPipeline.encode_prompt: T5 last hidden state as the sequence, CLIP pooler output as pooled."""
    _, pooled = clip_embeds(clip[0], clip[1], prompts, penultimate=False)
    return TextCond(t5_embeds(t5[0], t5[1], prompts, max_length), pooled)
