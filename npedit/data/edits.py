"""Unpaired edit requests in the shapes world and, for evaluation only, their true outcome.

Validity rules (every request random_edit returns can be applied, and the result is again a world
scene: 1-3 objects with distinct names in distinct cells):
- remove only when the scene has >= 2 objects (a scene never becomes empty);
- add only when the scene has < 3 objects; the new object takes a free cell and a free name;
- color / replace pick a new colour / shape that differs from the old one and whose resulting name
  is not already in the scene; move picks a free cell; background picks a different background.
So the target caption always differs from the reference caption.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from npedit.data.example import EditExample
from npedit.data.shapes import (BACKGROUNDS, COLORS, MAX_OBJECTS, POSITION_PHRASES, POSITIONS, SHAPES,
                                SHAPES_CATEGORIES, SIZES, Scene, ShapeObject, as_rng, caption, choice,
                                random_scene, render)

# A few phrasings per category. Placeholders: {object} "red circle", {color}, {shape}, {size},
# {where} "at the top left", {position} "top left", {background}.
INSTRUCTION_TEMPLATES = {
    "color": ("make the {object} {color}", "change the color of the {object} to {color}",
              "paint the {object} {color}", "turn the {object} {color}"),
    "remove": ("remove the {object}", "delete the {object}", "take away the {object}",
               "get rid of the {object}"),
    "add": ("add a {size} {color} {shape} {where}", "put a {size} {color} {shape} {where}",
            "place a {size} {color} {shape} {where}", "draw a {size} {color} {shape} {where}"),
    "replace": ("replace the {object} with a {shape}", "turn the {object} into a {shape}",
                "change the {object} into a {shape}", "swap the {object} for a {shape}"),
    "move": ("move the {object} to the {position}", "shift the {object} to the {position}",
             "drag the {object} to the {position}"),
    "background": ("change the background to {background}", "make the background {background}",
                   "turn the background {background}", "paint the background {background}"),
}
assert set(INSTRUCTION_TEMPLATES) == set(SHAPES_CATEGORIES)


@dataclass(frozen=True)
class EditRequest:
    """An edit request. params: sorted (name, value) pairs, e.g. (("color", "green"),); hashable.

    color: color | remove: - | add: shape, color, size, position | replace: shape |
    move: position | background: background.
    """
    category: str
    instruction: str
    object: str                         # name of the object acted on ("" for background; the new one for add)
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.category not in SHAPES_CATEGORIES:
            raise ValueError(f"unknown shapes-world category {self.category!r}; "
                             f"expected one of {', '.join(SHAPES_CATEGORIES)}")
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    def param(self, name: str) -> str:
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(f"{self.category} edit has no parameter {name!r} (has {dict(self.params)})")


def check_categories(categories) -> tuple[str, ...]:
    categories = tuple(categories)
    bad = [c for c in categories if c not in SHAPES_CATEGORIES]
    if not categories or bad:
        raise ValueError(f"shapes-world categories must be a non-empty subset of "
                         f"{', '.join(SHAPES_CATEGORIES)}; got {categories}")
    return categories


def _editable(scene: Scene) -> list[ShapeObject]:
    """Objects an edit can name unambiguously."""
    names = scene.names()
    return [o for o in scene.objects if names.count(o.name) == 1]


def is_valid_category(scene: Scene, category: str) -> bool:
    n = len(scene.objects)
    if category == "remove":
        return n >= 2 and bool(_editable(scene))
    if category == "add":
        return n < MAX_OBJECTS
    if category == "background":
        return True
    if category == "move":
        return bool(_editable(scene)) and n < len(POSITIONS)
    return bool(_editable(scene))   # color, replace: a free name always exists with <= 3 objects


def random_edit(scene: Scene, rng, categories=SHAPES_CATEGORIES) -> EditRequest:
    """A random valid edit of `scene` in one of `categories` (uniform over the valid ones)."""
    rng = as_rng(rng)
    categories = check_categories(categories)
    valid = [c for c in categories if is_valid_category(scene, c)]
    if not valid:
        raise ValueError(f"no edit in {categories} is valid for a scene with {len(scene.objects)} objects")
    category = choice(rng, valid)
    template = choice(rng, INSTRUCTION_TEMPLATES[category])
    taken = set(scene.names())

    if category == "background":
        new = choice(rng, [b for b in BACKGROUNDS if b != scene.background])
        return EditRequest(category, template.format(background=new), "", (("background", new),))
    if category == "add":
        position = choice(rng, scene.free_positions())
        shape, color = choice(rng, [(s, c) for c in COLORS for s in SHAPES if f"{c} {s}" not in taken])
        size = choice(rng, SIZES)
        obj = ShapeObject(shape=shape, color=color, position=position, size=size)
        text = template.format(size=size, color=color, shape=shape, where=POSITION_PHRASES[position])
        return EditRequest(category, text, obj.name,
                           (("shape", shape), ("color", color), ("size", size), ("position", position)))

    obj = choice(rng, _editable(scene))
    if category == "remove":
        return EditRequest(category, template.format(object=obj.name), obj.name)
    if category == "color":
        new = choice(rng, [c for c in COLORS if c != obj.color and f"{c} {obj.shape}" not in taken])
        return EditRequest(category, template.format(object=obj.name, color=new), obj.name, (("color", new),))
    if category == "replace":
        new = choice(rng, [s for s in SHAPES if s != obj.shape and f"{obj.color} {s}" not in taken])
        return EditRequest(category, template.format(object=obj.name, shape=new), obj.name, (("shape", new),))
    if category == "move":
        new = choice(rng, scene.free_positions())
        return EditRequest(category, template.format(object=obj.name, position=new), obj.name,
                           (("position", new),))
    raise AssertionError(category)


def apply_edit(scene: Scene, edit: EditRequest) -> Scene:
    """The TRUE result of `edit` on `scene` (target captions and evaluation only)."""
    if edit.category == "background":
        return Scene(edit.param("background"), scene.objects)
    if edit.category == "add":
        new = ShapeObject(shape=edit.param("shape"), color=edit.param("color"),
                          position=edit.param("position"), size=edit.param("size"))
        if new.position not in scene.free_positions():
            raise ValueError(f"cannot add {new.name} at the occupied cell {new.position!r}")
        return Scene(scene.background, scene.objects + (new,))
    obj = scene.object_named(edit.object)
    others = tuple(o for o in scene.objects if o is not obj)
    if edit.category == "remove":
        return Scene(scene.background, others)
    changes = {"color": "color", "replace": "shape", "move": "position"}
    field = changes[edit.category]
    new = dataclasses.replace(obj, **{field: edit.param(field)})
    return Scene(scene.background, others + (new,))


_MIN_MAX_OBJECTS = {"remove": (2, MAX_OBJECTS), "add": (1, MAX_OBJECTS - 1)}


def generate(index: int, seed: int, categories=SHAPES_CATEGORIES) -> tuple[Scene, EditRequest, Scene]:
    """(reference scene, edit, true target scene) of example `index`: a pure function of its arguments.

    The category is categories[index % len(categories)] (balanced); the scene is drawn so that the
    category is valid for it.
    """
    categories = check_categories(categories)
    rng = random.Random(f"npedit.shapes/{int(seed)}/{int(index)}")   # str seeding is sha512: stable
    category = categories[index % len(categories)]
    lo, hi = _MIN_MAX_OBJECTS.get(category, (1, MAX_OBJECTS))
    scene = random_scene(rng, max_objects=hi, min_objects=lo)
    edit = random_edit(scene, rng, (category,))
    return scene, edit, apply_edit(scene, edit)


def edit_example_with_truth(index: int, seed: int = 0, image_size: int = 32,
                            categories=SHAPES_CATEGORIES) -> tuple[EditExample, torch.Tensor, Scene]:
    """(example, true target image [3, S, S], true target Scene). Evaluation only.

    The example equals ShapesEditDataset(seed=seed, image_size=image_size, categories=categories)[index].
    """
    scene, edit, target = generate(index, seed, categories)
    return make_example(scene, edit, target, image_size), render(target, image_size), target


def make_example(scene: Scene, edit: EditRequest, target: Scene, image_size: int) -> EditExample:
    """The unpaired example of an edit: the reference render and text only (no target image)."""
    return EditExample(image=render(scene, image_size), caption=caption(scene), instruction=edit.instruction,
                       category=edit.category, object=edit.object, target_caption=caption(target))

