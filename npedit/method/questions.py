"""Yes/No questions put to the VLM judge, per edit category (METHOD.md, step 2).

Every sample yields the same number of questions (edit verification, and identity preservation
when enabled), so every rank makes identical judge calls under ZeRO-3. A question names the images
it shows, in slot order: "ref" (the reference) and/or "edit" (the student's output).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from npedit.data.example import EditBatch

YES, NO = "yes", "no"
DO_NOTHING = "do nothing"

EDIT_TEMPLATE = "the first image is the input . was the edit \" {instruction} \" carried out in the second image ?"
REMOVE_TEMPLATE = "is there a {object} in the image ?"
IDENTITY_TEMPLATE = ("apart from the edit \" {instruction} \" , is everything else in the two images "
                     "the same ?")


@dataclass(frozen=True)
class Question:
    sample: int               # index of the sample in the batch
    images: tuple[str, ...]   # slots in order: ("ref", "edit") or ("edit",)
    text: str
    answer: str               # YES or NO


def edit_question(sample: int, instruction: str, category: str, obj: str) -> Question:
    if category == "remove" and obj:
        return Question(sample, ("edit",), REMOVE_TEMPLATE.format(object=obj), NO)
    return Question(sample, ("ref", "edit"), EDIT_TEMPLATE.format(instruction=instruction), YES)


def identity_question(sample: int, instruction: str) -> Question:
    return Question(sample, ("ref", "edit"), IDENTITY_TEMPLATE.format(instruction=instruction), YES)


def build_questions(batch: EditBatch, identity: bool = True,
                    skip: torch.Tensor | None = None) -> tuple[list[Question], torch.Tensor]:
    """-> (questions, weights [Q]); samples flagged in skip [B] (do-nothing) get weight 0."""
    questions, weights = [], []
    for i in range(len(batch)):
        qs = [edit_question(i, batch.instructions[i], batch.categories[i], batch.objects[i])]
        if identity:
            qs.append(identity_question(i, batch.instructions[i]))
        keep = 0.0 if skip is not None and bool(skip[i]) else 1.0
        questions += qs
        weights += [keep] * len(qs)
    return questions, torch.tensor(weights, dtype=torch.float32)


def question_vocabulary() -> list[str]:
    """Words the templates add beyond instructions and object names (for word-level tokenizers)."""
    text = " ".join([EDIT_TEMPLATE, REMOVE_TEMPLATE, IDENTITY_TEMPLATE, YES, NO, DO_NOTHING])
    for slot in ("{instruction}", "{object}"):
        text = text.replace(slot, " ")
    return sorted(set(text.split()))
