"""Yes/No questions put to the VLM judge, per edit category (METHOD.md, step 2).

Two styles of question, chosen by `method.question_style`:
- "instruction" (the paper's): edit verification shows (reference, edited) and quotes the
  instruction; removals ask whether the object is still in the edited image.
- "caption": generic visual questions a judge can answer without ever having seen an edit request:
  does the edited image show the wanted result's caption; is the removed object gone; apart from
  the named object, are the two images the same. The shapes world's toy judge is trained on such
  generic questions only.
Every sample yields the same number of questions, so every rank makes identical judge calls under
ZeRO-3. A question names the images it shows, in slot order: "ref" and/or "edit".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from npedit.data.example import EditBatch

YES, NO = "yes", "no"
DO_NOTHING = "do nothing"
QUESTION_STYLES = ("instruction", "caption")

EDIT_TEMPLATE = "the first image is the input . was the edit \" {instruction} \" carried out in the second image ?"
CAPTION_TEMPLATE = "does the image show {caption} ?"
PRESENT_TEMPLATE = "is there a {object} in the image ?"
IDENTITY_TEMPLATE = ("apart from the edit \" {instruction} \" , is everything else in the two images "
                     "the same ?")
SAME_EXCEPT_TEMPLATE = "apart from the {object} , are the two images the same ?"


@dataclass(frozen=True)
class Question:
    sample: int               # index of the sample in the batch
    images: tuple[str, ...]   # slots in order: ("ref", "edit") or ("edit",)
    text: str
    answer: str               # YES or NO


def edit_question(sample: int, instruction: str, category: str, obj: str, target_caption: str = "",
                  style: str = "instruction") -> Question:
    if category == "remove" and obj:
        return Question(sample, ("edit",), PRESENT_TEMPLATE.format(object=obj), NO)
    if style == "caption":
        return Question(sample, ("edit",), CAPTION_TEMPLATE.format(caption=target_caption), YES)
    return Question(sample, ("ref", "edit"), EDIT_TEMPLATE.format(instruction=instruction), YES)


def identity_question(sample: int, instruction: str, obj: str = "", style: str = "instruction") -> Question:
    if style == "caption":
        return Question(sample, ("ref", "edit"), SAME_EXCEPT_TEMPLATE.format(object=obj or "background"), YES)
    return Question(sample, ("ref", "edit"), IDENTITY_TEMPLATE.format(instruction=instruction), YES)


def build_questions(batch: EditBatch, identity: bool = True, skip: torch.Tensor | None = None,
                    style: str = "instruction") -> tuple[list[Question], torch.Tensor]:
    """-> (questions, weights [Q]); samples flagged in skip [B] (do-nothing) get weight 0."""
    if style not in QUESTION_STYLES:
        raise ValueError(f"question style must be one of {QUESTION_STYLES}, got {style!r}")
    questions, weights = [], []
    for i in range(len(batch)):
        qs = [edit_question(i, batch.instructions[i], batch.categories[i], batch.objects[i],
                            batch.target_captions[i], style)]
        if identity:
            qs.append(identity_question(i, batch.instructions[i], batch.objects[i], style))
        keep = 0.0 if skip is not None and bool(skip[i]) else 1.0
        questions += qs
        weights += [keep] * len(qs)
    return questions, torch.tensor(weights, dtype=torch.float32)


def question_vocabulary() -> list[str]:
    """Words the templates add beyond instructions, captions and object names (word-level tokenizers)."""
    text = " ".join([EDIT_TEMPLATE, CAPTION_TEMPLATE, PRESENT_TEMPLATE, IDENTITY_TEMPLATE, SAME_EXCEPT_TEMPLATE,
                     YES, NO, DO_NOTHING, "background"])
    for slot in ("{instruction}", "{object}", "{caption}"):
        text = text.replace(slot, " ")
    return sorted(set(text.split()))
