"""The built-in synthetic editing world: coloured shapes on a 3x3 grid over a plain background.

A scene holds 1-3 objects in distinct grid cells with distinct names ("red circle"). Everything is
exact and cheap: rendering composites cached anti-aliased coverage masks (numpy), captions and
instructions are lower-case words separated by single spaces (no punctuation, so `str.split` is a
valid tokenizer), and `oracle.parse_scene` recovers the scene from a render.

Geometry: the image is split into 3x3 cells; pixel p belongs to the cell holding its centre p + 0.5.
An object is centred in its cell with half-extent SIZE_EXTENT[size] * cell, and is clipped to its
cell's pixels (a no-op for image_size >= 16), so cells never share a pixel.
"""
from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from npedit.data.example import EditExample

SHAPES = ("circle", "square", "triangle", "diamond")
# Object colours and backgrounds are disjoint palettes, chosen far apart (>= 0.3 in [0,1] RGB norm
# between any two object colours, between any two backgrounds, and between any colour and background).
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
BACKGROUNDS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "beige": (230, 215, 180),
}
SIZES = ("small", "large")
SIZE_EXTENT = {"small": 0.24, "large": 0.40}   # half-extent as a fraction of the cell side
# Row-major 3x3 grid: POSITIONS[3 * row + col].
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
# How a caption / add-instruction says "where": "a red circle at the top left", "... in the center".
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
SHAPES_CATEGORIES = ("color", "remove", "add", "replace", "move", "background")
MAX_OBJECTS = 3
# Words the training method feeds to text encoders besides captions/instructions: the "do nothing"
# regulariser instruction and the DMD negative prompt ("low quality, artifacts").
EXTRA_WORDS = ("do", "nothing", "low", "quality", "artifacts")


