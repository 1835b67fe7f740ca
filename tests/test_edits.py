"""Edit requests and their true outcome in the shapes world."""
import dataclasses
import random

import pytest

from npedit.data import (BACKGROUNDS, COLORS, SHAPES, SHAPES_CATEGORIES, EditRequest, Scene, ShapeObject, apply_edit,
                         caption, edit_example_with_truth, random_edit, random_scene)
from npedit.data.edits import INSTRUCTION_TEMPLATES, generate, is_valid_category


def _pairs(n, seed=0, categories=SHAPES_CATEGORIES):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        scene = random_scene(rng)
        if any(is_valid_category(scene, c) for c in categories):
            out.append((scene, random_edit(scene, rng, categories)))
    return out


def _others_equal(before: Scene, after: Scene, name: str):
    keep_b = [o for o in before.objects if o.name != name]
    keep_a = [o for o in after.objects if o in keep_b]
    assert keep_a == keep_b and after.background == before.background


def test_every_category_appears_and_results_are_world_scenes():
    seen = set()
    for scene, edit in _pairs(2000):
        seen.add(edit.category)
        target = apply_edit(scene, edit)
        assert target.is_world_scene(), (scene, edit)
        assert target != scene and caption(target) != caption(scene)
        assert edit.instruction == edit.instruction.lower() and "  " not in edit.instruction
    assert seen == set(SHAPES_CATEGORIES)


def test_color_changes_only_that_objects_colour():
    for scene, edit in _pairs(300, categories=("color",)):
        target = apply_edit(scene, edit)
        old = scene.object_named(edit.object)
        new = edit.param("color")
        assert new != old.color and new in edit.instruction and edit.object in edit.instruction
        assert target.object_named(f"{new} {old.shape}") == dataclasses.replace(old, color=new)
        assert len(target.objects) == len(scene.objects)
        _others_equal(scene, target, edit.object)


def test_remove_drops_exactly_that_object():
    for scene, edit in _pairs(300, categories=("remove",)):
        target = apply_edit(scene, edit)
        assert len(scene.objects) >= 2
        assert edit.object not in target.names() and len(target.objects) == len(scene.objects) - 1
        _others_equal(scene, target, edit.object)


def test_add_puts_new_object_in_free_cell():
    for scene, edit in _pairs(300, categories=("add",)):
        target = apply_edit(scene, edit)
        assert len(scene.objects) <= 2 and len(target.objects) == len(scene.objects) + 1
        new = target.object_named(edit.object)
        assert new.position in scene.free_positions() and edit.object not in scene.names()
        assert f"{new.size} {new.color} {new.shape}" in edit.instruction
        assert set(scene.objects) <= set(target.objects) and target.background == scene.background


def test_replace_changes_only_shape():
    for scene, edit in _pairs(300, categories=("replace",)):
        target = apply_edit(scene, edit)
        old = scene.object_named(edit.object)
        assert edit.param("shape") != old.shape and edit.param("shape") in edit.instruction
        assert target.object_named(f"{old.color} {edit.param('shape')}") == dataclasses.replace(
            old, shape=edit.param("shape"))
        _others_equal(scene, target, edit.object)


def test_move_changes_only_position():
    for scene, edit in _pairs(300, categories=("move",)):
        target = apply_edit(scene, edit)
        old = scene.object_named(edit.object)
        pos = edit.param("position")
        assert pos in scene.free_positions() and edit.instruction.endswith(f"to the {pos}")
        assert target.object_named(edit.object) == dataclasses.replace(old, position=pos)
        _others_equal(scene, target, edit.object)


def test_background_changes_only_background():
    for scene, edit in _pairs(200, categories=("background",)):
        target = apply_edit(scene, edit)
        assert edit.object == "" and target.objects == scene.objects
        assert target.background != scene.background and target.background in BACKGROUNDS
        assert target.background in edit.instruction


def test_phrasings_vary_and_requests_are_hashable():
    edits = [e for _, e in _pairs(1500)]
    assert len({hash(e) for e in edits}) > 100
    for cat in SHAPES_CATEGORIES:
        firsts = {e.instruction.split()[0] for e in edits if e.category == cat}
        assert len(firsts) >= 2, cat
    e = EditRequest("color", "make the red circle green", "red circle", (("color", "green"),))
    assert e == EditRequest("color", "make the red circle green", "red circle", [("color", "green")])
    assert e.param("color") == "green"
    with pytest.raises(KeyError):
        e.param("shape")
    with pytest.raises(ValueError, match="category"):
        EditRequest("style", "make it a painting", "")


def test_invalid_edits_are_refused():
    one = Scene("white", (ShapeObject("circle", "red", "center", "small"),))
    with pytest.raises(ValueError, match="no edit"):
        random_edit(one, random.Random(0), ("remove",))
    three = random_scene(random.Random(0), min_objects=3, max_objects=3)
    with pytest.raises(ValueError, match="no edit"):
        random_edit(three, random.Random(0), ("add",))
    add_taken = EditRequest("add", "add a small blue square in the center", "blue square",
                            (("shape", "square"), ("color", "blue"), ("size", "small"), ("position", "center")))
    with pytest.raises(ValueError, match="occupied"):
        apply_edit(one, add_taken)
    with pytest.raises(ValueError, match="named"):
        apply_edit(one, EditRequest("remove", "remove the blue square", "blue square"))


def test_names_stay_distinct_when_choices_are_tight():
    # a red circle and red squares/triangles around: replacing the red circle must avoid taken names
    scene = Scene("black", (ShapeObject("circle", "red", "top", "small"), ShapeObject("square", "red", "left", "small"),
                            ShapeObject("triangle", "red", "right", "large")))
    for seed in range(50):
        edit = random_edit(scene, random.Random(seed), ("replace",))
        assert apply_edit(scene, edit).is_world_scene()
        if edit.object == "red circle":
            assert edit.param("shape") == "diamond"


def test_generate_deterministic_and_example_fields():
    assert generate(5, 0) == generate(5, 0)
    assert generate(5, 0) != generate(5, 1)
    ex, target_img, target = edit_example_with_truth(5, seed=0, image_size=32)
    assert target_img.shape == (3, 32, 32) and ex.image.shape == (3, 32, 32)
    assert ex.target_caption == caption(target)
    assert set(INSTRUCTION_TEMPLATES) == set(SHAPES_CATEGORIES)
    assert all(c in COLORS for c in ("red", "green")) and "circle" in SHAPES
