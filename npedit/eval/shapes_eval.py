"""Oracle evaluation of an editor on the shapes world: held-out edits scored against exact truth.

For each held-out (reference scene, edit) the renderer gives the true target (evaluation only; the
trainer never sees it). The editor's output is parsed back into a scene (`oracle.parse_scene`) and
scored per category:
- success: the intended change happened, read off the parsed output at the edited cell(s):
  color -> the object in its cell has the new colour and its old shape; replace -> the new shape and
  its old colour; remove -> its cell is empty; add -> the new cell holds the requested shape, colour
  and size; move -> the new cell holds an object of the same shape and colour and the old cell is
  empty; background -> the new background.
- preservation: everything the edit should not touch is unchanged: the background (except for
  background edits), every other cell (empty or the very same object, size included), and the
  edited object's size (color / replace / move; where the object ends up, if anywhere).
- exact: the parsed output equals the true target scene.
- pixel_mae: mean |output - truth| over pixels and channels, in [0, 1] units.
On the true targets success = preservation = exact = 1; on the unedited references success = 0 and
preservation = 1 (every edit changes something, by construction of the world's edits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from npedit.data.edits import EditRequest, generate, make_example
from npedit.data.oracle import parse_scenes
from npedit.data.shapes import POSITIONS, SHAPES_CATEGORIES, Scene, ShapeObject, render

# Dataset seed of the held-out edits: training uses ShapesEditDataset(seed=train.seed) with small
# seeds; this stream (a different seed string in `generate`) is disjoint from theirs.
EVAL_SEED = 1_000_003
METRICS = ("success", "preservation", "exact", "pixel_mae")

EditFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


@dataclass
class HeldOutEdits:
    references: torch.Tensor      # [N, 3, S, S] in [0, 1]
    truths: torch.Tensor          # [N, 3, S, S] true targets (evaluation only)
    instructions: list[str]
    categories: list[str]
    scenes: list[Scene]           # reference scenes
    edits: list[EditRequest]
    targets: list[Scene]          # true target scenes

    def __len__(self) -> int:
        return len(self.instructions)


def held_out_edits(num_examples: int, image_size: int = 32, seed: int = EVAL_SEED,
                   categories: tuple[str, ...] = SHAPES_CATEGORIES) -> HeldOutEdits:
    """Examples 0..N-1 of the world's edit stream with dataset seed `seed` (`categories` balanced, cycled
    in their order)."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    rows = [generate(i, seed, categories) for i in range(num_examples)]
    examples = [make_example(scene, edit, target, image_size) for scene, edit, target in rows]
    return HeldOutEdits(references=torch.stack([e.image for e in examples]),
                        truths=torch.stack([render(target, image_size) for _, _, target in rows]),
                        instructions=[e.instruction for e in examples], categories=[e.category for e in examples],
                        scenes=[r[0] for r in rows], edits=[r[1] for r in rows], targets=[r[2] for r in rows])


def _cells(scene: Scene) -> dict[str, ShapeObject]:
    return {o.position: o for o in scene.objects}


def score_edit(reference: Scene, edit: EditRequest, output: Scene) -> tuple[bool, bool]:
    """(success, preservation) of `output` (a parsed scene) for `edit` applied to `reference`."""
    ref, out = _cells(reference), _cells(output)
    category = edit.category
    touched: set[str] = set()
    kept_size = True
    if category == "background":
        success = output.background == edit.param("background")
    elif category == "add":
        where = edit.param("position")
        got = out.get(where)
        touched = {where}
        success = got is not None and (got.shape, got.color, got.size) == (
            edit.param("shape"), edit.param("color"), edit.param("size"))
    else:
        obj = reference.object_named(edit.object)
        touched = {obj.position}
        got = out.get(obj.position)
        if category == "remove":
            success = got is None
        elif category == "color":
            success = got is not None and (got.color, got.shape) == (edit.param("color"), obj.shape)
        elif category == "replace":
            success = got is not None and (got.shape, got.color) == (edit.param("shape"), obj.color)
        elif category == "move":
            where = edit.param("position")
            touched.add(where)
            got = out.get(where)
            success = got is not None and (got.shape, got.color) == (obj.shape, obj.color) and obj.position not in out
        else:
            raise ValueError(f"unknown shapes-world category {category!r}")
        if category == "move" and got is None:
            got = out.get(obj.position)    # not moved: judge its size where it stayed
        if category != "remove" and got is not None:
            kept_size = got.size == obj.size   # a vanished object is a failed edit, not a preservation error
    same_background = category == "background" or output.background == reference.background
    same_cells = all(out.get(p) == ref.get(p) for p in POSITIONS if p not in touched)
    return bool(success), bool(same_background and same_cells and kept_size)


