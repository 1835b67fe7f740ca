"""Adapters for the built-in models (FlowDiT, TextEncoder + WordTokenizer, TinyVLM, PatchCodec)."""
from __future__ import annotations

import torch
from torch import nn

from npedit.engine.zero_rows import binary_answer_loss_rows
from npedit.method.questions import NO, YES, Question


def module_dtype(module: nn.Module) -> torch.dtype:
    """Dtype of a module's parameters (works on ZeRO-3 partitioned parameters too)."""
    for p in module.parameters():
        return p.dtype
    return torch.float32


class BuiltinDiffusion:
    """Text conditioning, velocity calls and the latent codec of the built-in DiT family.

    Text embeddings are computed with one frozen text-encoder call per `encode_text` (never cached
    across calls: a per-rank cache would make ranks call the encoder a different number of times).
    """

    def __init__(self, text_encoder: nn.Module, tokenizer, codec: nn.Module, max_length: int):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.codec = codec
        self.max_length = max_length

    @property
    def device(self) -> torch.device:
        for p in self.text_encoder.parameters():
            return p.device
        return torch.device("cpu")

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> [N, L, text_dim] (padded to max_length; the DiT attends to pads, SD3-style)."""
        ids, mask = self.tokenizer.encode(list(prompts), max_length=self.max_length, pad_to_max=True)
        return self.text_encoder(ids.to(self.device), mask.to(self.device))

    @staticmethod
    def cat_text(conds: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate text conditionings along the batch (conditionings also support [a:b] slicing)."""
        return torch.cat(conds)

    def velocity(self, model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                 ref: torch.Tensor | None = None) -> torch.Tensor:
        """model(x_t [B,C,h,w], t [B], text [B,L,D], ref [B,C,h,w]) -> v [B,C,h,w] in fp32."""
        dtype = module_dtype(model.module if hasattr(model, "module") else model)
        cast = (lambda x: None if x is None else x.to(dtype))
        return model(cast(x_t), t.float(), cast(text), cast(ref)).float()  # t stays fp32 (bf16 keeps ~3 digits)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> latents [B, C, h, w] fp32."""
        return self.codec.encode(images.float())

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> [B, 3, H, W], nominally [0, 1] (not clamped: keeps the gradient)."""
        return self.codec.decode(latents.float())


class BuiltinJudge:
    """The built-in TinyVLM asked Yes/No questions; one VLM forward for all questions."""

    def __init__(self, vlm: nn.Module, tokenizer, max_text_len: int, answer_loss: str = "binary"):
        self.vlm = vlm
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.answer_loss = answer_loss
        self.yes_id = tokenizer.token_id(YES)
        self.no_id = tokenizer.token_id(NO)

    def answer_losses(self, questions: list[Question], edited: torch.Tensor, refs: torch.Tensor,
                      scale: float) -> torch.Tensor:
        """edited [B,3,H,W] (with grad), refs [B,3,H,W] in [0,1] -> per-question loss [Q] fp32."""
        vlm = self.vlm
        device = edited.device
        dtype = module_dtype(vlm)
        feats_edit = vlm.encode_images(edited.to(dtype))            # [B, P, D]
        with torch.no_grad():
            feats_ref = vlm.encode_images(refs.to(dtype))           # [B, P, D], no gradient needed
        slots = vlm.config.max_images
        rows, present = [], []
        for q in questions:
            feats = [feats_ref[q.sample] if name == "ref" else feats_edit[q.sample] for name in q.images]
            present.append([True] * len(feats) + [False] * (slots - len(feats)))
            feats += [torch.zeros_like(feats_edit[0])] * (slots - len(feats))
            rows.append(torch.stack(feats))
        image_feats = torch.stack(rows)                              # [Q, slots, P, D]
        present_t = torch.tensor(present, dtype=torch.bool, device=device)
        ids, mask = self.tokenizer.encode([q.text for q in questions], max_length=self.max_text_len,
                                          pad_to_max=True, add_bos=True)
        hidden = vlm.answer_hidden(image_feats, present_t, ids.to(device), mask.to(device))  # [Q, D]
        correct = torch.tensor([self.yes_id if q.answer == YES else self.no_id for q in questions], device=device)
        if self.answer_loss == "vocab":
            return vlm.lm_head(hidden, target_ids=correct, scale=scale)
        wrong = torch.tensor([self.no_id if q.answer == YES else self.yes_id for q in questions], device=device)
        # the head's weight, not vlm.lm_head(...): under ZeRO-3 only the Yes/No rows are gathered
        return binary_answer_loss_rows(hidden, vlm.lm_head.weight, correct, wrong, scale)
