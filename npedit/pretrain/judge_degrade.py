"""Student-like renders for the judge: a scene drawn imperfectly, its answers unchanged.

What a few-step student draws is off the clean renderer's distribution (`experiments/shapes/JUDGE.md`):
objects a little off-colour, faded, soft-edged, blocky colour noise, faint ghosts
of objects that are not there. A judge trained on clean renders only is unsure on such images (on
removals it says "gone" with p 0.3-0.4 whether the object is gone or not), so its reward cannot tell
the student which way to go. `render_degraded` draws a scene with such faults, each kept within the
bounds where the image still shows that scene, so the renderer's answer to every question holds:

- every object keeps at least MIN_OPACITY of its colour over the background, its cell and its pixels
  (no shift: the oracle's template fit reads a triangle moved by one pixel as another shape), and
  stays within COLOR_JITTER of its palette colour (palette colours are >= 0.3 apart in RGB norm);
- a ghost (an object that is *not* in the scene) is drawn only in a free cell, at no more than
  MAX_GHOST_OPACITY: an object counts as there above opacity 0.5, where the oracle's least-squares
  template fit draws the line;
- blur and blocky noise stay mild enough that the oracle reads 97% of degraded scenes as the scene
  (tests/test_judge_degrade.py); the rest are a few percent of label noise, mostly colour or shape
  of a faded small object.
"""
from __future__ import annotations

import numpy as np
import torch

from npedit.data.shapes import (BACKGROUNDS, COLORS, POSITIONS, Scene, cell_bounds, coverage_templates,
                                random_object)

MIN_OPACITY = 0.85           # real objects: opacity ~ U[MIN_OPACITY, 1]
MAX_GHOST_OPACITY = 0.25     # ghosts: opacity ~ U[0.05, MAX_GHOST_OPACITY]
GHOST_PROB = 0.5             # chance of one ghost (and then again of a second) in a free cell
COLOR_JITTER = 0.08          # per-channel uniform jitter of each object's colour, in [0, 1] RGB
BACKGROUND_JITTER = 0.04     # the same for the background
BLUR_PROB = 0.5              # chance of a blend with a 3x3 box blur (softened edges) ...
MAX_BLUR = 0.6               # ... of strength ~ U[0, MAX_BLUR]
BLOCK_NOISE_STD = 0.08       # blocky colour noise: std ~ U[0, BLOCK_NOISE_STD] on 2 or 4 px blocks


def _box_blur(img: np.ndarray) -> np.ndarray:
    """One 3x3 box blur of [S, S, 3] with replicated edges."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    s = img.shape[0]
    return sum(p[dy:dy + s, dx:dx + s] for dy in range(3) for dx in range(3)) / 9.0


def render_degraded(scene: Scene, image_size: int, rng: np.random.Generator) -> torch.Tensor:
    """[3, S, S] float32 in [0, 1]: `scene` drawn with student-like faults (see the module docstring)."""
    templates = coverage_templates(image_size)
    img = np.empty((image_size, image_size, 3), np.float64)
    img[:] = np.asarray(BACKGROUNDS[scene.background], np.float64) / 255 + rng.uniform(
        -BACKGROUND_JITTER, BACKGROUND_JITTER, 3)
    layers = [(obj, rng.uniform(MIN_OPACITY, 1.0)) for obj in scene.objects]
    free = list(scene.free_positions())
    taken = [o.name for o in scene.objects]
    while free and rng.random() < GHOST_PROB and len(layers) < len(scene.objects) + 2:
        position = free.pop(int(rng.integers(len(free))))
        ghost = random_object(rng, position, taken)
        layers.insert(0, (ghost, rng.uniform(0.05, MAX_GHOST_OPACITY)))   # under the real objects
    for obj, opacity in layers:   # composited in the object's cell, as shapes.render_numpy does
        r0, r1, c0, c1 = cell_bounds(image_size, POSITIONS.index(obj.position))
        cover = templates[(obj.shape, obj.size, obj.position)][..., None] * opacity
        color = np.asarray(COLORS[obj.color], np.float64) / 255 + rng.uniform(-COLOR_JITTER, COLOR_JITTER, 3)
        patch = img[r0:r1, c0:c1]
        patch += cover * (color - patch)
    if rng.random() < BLUR_PROB:
        img += rng.uniform(0.0, MAX_BLUR) * (_box_blur(img) - img)
    block = int(rng.choice((2, 4)))
    coarse = rng.normal(0.0, rng.uniform(0, BLOCK_NOISE_STD), (image_size // block, image_size // block, 3))
    img += np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)
    return torch.from_numpy(np.ascontiguousarray(np.clip(img, 0.0, 1.0).astype(np.float32).transpose(2, 0, 1)))
