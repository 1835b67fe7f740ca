"""Generic yes/no visual questions about one or two shapes-world images, answered by the renderer.

The toy judge learns only these: what a caption shows, which objects are present, where things
are, and whether two images are the same apart from one named object (or the background). The
second image of a pair is a random *perturbation* of the first (any attribute of any object, sizes
included, one or two changes, possibly of several objects), built here from scene primitives: no
edit request, instruction or edit outcome of the world's edit module is ever used.

The three question forms the NP-Edit trainer asks in `method.question_style=caption` are built
from its own template constants, so the token sequences are identical.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from npedit.data.shapes import (BACKGROUNDS, COLORS, MAX_OBJECTS, POSITION_PHRASES, SHAPES, SIZES, Scene,
                                ShapeObject, caption, choice, random_scene)
from npedit.method.questions import CAPTION_TEMPLATE, NO, PRESENT_TEMPLATE, SAME_EXCEPT_TEMPLATE, YES

# Extra generic forms (not used by the trainer; they teach the judge to look at every attribute).
BACKGROUND_TEMPLATE = "is the background {background} ?"
OCCUPIED_TEMPLATE = "is there a shape {where} ?"
WHERE_TEMPLATE = "is the {object} {where} ?"
SAME_TEMPLATE = "are the two images the same ?"
EXTRA_TEMPLATES = (BACKGROUND_TEMPLATE, OCCUPIED_TEMPLATE, WHERE_TEMPLATE, SAME_TEMPLATE)

# kind -> sampling weight; the first three are the trainer's forms
QUESTION_KINDS = {"caption": 0.28, "same_except": 0.30, "present": 0.14, "background": 0.06,
                  "occupied": 0.07, "where": 0.07, "same": 0.08}
SCENE_CHANGES = ("color", "shape", "size", "position", "remove", "add", "background")


@dataclass(frozen=True)
class GenericQuestion:
    kind: str                      # a key of QUESTION_KINDS
    scenes: tuple[Scene, ...]      # the images, in slot order (1 or 2)
    text: str
    answer: str                    # YES or NO


def template_words() -> list[str]:
    """Texts whose words the judge's tokenizer must know beyond the trainer's vocabulary."""
    return [t.split("{")[0] for t in EXTRA_TEMPLATES] + list(EXTRA_TEMPLATES) + ["shape"]


# ---- scene perturbations (generic, any attribute) ---------------------------------------------------

def _free_name(rng, scene: Scene, obj: ShapeObject, field: str) -> ShapeObject | None:
    """obj with a different colour or shape whose name is free among the other objects."""
    taken = {o.name for o in scene.objects if o is not obj}
    values = COLORS if field == "color" else SHAPES
    options = [v for v in values if v != getattr(obj, field)
               and dataclasses.replace(obj, **{field: v}).name not in taken]
    return dataclasses.replace(obj, **{field: choice(rng, options)}) if options else None


def change_object(rng, scene: Scene, obj: ShapeObject, change: str) -> Scene | None:
    """Change one attribute of `obj` (color / shape / size / position) or remove it; None if impossible."""
    others = tuple(o for o in scene.objects if o is not obj)
    if change == "remove":
        return Scene(scene.background, others)
    if change in ("color", "shape"):
        new = _free_name(rng, scene, obj, change)
    elif change == "size":
        new = dataclasses.replace(obj, size=SIZES[1 - SIZES.index(obj.size)])
    elif change == "position":
        free = scene.free_positions()
        new = dataclasses.replace(obj, position=choice(rng, free)) if free else None
    else:
        raise ValueError(f"unknown object change {change!r}")
    return None if new is None else Scene(scene.background, others + (new,))


def add_object(rng, scene: Scene) -> tuple[Scene, ShapeObject] | None:
    if len(scene.objects) >= MAX_OBJECTS:
        return None
    taken = set(scene.names())
    shape, color = choice(rng, [(s, c) for c in COLORS for s in SHAPES if f"{c} {s}" not in taken])
    new = ShapeObject(shape=shape, color=color, position=choice(rng, scene.free_positions()),
                      size=choice(rng, SIZES))
    return Scene(scene.background, scene.objects + (new,)), new


def change_background(rng, scene: Scene) -> Scene:
    return Scene(choice(rng, [b for b in BACKGROUNDS if b != scene.background]), scene.objects)


def perturb(rng, scene: Scene, changes: int = 1) -> Scene:
    """`scene` with `changes` random changes (the result always differs from `scene`)."""
    for _ in range(100):
        out = scene
        for _ in range(changes):
            kind = choice(rng, SCENE_CHANGES)
            if kind == "background":
                out = change_background(rng, out)
            elif kind == "add":
                added = add_object(rng, out)
                out = added[0] if added else out
            elif out.objects:
                out = change_object(rng, out, choice(rng, out.objects), kind) or out
        if out != scene:
            return out
    raise RuntimeError("could not perturb the scene")  # unreachable: a background change always works


# ---- questions ----------------------------------------------------------------------------------------

def _yes_no(flag: bool) -> str:
    return YES if flag else NO


def caption_question(rng, scene: Scene) -> GenericQuestion:
    """One image; "does the image show <caption> ?" with the true caption or a perturbed scene's."""
    yes = rng.random() < 0.5
    shown = scene if yes else perturb(rng, scene, 1 if rng.random() < 0.8 else 2)
    return GenericQuestion("caption", (scene,), CAPTION_TEMPLATE.format(caption=caption(shown)), _yes_no(yes))


