"""The plain stack's judge: what a first implementation with transformers does.

Each question's images go through the vision tower with the question (`model(**inputs)` style: the
edited image is encoded once per question that shows it, in one batch with the references, so the
whole batch keeps its activations for backward), the language model returns logits for every
position of the sequence ([Q, T, V], then upcast to fp32), and the answer loss reads the answer
position. The loss values equal the judge's; only the memory and time differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from npedit.method.questions import YES, Question

__all__ = ["PlainBuiltinJudge", "PlainHFJudge", "plain_judge"]


def _answer_loss(answer_logits: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor | None,
                 scale: float, mode: str) -> torch.Tensor:
    """answer_logits [Q, V] fp32 -> loss [Q] (binary: -log sigmoid(scale (l_c - l_w)); vocab: CE)."""
    if mode == "vocab":
        return F.cross_entropy(scale * answer_logits, correct, reduction="none")
    rows = torch.arange(answer_logits.shape[0], device=answer_logits.device)
    margin = answer_logits[rows, correct] - answer_logits[rows, wrong]
    return -F.logsigmoid(scale * margin)


def _slot_images(questions: list[Question], edited: torch.Tensor, refs: torch.Tensor) -> list[list[torch.Tensor]]:
    return [[refs[q.sample] if name == "ref" else edited[q.sample] for name in q.images] for q in questions]


class PlainBuiltinJudge:
    """The built-in TinyVLM through its full forward (`TinyVLM.forward`: logits at every text position)."""

    def __init__(self, judge):
        self.inner = judge

    def answer_losses(self, questions: list[Question], edited: torch.Tensor, refs: torch.Tensor,
                      scale: float) -> torch.Tensor:
        j = self.inner
        vlm, device = j.vlm, edited.device
        slots = vlm.config.max_images
        dtype = next(vlm.parameters()).dtype
        rows, present = [], []
        for images in _slot_images(questions, edited.to(dtype), refs.to(dtype)):
            present.append([True] * len(images) + [False] * (slots - len(images)))
            rows.append(torch.stack(images + [torch.zeros_like(edited[0], dtype=dtype)] * (slots - len(images))))
        images = torch.stack(rows)                                                   # [Q, M, 3, H, W]
        present_t = torch.tensor(present, dtype=torch.bool, device=device)
        ids, mask = j.tokenizer.encode([q.text for q in questions], max_length=j.max_text_len, pad_to_max=True,
                                       add_bos=True)
        logits = vlm(images, present_t, ids.to(device), mask.to(device)).float()     # [Q, L, V]
        answer_pos = mask.sum(1) - 1
        answer = logits[torch.arange(len(questions), device=device), answer_pos.to(device)]
        correct = torch.tensor([j.yes_id if q.answer == YES else j.no_id for q in questions], device=device)
        wrong = torch.tensor([j.no_id if q.answer == YES else j.yes_id for q in questions], device=device)
        return _answer_loss(answer, correct, wrong, scale, j.answer_loss)


class PlainHFJudge:
    """A transformers judge with per-question vision features and full-sequence logits."""

    def __init__(self, judge):
        self.inner = judge

    def answer_losses(self, questions: list[Question], edited: torch.Tensor, refs: torch.Tensor,
                      scale: float) -> torch.Tensor:
        module, spec = self.inner.module, self.inner.spec
        fam, vlm = module.family, module.vlm
        device = edited.device
        ids, mask, pos = spec.tokenize(questions, device)
        per_slot = _slot_images(questions, edited, refs)
        flat = torch.stack([img for images in per_slot for img in images])           # [sum slots, 3, H, W]
        feats = fam.image_features(vlm, fam.pixels(flat))
        per_question, i = [], 0
        for images in per_slot:
            per_question += fam.question_features(vlm, feats[i:i + len(images)])
            i += len(images)
        out = vlm.model(input_ids=ids, attention_mask=mask, use_cache=False,
                        mm_encoder_outputs={"image": fam.encoder_output(per_question)},
                        **fam.lm_kwargs(ids, len(flat)))
        logits = vlm.get_output_embeddings()(out.last_hidden_state).float()          # [Q, T, V]
        answer = logits[torch.arange(len(questions), device=device), pos]
        yes = torch.tensor([q.answer == YES for q in questions], device=device)
        correct = torch.where(yes, spec.yes_id, spec.no_id)
        wrong = torch.where(yes, spec.no_id, spec.yes_id)
        return _answer_loss(answer, correct, wrong, scale, spec.answer_loss)


def plain_judge(judge):
    """The plain-stack counterpart of a judge adapter (BuiltinJudge or HFJudge)."""
    from npedit.adapters.builtin import BuiltinJudge

    return PlainBuiltinJudge(judge) if isinstance(judge, BuiltinJudge) else PlainHFJudge(judge)