def _check(value: str, allowed, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    position: str
    size: str

    def __post_init__(self):
        _check(self.shape, SHAPES, "shape")
        _check(self.color, tuple(COLORS), "color")
        _check(self.position, POSITIONS, "position")
        _check(self.size, SIZES, "size")

    @property
    def name(self) -> str:
        """How edits refer to the object: "red circle" (unique within a world scene)."""
        return f"{self.color} {self.shape}"

    def describe(self) -> str:
        """Caption phrase: "a small red circle at the top left"."""
        return f"a {self.size} {self.color} {self.shape} {POSITION_PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    """A background and objects in distinct grid cells, stored in grid (reading) order.

    The constructor only checks what every scene must satisfy (known words, one object per cell):
    scenes parsed from model outputs may be empty or have repeated names. `is_world_scene` checks
    the stronger invariants of generated scenes (1-3 objects, distinct names).
    """
    background: str
    objects: tuple[ShapeObject, ...] = ()

    def __post_init__(self):
        _check(self.background, tuple(BACKGROUNDS), "background")
        objects = tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position)))
        cells = [o.position for o in objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a grid cell: {cells}")
        object.__setattr__(self, "objects", objects)

    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    def object_named(self, name: str) -> ShapeObject:
        found = [o for o in self.objects if o.name == name]
        if len(found) != 1:
            raise ValueError(f"scene has {len(found)} objects named {name!r} (objects: {self.names()})")
        return found[0]

    def free_positions(self) -> list[str]:
        used = {o.position for o in self.objects}
        return [p for p in POSITIONS if p not in used]

    def is_world_scene(self) -> bool:
        names = self.names()
        return 1 <= len(names) <= MAX_OBJECTS and len(set(names)) == len(names)


# ---- randomness that accepts random.Random, numpy Generator or an int seed ----------------------

def as_rng(rng):
    if isinstance(rng, (random.Random, np.random.Generator)):
        return rng
    if isinstance(rng, (int, np.integer)):
        return random.Random(int(rng))
    raise TypeError(f"rng must be random.Random, numpy.random.Generator or int, got {type(rng).__name__}")


def randbelow(rng, n: int) -> int:
    if n <= 0:
        raise ValueError(f"cannot draw from an empty range (n={n})")
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    return rng.randrange(n)


def choice(rng, seq):
    seq = tuple(seq)
    return seq[randbelow(rng, len(seq))]


def random_object(rng, position: str, taken_names=()) -> ShapeObject:
    """A random object at `position` whose name is not in `taken_names`."""
    options = [(s, c) for c in COLORS for s in SHAPES if f"{c} {s}" not in set(taken_names)]
    shape, color = choice(rng, options)
    return ShapeObject(shape=shape, color=color, position=position, size=choice(rng, SIZES))


def random_scene(rng, max_objects: int = MAX_OBJECTS, min_objects: int = 1) -> Scene:
    """A random world scene with between min_objects and max_objects objects (uniform count)."""
    rng = as_rng(rng)
    if not 1 <= min_objects <= max_objects <= len(POSITIONS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 9, got {min_objects}, {max_objects}")
    n = min_objects + randbelow(rng, max_objects - min_objects + 1)
    free = list(POSITIONS)
    objects = []
    for _ in range(n):
        position = free.pop(randbelow(rng, len(free)))
        objects.append(random_object(rng, position, [o.name for o in objects]))
    return Scene(background=choice(rng, BACKGROUNDS), objects=tuple(objects))


# ---- rendering ----------------------------------------------------------------------------------

def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8 or image_size % 8:
        raise ValueError(f"image_size must be a positive multiple of 8, got {image_size!r}")


def cell_bounds(image_size: int, index: int) -> tuple[int, int, int, int]:
    """Pixel rows [r0, r1) and columns [c0, c1) of grid cell `index` (row-major)."""
    edges = [0] + [math.ceil(k * image_size / 3 - 0.5) for k in (1, 2)] + [image_size]   # centre rule
    row, col = divmod(index, 3)
    return edges[row], edges[row + 1], edges[col], edges[col + 1]


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Membership in the unit shape (half-extent 1, y pointing down)."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 1.0
    if shape == "triangle":   # apex up, base at the bottom of the box
        return (y <= 1.0) & (np.abs(x) <= (y + 1.0) / 2)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=16)
def coverage_templates(image_size: int) -> dict:
    """{(shape, size, position): [h, w] float32 coverage in [0, 1] over that cell's pixels}.

    Supersampled k x k per pixel (k = 8 up to 64 px, fewer above); read-only, cached per size.
    """
    _check_image_size(image_size)
    k = max(2, min(8, 512 // image_size))
    cell = image_size / 3
    out = {}
    for index, position in enumerate(POSITIONS):
        r0, r1, c0, c1 = cell_bounds(image_size, index)
        row, col = divmod(index, 3)
        cy, cx = (row + 0.5) * cell, (col + 0.5) * cell
        ys = r0 + (np.arange((r1 - r0) * k) + 0.5) / k   # supersample centres, pixel units
        xs = c0 + (np.arange((c1 - c0) * k) + 0.5) / k
        for size in SIZES:
            half = SIZE_EXTENT[size] * cell
            y, x = np.meshgrid((ys - cy) / half, (xs - cx) / half, indexing="ij")
            for shape in SHAPES:
                fine = _inside(shape, x, y).astype(np.float32)
                cov = fine.reshape(r1 - r0, k, c1 - c0, k).mean(axis=(1, 3))
                cov.setflags(write=False)
                out[(shape, size, position)] = cov
    return out


def render_numpy(scene: Scene, image_size: int = 32) -> np.ndarray:
    """[S, S, 3] float32 in [0, 1]: background, then each object alpha-blended by its coverage."""
    templates = coverage_templates(image_size)
    img = np.empty((image_size, image_size, 3), np.float32)
    img[:] = np.asarray(BACKGROUNDS[scene.background], np.float32) / 255
    for obj in scene.objects:
        r0, r1, c0, c1 = cell_bounds(image_size, POSITIONS.index(obj.position))
        a = templates[(obj.shape, obj.size, obj.position)][..., None]
        color = np.asarray(COLORS[obj.color], np.float32) / 255
        patch = img[r0:r1, c0:c1]
        img[r0:r1, c0:c1] = patch + a * (color - patch)
    return img


def render(scene: Scene, image_size: int = 32) -> torch.Tensor:
    """[3, S, S] float32 in [0, 1]; anti-aliased by supersampling; S a multiple of 8."""
    return torch.from_numpy(np.ascontiguousarray(render_numpy(scene, image_size).transpose(2, 0, 1)))


# ---- language -----------------------------------------------------------------------------------

def join_phrases(phrases: list[str]) -> str:
    return " and ".join(phrases)


def caption(scene: Scene) -> str:
    """ "a small red circle at the top left and a large blue square in the center on a white background"."""
    if not scene.objects:
        return f"a plain {scene.background} background"
    return f"{join_phrases([o.describe() for o in scene.objects])} on a {scene.background} background"


def partial_mention(scene: Scene, rng, keep: float) -> tuple[tuple[ShapeObject, ...], str | None]:
    """What a partial caption names: each object and the background independently with probability
    `keep` -> (named objects, named background or None)."""
    if not 0 <= keep <= 1:
        raise ValueError(f"keep must be in [0, 1], got {keep}")
    rng = as_rng(rng)
    objects = tuple(o for o in scene.objects if rng.random() < keep)
    return objects, (scene.background if rng.random() < keep else None)


def describe_partial(objects, background: str | None) -> str:
    """A partial caption's text: "a small red circle at the top left" (no background named), "a white
    background" (no object named), "a background" (nothing named). "a plain white background" would say
    the scene is empty, which a partial caption cannot."""
    phrases = join_phrases([o.describe() for o in objects])
    if background is None:
        return phrases or "a background"
    return f"{phrases} on a {background} background" if phrases else f"a {background} background"


def partial_caption(scene: Scene, rng, keep: float) -> str:
    """A caption that names each object and the background with probability `keep`, the way a caption
    of a natural image names only some of what is in it. keep = 1 gives caption(scene)."""
    if keep == 1:
        return caption(scene)
    return describe_partial(*partial_mention(scene, rng, keep))


def words(text: str) -> list[str]:
    """The tokenisation vocabulary() is defined for: runs of lower-case letters."""
    return re.findall(r"[a-z]+", text.lower())


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    from npedit.data.edits import INSTRUCTION_TEMPLATES   # edits builds on this module

    texts = list(SHAPES) + list(COLORS) + list(BACKGROUNDS) + list(SIZES) + list(POSITIONS)
    texts += list(POSITION_PHRASES.values()) + list(EXTRA_WORDS)
    texts += ["a plain background", "a on a background", "and"]   # caption glue
    for templates in INSTRUCTION_TEMPLATES.values():
        texts += [re.sub(r"\{[a-z_]+\}", " ", t) for t in templates]
    return tuple(sorted({w for t in texts for w in words(t)}))


def vocabulary() -> list[str]:
    """Every lower-case word any caption, instruction or object name of this world can contain
    (plus EXTRA_WORDS), sorted."""
    return list(_vocabulary())


# ---- dataset ------------------------------------------------------------------------------------

class ShapesEditDataset:
    """Map-style dataset of EditExample drawn from the shapes world; never exposes the target.

    Example i is a pure function of (seed, i, categories); category i is categories[i % len]
    (balanced). `npedit.data.edits.edit_example_with_truth` gives the same example plus its truth.
    dmd_caption_keep < 1 gives each example a partial caption of the wanted result for the DMD scores
    (`partial_caption`, its own random stream per example); the judge's questions keep the full one.
    """

    def __init__(self, num_examples: int = 100_000, image_size: int = 32, seed: int = 0,
                 categories: tuple[str, ...] = SHAPES_CATEGORIES, dmd_caption_keep: float = 1.0):
        from npedit.data.edits import check_categories

        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if not 0 <= dmd_caption_keep <= 1:
            raise ValueError(f"dmd_caption_keep must be in [0, 1], got {dmd_caption_keep}")
        self.dmd_caption_keep = float(dmd_caption_keep)
        _check_image_size(image_size)
        self.num_examples = int(num_examples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.categories = check_categories(categories)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> EditExample:
        from npedit.data.edits import generate, make_example

        if not -self.num_examples <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        index %= self.num_examples
        scene, edit, target = generate(index, self.seed, self.categories)
        example = make_example(scene, edit, target, self.image_size)
        if self.dmd_caption_keep < 1:
            rng = random.Random(f"npedit.dmd-caption/{self.seed}/{index}")
            example.dmd_caption = partial_caption(target, rng, self.dmd_caption_keep)
        return example

    def __repr__(self) -> str:
        return (f"ShapesEditDataset(num_examples={self.num_examples}, image_size={self.image_size}, "
                f"seed={self.seed}, categories={self.categories}, dmd_caption_keep={self.dmd_caption_keep})")
