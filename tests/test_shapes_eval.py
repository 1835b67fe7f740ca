"""Oracle evaluation of the shapes world: exact on truths, zero success on references, preservation semantics."""
import dataclasses
import json

import pytest
import torch

from npedit.data.edits import EditRequest
from npedit.data.shapes import Scene, ShapeObject, render
from npedit.eval.shapes_eval import (EVAL_SEED, evaluate_editor, format_report, held_out_edits, score_edit,
                                     score_outputs)

N = 120  # 20 per category


@pytest.fixture(scope="module")
def data():
    return held_out_edits(N, 32)


def _lookup_editor(data, images_of):
    """An edit_fn that returns images_of[i] for the held-out example i with that instruction and reference."""
    def edit_fn(images, instructions):
        out = []
        for image, text in zip(images, instructions):
            i = next(j for j in range(len(data)) if data.instructions[j] == text
                     and torch.equal(data.references[j], image))
            out.append(images_of[i])
        return torch.stack(out)
    return edit_fn


def test_true_targets_score_perfectly(data):
    report = evaluate_editor(_lookup_editor(data, data.truths), num_examples=N, image_size=32, batch_size=17)
    for m in (report["overall"], *report["per_category"].values()):
        assert m["success"] == 1.0 and m["preservation"] == 1.0 and m["exact"] == 1.0
        assert m["pixel_mae"] == 0.0
    assert set(report["per_category"]) == {"color", "remove", "add", "replace", "move", "background"}
    assert all(m["n"] == N // 6 for m in report["per_category"].values())
    json.dumps(report)  # the trainer writes it as JSON


def test_unedited_references_fail_every_edit_but_preserve_everything(data):
    report = evaluate_editor(lambda images, texts: images.clone(), num_examples=N, image_size=32)
    assert report["overall"]["success"] == 0.0
    assert report["overall"]["exact"] == 0.0
    assert report["overall"]["preservation"] == 1.0
    assert report["overall"]["pixel_mae"] > 0
    table = format_report(report)
    assert "overall" in table and "background" in table


def test_mild_noise_does_not_change_the_verdict(data):
    gen = torch.Generator().manual_seed(0)
    noisy = (data.truths + 0.03 * torch.randn(data.truths.shape, generator=gen)).clamp(0, 1)
    report = score_outputs(data, noisy)
    assert report["overall"]["success"] == 1.0 and report["overall"]["preservation"] == 1.0


def test_held_out_stream_is_deterministic_and_not_the_training_stream():
    a, b = held_out_edits(12), held_out_edits(12)
    assert a.instructions == b.instructions and torch.equal(a.references, b.references)
    train = held_out_edits(12, seed=0)
    assert a.scenes != train.scenes
    assert EVAL_SEED not in range(0, 1000)


def test_held_out_edits_of_chosen_categories_cycle_in_their_order():
    data = held_out_edits(6, categories=("move", "add"))
    assert data.categories == ["move", "add"] * 3
    assert all(len(t.objects) == len(s.objects) + (c == "add") for s, t, c in zip(data.scenes, data.targets,
                                                                                   data.categories))
    report = score_outputs(data, data.truths)
    assert set(report["per_category"]) == {"move", "add"} and report["overall"]["success"] == 1.0


def _scene(*objects, background="white"):
    return Scene(background, tuple(objects))


RED = ShapeObject("circle", "red", "top left", "small")
BLUE = ShapeObject("square", "blue", "center", "large")


def test_preservation_semantics():
    ref = _scene(RED, BLUE)
    color = EditRequest("color", "make the red circle green", "red circle", (("color", "green"),))
    green = dataclasses.replace(RED, color="green")
    assert score_edit(ref, color, _scene(green, BLUE)) == (True, True)
    # the intended change plus an unwanted one elsewhere: success, not preserved
    assert score_edit(ref, color, _scene(green, dataclasses.replace(BLUE, color="yellow"))) == (True, False)
    # the background changed too
    assert score_edit(ref, color, _scene(green, BLUE, background="black")) == (True, False)
    # the edited object changed size: the colour is right, its size was not to change
    assert score_edit(ref, color, _scene(dataclasses.replace(green, size="large"), BLUE)) == (True, False)
    # an extra object appeared in an empty cell
    extra = ShapeObject("triangle", "orange", "bottom", "small")
    assert score_edit(ref, color, _scene(green, BLUE, extra)) == (True, False)
    # wrong colour: failure, but nothing else changed
    assert score_edit(ref, color, _scene(dataclasses.replace(RED, color="purple"), BLUE)) == (False, True)

    move = EditRequest("move", "move the red circle to the right", "red circle", (("position", "right"),))
    moved = dataclasses.replace(RED, position="right")
    assert score_edit(ref, move, _scene(moved, BLUE)) == (True, True)
    assert score_edit(ref, move, _scene(RED, moved, BLUE)) == (False, True)   # copied, not moved
    assert score_edit(ref, move, ref) == (False, True)

    remove = EditRequest("remove", "remove the blue square", "blue square")
    assert score_edit(ref, remove, _scene(RED)) == (True, True)
    assert score_edit(ref, remove, _scene()) == (True, False)                # removed everything

    background = EditRequest("background", "make the background gray", "", (("background", "gray"),))
    assert score_edit(ref, background, _scene(RED, BLUE, background="gray")) == (True, True)
    assert score_edit(ref, background, _scene(RED, background="gray")) == (True, False)

    add = EditRequest("add", "add a small yellow diamond at the bottom", "yellow diamond",
                      (("color", "yellow"), ("position", "bottom"), ("shape", "diamond"), ("size", "small")))
    diamond = ShapeObject("diamond", "yellow", "bottom", "small")
    assert score_edit(ref, add, _scene(RED, BLUE, diamond)) == (True, True)
    assert score_edit(ref, add, _scene(RED, BLUE, dataclasses.replace(diamond, size="large"))) == (False, True)


def test_scores_come_from_the_parsed_render():
    ref = _scene(RED, BLUE)
    color = EditRequest("color", "make the red circle green", "red circle", (("color", "green"),))
    image = render(_scene(dataclasses.replace(RED, color="green"), BLUE), 32)
    from npedit.data.oracle import parse_scene
    assert score_edit(ref, color, parse_scene(image)) == (True, True)
