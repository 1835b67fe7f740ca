"""Stage 1 of the toy judge: what is in each grid cell, read off the image tokens.

The vision tower + projector are first trained so that every image token (in the LM's space) tells,
through small linear probes that are thrown away afterwards, what the renderer put in the grid cell
under it (nothing / which shape, which colour, which size) and which background the image has. These
are generic recognition labels of random scenes (the renderer's ground truth), like the
classification pretraining of a VLM's vision encoder; the LM stage then only has to learn to route
words to the right tokens. With VLMConfig(image_size=48, patch_size=16) the 3x3 tokens are the 3x3
cells (the VLM upsamples the world's 32 px images itself).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from npedit.data.shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene, cell_bounds, random_scene, render
from npedit.models.vlm import TinyVLM


def token_cells(vlm: TinyVLM, world_size: int) -> list[int]:
    """Grid cell (POSITIONS index) under the centre of each image token, row-major tokens."""
    grid = vlm.config.image_size // vlm.config.patch_size
    edges = [cell_bounds(world_size, i) for i in range(len(POSITIONS))]
    cells = []
    for r in range(grid):
        for c in range(grid):
            y, x = (r + 0.5) / grid * world_size, (c + 0.5) / grid * world_size
            cells.append(next(i for i, (r0, r1, c0, c1) in enumerate(edges) if r0 <= y < r1 and c0 <= x < c1))
    return cells


def cell_targets(scenes: list[Scene], cells: list[int]) -> dict[str, torch.Tensor]:
    """Per image and token: shape (0 = empty, 1.. = SHAPES), colour / size (-100 where empty), background."""
    shape, color, size = [], [], []
    for scene in scenes:
        where = {POSITIONS.index(o.position): o for o in scene.objects}
        objs = [where.get(cell) for cell in cells]
        shape.append([0 if o is None else 1 + SHAPES.index(o.shape) for o in objs])
        color.append([-100 if o is None else list(COLORS).index(o.color) for o in objs])
        size.append([-100 if o is None else SIZES.index(o.size) for o in objs])
    background = [[list(BACKGROUNDS).index(s.background)] * len(cells) for s in scenes]
    return {k: torch.tensor(v) for k, v in
            (("shape", shape), ("color", color), ("size", size), ("background", background))}


class CellProbes(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleDict({"shape": nn.Linear(dim, 1 + len(SHAPES)), "color": nn.Linear(dim, len(COLORS)),
                                    "size": nn.Linear(dim, len(SIZES)), "background": nn.Linear(dim, len(BACKGROUNDS))})

    def forward(self, tokens: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """tokens [N, P, dim] -> (summed cross-entropies, shape accuracy)."""
        loss = tokens.new_zeros(())
        for name, head in self.heads.items():
            logits = head(tokens)                                            # [N, P, classes]
            loss = loss + F.cross_entropy(logits.flatten(0, 1), targets[name].flatten(), ignore_index=-100)
        acc = (self.heads["shape"](tokens).argmax(-1) == targets["shape"]).float().mean()
        return loss, float(acc)


def pretrain_vision(vlm: TinyVLM, steps: int, batch_size: int, lr: float, world_size: int, rng: random.Random,
                    augment) -> float:
    """Train vlm.vision + vlm.projector on cell probes for `steps` steps; -> final shape accuracy."""
    cells = token_cells(vlm, world_size)
    device = next(vlm.parameters()).device
    probes = CellProbes(vlm.config.dim).to(device)
    params = list(vlm.vision.parameters()) + list(vlm.projector.parameters()) + list(probes.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    acc = 0.0
    for step in range(steps):
        scenes = [random_scene(rng) for _ in range(batch_size)]
        images = augment(torch.stack([render(s, world_size) for s in scenes])).to(device)
        targets = {k: v.to(device) for k, v in cell_targets(scenes, cells).items()}
        loss, batch_acc = probes(vlm.encode_images(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc = batch_acc if step == 0 else 0.95 * acc + 0.05 * batch_acc
    return acc