def run_editor(edit_fn: EditFn, data: HeldOutEdits, batch_size: int = 64) -> torch.Tensor:
    """edit_fn over the held-out set in batches -> outputs [N, 3, S, S] on the CPU, clamped to [0, 1]."""
    outputs = []
    for i in range(0, len(data), batch_size):
        out = edit_fn(data.references[i:i + batch_size], data.instructions[i:i + batch_size])
        outputs.append(out.detach().float().cpu().clamp(0, 1))
    outputs = torch.cat(outputs)
    if outputs.shape != data.references.shape:
        raise ValueError(f"the editor returned {tuple(outputs.shape)}, expected {tuple(data.references.shape)}")
    return outputs


def score_outputs(data: HeldOutEdits, outputs: torch.Tensor) -> dict:
    """Per-category and overall means of METRICS (see the module docstring), plus per-example rows."""
    parsed = parse_scenes(outputs)
    mae = (outputs - data.truths).abs().flatten(1).mean(1)                                   # [N]
    rows = []
    for i, out_scene in enumerate(parsed):
        success, preserved = score_edit(data.scenes[i], data.edits[i], out_scene)
        rows.append({"category": data.categories[i], "success": success, "preservation": preserved,
                     "exact": out_scene == data.targets[i], "pixel_mae": float(mae[i])})

    def summary(selected: list[dict]) -> dict:
        n = len(selected)
        return {"n": n, **{m: (sum(float(r[m]) for r in selected) / n if n else float("nan")) for m in METRICS}}

    per_category = {c: summary([r for r in rows if r["category"] == c]) for c in SHAPES_CATEGORIES
                    if any(r["category"] == c for r in rows)}
    return {"overall": summary(rows), "per_category": per_category, "examples": rows}


def evaluate_editor(edit_fn: EditFn, num_examples: int = 120, image_size: int = 32, seed: int = EVAL_SEED,
                    batch_size: int = 64, per_example: bool = False,
                    categories: tuple[str, ...] = SHAPES_CATEGORIES) -> dict:
    """Edit `num_examples` held-out scenes with edit_fn([B,3,S,S] in [0,1], instructions) -> [B,3,S,S] and
    score them against the renderer's truth. Every rank of a distributed run may call it (same examples).

    -> {"num_examples", "seed", "image_size", "categories", "overall": {n, success, preservation, exact, pixel_mae},
        "per_category": {category: {...}}} (+ "examples": per-example rows when per_example).
    """
    data = held_out_edits(num_examples, image_size, seed, categories)
    report = score_outputs(data, run_editor(edit_fn, data, batch_size))
    if not per_example:
        report.pop("examples")
    return {"num_examples": num_examples, "seed": seed, "image_size": image_size, "categories": list(categories),
            **report}


def format_report(report: dict) -> str:
    """A fixed-width table: one row per category, then the overall row."""
    head = f"{'category':<12}{'n':>5}{'success':>10}{'preserve':>10}{'exact':>8}{'pix_mae':>9}"
    lines = [head, "-" * len(head)]

    def row(name: str, m: dict) -> str:
        return (f"{name:<12}{m['n']:>5}{m['success']:>10.1%}{m['preservation']:>10.1%}{m['exact']:>8.1%}"
                f"{m['pixel_mae']:>9.4f}")

    lines += [row(c, m) for c, m in report["per_category"].items()]
    lines += ["-" * len(head), row("overall", report["overall"])]
    return "\n".join(lines)
