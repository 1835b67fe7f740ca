"""Parse rendered shapes-world images back into scenes (evaluation only).

Maximum-likelihood template matching under Gaussian pixel noise: each grid cell is explained either
by the background alone or by background + coverage * (colour - background) for every
(shape, size, colour) of the world, using the very coverage masks `render` composites. The best
background minimises the summed per-cell errors. On clean renders the true explanation has zero
error, so parse_scene(render(s)) == s; with mild noise (std ~0.03) the margins stay large because
the palettes are far apart.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from npedit.data.shapes import (BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject,
                                cell_bounds, coverage_templates)

_COLOR_NAMES = tuple(COLORS)
_BG_NAMES = tuple(BACKGROUNDS)
_COLOR_RGB = np.asarray([COLORS[c] for c in _COLOR_NAMES], np.float64) / 255     # [K, 3]
_BG_RGB = np.asarray([BACKGROUNDS[b] for b in _BG_NAMES], np.float64) / 255       # [G, 3]
_TEMPLATE_KEYS = tuple((shape, size) for size in SIZES for shape in SHAPES)        # T entries


@functools.lru_cache(maxsize=16)
def _cell_templates(image_size: int) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Per cell: (bounds, coverage matrix [T, n_pixels] float64)."""
    templates = coverage_templates(image_size)
    cells = []
    for index, position in enumerate(POSITIONS):
        a = np.stack([templates[(shape, size, position)].reshape(-1) for shape, size in _TEMPLATE_KEYS])
        cells.append((cell_bounds(image_size, index), a.astype(np.float64)))
    return cells


def _as_hwc(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float64).numpy()
    image = np.asarray(image, np.float64)
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"parse_scene needs a square [3, S, S] image, got shape {image.shape}")
    return image.transpose(1, 2, 0)


def cell_errors(image, background: str | None = None) -> dict:
    """Squared errors of every explanation of every cell, for diagnostics and soft scoring.

    Returns {"backgrounds": names, "empty": [G, 9], "objects": [G, 9, T, K], "templates": T keys,
    "colors": K names}; G = backgrounds considered (one if `background` is given).
    """
    img = _as_hwc(image)
    size = img.shape[0]
    bgs = _BG_NAMES if background is None else (background,)
    bg_rgb = np.asarray([BACKGROUNDS[b] for b in bgs], np.float64) / 255                  # [G, 3]
    empty = np.zeros((len(bgs), len(POSITIONS)))
    objects = np.zeros((len(bgs), len(POSITIONS), len(_TEMPLATE_KEYS), len(_COLOR_NAMES)))
    for ci, ((r0, r1, c0, c1), a) in enumerate(_cell_templates(size)):
        p = img[r0:r1, c0:c1].reshape(-1, 3)                                                # [n, 3]
        a2 = (a * a).sum(1)                                                                  # [T]
        for gi, b in enumerate(bg_rgb):
            d = p - b                                                                        # [n, 3]
            dc = _COLOR_RGB - b                                                              # [K, 3]
            # |d - a dc|^2 = |d|^2 - 2 a.d . dc + |a|^2 |dc|^2
            base = (d * d).sum()
            cross = (a @ d) @ dc.T                                                           # [T, K]
            empty[gi, ci] = base
            objects[gi, ci] = base - 2 * cross + a2[:, None] * (dc * dc).sum(1)[None, :]
    return {"backgrounds": bgs, "empty": empty, "objects": objects, "templates": _TEMPLATE_KEYS,
            "colors": _COLOR_NAMES}


def parse_scene(image, image_size: int | None = None) -> Scene:
    """Recover the Scene of a rendered image [3, S, S] in [0, 1] (torch or numpy).

    image_size, if given, must equal S (it is inferred otherwise). The result may be empty or repeat
    names when the image is not a clean world render; it always has at most one object per cell.
    """
    if image_size is not None and _as_hwc(image).shape[0] != image_size:
        raise ValueError(f"image is {_as_hwc(image).shape[0]} px, expected image_size={image_size}")
    err = cell_errors(image)
    best_obj = err["objects"].reshape(*err["objects"].shape[:2], -1).min(-1)                # [G, 9]
    per_cell = np.minimum(err["empty"], best_obj)
    g = int(per_cell.sum(1).argmin())
    objects = []
    for ci, position in enumerate(POSITIONS):
        if err["empty"][g, ci] <= best_obj[g, ci]:
            continue
        t, k = np.unravel_index(err["objects"][g, ci].argmin(), err["objects"][g, ci].shape)
        shape, size = _TEMPLATE_KEYS[t]
        objects.append(ShapeObject(shape=shape, color=_COLOR_NAMES[k], position=position, size=size))
    return Scene(background=err["backgrounds"][g], objects=tuple(objects))


def parse_scenes(images) -> list[Scene]:
    """parse_scene over a batch [B, 3, S, S]."""
    return [parse_scene(im) for im in images]
