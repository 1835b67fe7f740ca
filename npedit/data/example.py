"""One unpaired training example, a batch of them, and the edit categories.

NP-Edit trains on (reference image, instruction, category, object, caption of the wanted result):
there is no target image anywhere in this type, on purpose.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Lower-case category names used everywhere (configs, manifests, questions, CFG scale choice).
CATEGORIES = ("add", "remove", "replace", "color", "move", "background",
              "adjust", "action", "style", "text", "material")


@dataclass
class EditExample:
    """One unpaired edit request on a reference image."""
    image: torch.Tensor      # [3, H, W] float32 in [0, 1]: the reference image
    caption: str             # caption of the reference image ("" if unknown; used by the warm-up stage)
    instruction: str
    category: str            # one of CATEGORIES
    object: str              # the object the edit names ("" when none), e.g. "red circle"
    target_caption: str      # caption of the wanted result
    dmd_caption: str = ""    # the real and fake scores' prompt when it differs from target_caption ("" = it)

    def __post_init__(self):
        if not isinstance(self.image, torch.Tensor) or self.image.dim() != 3 or self.image.shape[0] != 3:
            shape = tuple(self.image.shape) if isinstance(self.image, torch.Tensor) else type(self.image)
            raise ValueError(f"EditExample.image must be a [3, H, W] tensor, got {shape}")
        if self.category not in CATEGORIES:
            raise ValueError(f"EditExample.category {self.category!r} is not one of {', '.join(CATEGORIES)}")


@dataclass
class EditBatch:
    """A batch of EditExample; the text fields are plain lists, one entry per example."""
    images: torch.Tensor     # [B, 3, H, W] float32 in [0, 1]
    captions: list[str]
    instructions: list[str]
    categories: list[str]
    objects: list[str]
    target_captions: list[str]
    dmd_captions: list[str] | None = None   # per example, "" = its target caption; None = all ""

    def __len__(self) -> int:
        return len(self.instructions)

    def dmd_target_captions(self) -> list[str]:
        """The caption of the wanted result the DMD scores are prompted with, per example (its own DMD
        caption where it has one, else its target caption; method.step.dmd_prompts applies the do-nothing
        and unconditional cases on top)."""
        own = self.dmd_captions or [""] * len(self)
        return [d or t for d, t in zip(own, self.target_captions)]

    def to(self, device=None, dtype=None) -> "EditBatch":
        """A copy with the images moved / cast (text lists are copied; dtype applies to images only)."""
        return EditBatch(images=self.images.to(device=device, dtype=dtype),
                         captions=list(self.captions), instructions=list(self.instructions),
                         categories=list(self.categories), objects=list(self.objects),
                         target_captions=list(self.target_captions),
                         dmd_captions=None if self.dmd_captions is None else list(self.dmd_captions))

    def __getitem__(self, i: int) -> EditExample:
        return EditExample(image=self.images[i], caption=self.captions[i], instruction=self.instructions[i],
                           category=self.categories[i], object=self.objects[i],
                           target_caption=self.target_captions[i],
                           dmd_caption=self.dmd_captions[i] if self.dmd_captions else "")


def collate(examples: list[EditExample]) -> EditBatch:
    """Stack examples into a batch; all images must have the same shape."""
    if not examples:
        raise ValueError("collate needs at least one example")
    shapes = {tuple(e.image.shape) for e in examples}
    if len(shapes) != 1:
        raise ValueError(f"collate: examples have different image shapes {sorted(shapes)}; "
                         "resize them to one image_size first")
    return EditBatch(
        images=torch.stack([e.image for e in examples]).to(torch.float32),
        captions=[e.caption for e in examples],
        instructions=[e.instruction for e in examples],
        categories=[e.category for e in examples],
        objects=[e.object for e in examples],
        target_captions=[e.target_caption for e in examples],
        dmd_captions=[e.dmd_caption for e in examples] if any(e.dmd_caption for e in examples) else None,
    )