def present_question(rng, scene: Scene) -> GenericQuestion:
    yes = rng.random() < 0.5 and bool(scene.objects)
    if yes:
        name = choice(rng, scene.objects).name
    else:
        names = set(scene.names())
        absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in names]
        near = [n for n in absent if any(w in names_w for w in n.split() for names_w in
                                         [o.color for o in scene.objects] + [o.shape for o in scene.objects])]
        name = choice(rng, near if near and rng.random() < 0.6 else absent)
    return GenericQuestion("present", (scene,), PRESENT_TEMPLATE.format(object=name), _yes_no(yes))


def same_apart_from(a: Scene, b: Scene, name: str) -> bool:
    """The true answer of "apart from the <name> , are the two images the same ?".

    "background": the objects are identical (the background may differ). An object name: same
    background, and identical objects outside the cells where an object of that name is in either image.
    """
    if name == "background":
        return a.objects == b.objects
    if a.background != b.background:
        return False
    cells = {o.position for s in (a, b) for o in s.objects if o.name == name}
    return ([o for o in a.objects if o.position not in cells] == [o for o in b.objects if o.position not in cells])


def same_except_question(rng, scene: Scene) -> GenericQuestion:
    """Two images (a scene and a perturbation of it, either order); "apart from the X , are the two
    images the same ?". Aimed at yes/no 50/50; the answer is computed by `same_apart_from`."""
    want_yes = rng.random() < 0.5
    if rng.random() < 0.2 or not scene.objects:
        name = "background"
        if want_yes:
            other = change_background(rng, scene) if rng.random() < 0.8 else scene
        else:
            other = _change_other(rng, scene, None)
            other = change_background(rng, other) if rng.random() < 0.5 else other
    else:
        target = choice(rng, scene.objects)
        name = target.name
        changed, new_name = _change_target(rng, scene, target)
        if want_yes:
            other = changed if rng.random() < 0.85 else scene
            if new_name and other is changed and rng.random() < 0.3:
                name = new_name   # named as it appears in the changed image
        else:
            base = changed if rng.random() < 0.5 else scene
            other = _change_other(rng, base, target) if rng.random() < 0.75 else change_background(rng, base)
    pair = (scene, other) if rng.random() < 0.5 else (other, scene)
    text = SAME_EXCEPT_TEMPLATE.format(object=name)
    return GenericQuestion("same_except", pair, text, _yes_no(same_apart_from(pair[0], pair[1], name)))


def _change_target(rng, scene: Scene, target: ShapeObject) -> tuple[Scene, str]:
    """scene with `target` changed (1-2 attribute changes) or removed -> (scene, its new name or "")."""
    if len(scene.objects) >= 2 and rng.random() < 0.2:
        return change_object(rng, scene, target, "remove"), ""
    out, obj = scene, target
    for _ in range(1 if rng.random() < 0.75 else 2):
        new = change_object(rng, out, obj, choice(rng, ("color", "shape", "size", "position")))
        if new is not None:
            obj = next(o for o in new.objects if o not in out.objects)
            out = new
    if out == scene:
        out = change_object(rng, scene, target, "size")
        obj = next(o for o in out.objects if o not in scene.objects)
    return out, (obj.name if obj.name != target.name else "")


def _change_other(rng, scene: Scene, keep: ShapeObject | None) -> Scene:
    """scene with an object other than `keep` changed or removed, or a new object added."""
    candidates = [o for o in scene.objects if keep is None or o.position != keep.position]
    if not candidates or rng.random() < 0.2:
        added = add_object(rng, scene)
        if added:
            return added[0]
    if not candidates:
        return change_background(rng, scene)
    obj = choice(rng, candidates)
    kinds = ("color", "shape", "size", "position") + (("remove",) if len(scene.objects) >= 2 else ())
    for _ in range(10):
        new = change_object(rng, scene, obj, choice(rng, kinds))
        if new is not None:
            return new
    return change_background(rng, scene)


def extra_question(rng, scene: Scene, kind: str) -> GenericQuestion:
    yes = rng.random() < 0.5
    if kind == "background":
        bg = scene.background if yes else choice(rng, [b for b in BACKGROUNDS if b != scene.background])
        return GenericQuestion(kind, (scene,), BACKGROUND_TEMPLATE.format(background=bg), _yes_no(yes))
    if kind == "occupied":
        used = [o.position for o in scene.objects]
        pool = used if yes else scene.free_positions()
        return GenericQuestion(kind, (scene,), OCCUPIED_TEMPLATE.format(where=POSITION_PHRASES[choice(rng, pool)]),
                               _yes_no(yes))
    if kind == "where":
        obj = choice(rng, scene.objects)
        pos = obj.position if yes else choice(rng, [p for p in POSITION_PHRASES if p != obj.position])
        return GenericQuestion(kind, (scene,), WHERE_TEMPLATE.format(object=obj.name, where=POSITION_PHRASES[pos]),
                               _yes_no(yes))
    if kind == "same":
        other = scene if yes else perturb(rng, scene)
        return GenericQuestion(kind, (scene, other), SAME_TEMPLATE, _yes_no(yes))
    raise ValueError(f"unknown question kind {kind!r}; known: {list(QUESTION_KINDS)}")


def random_question(rng: random.Random, kind: str | None = None) -> GenericQuestion:
    """A random generic question about a random scene (kind drawn by QUESTION_KINDS' weights if None)."""
    if kind is None:
        kind = rng.choices(list(QUESTION_KINDS), weights=list(QUESTION_KINDS.values()))[0]
    scene = random_scene(rng)
    if kind == "caption":
        return caption_question(rng, scene)
    if kind == "present":
        return present_question(rng, scene)
    if kind == "same_except":
        return same_except_question(rng, scene)
    return extra_question(rng, scene, kind)
