"""Student-like renders for the judge (judge_degrade.py): still the scene, visibly not the clean render."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import npedit.pretrain.judge_degrade as degrade
from npedit.data.oracle import parse_scene
from npedit.data.shapes import BACKGROUNDS, COLORS, POSITIONS, Scene, ShapeObject, cell_bounds, random_scene, render
from npedit.pretrain import cli
from npedit.pretrain.judge import JudgeConfig, render_questions
from npedit.pretrain.judge_data import random_question


def test_the_oracle_still_reads_the_scene_in_degraded_renders():
    rng, scenes = np.random.default_rng(0), random.Random(0)
    n, read, changed, visibly = 300, 0, 0, 0
    for _ in range(n):
        scene = random_scene(scenes)
        image = degrade.render_degraded(scene, 32, rng)
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        read += parse_scene(image) == scene
        off = float((image - render(scene, 32)).abs().max())
        changed += off > 1e-3
        visibly += off > 0.05
    assert read >= 0.95 * n        # measured 97.7% on 1,000 scenes: the answers stay the renderer's
    assert changed == n and visibly >= 0.9 * n     # and the images are off the clean render


def _faults_off(monkeypatch, **keep):
    for name in ("COLOR_JITTER", "BACKGROUND_JITTER", "BLOCK_NOISE_STD"):
        monkeypatch.setattr(degrade, name, 0.0)
    monkeypatch.setattr(degrade, "BLUR_PROB", 0.0)
    monkeypatch.setattr(degrade, "GHOST_PROB", 0.0)
    for name, value in keep.items():
        monkeypatch.setattr(degrade, name, value)


def test_ghosts_stay_faint_and_in_free_cells(monkeypatch):
    _faults_off(monkeypatch, GHOST_PROB=1.0)
    scene = Scene("white", (ShapeObject("circle", "blue", "center", "large"),))
    clean = render(scene, 32)
    seen_ghost = False
    for seed in range(20):
        image = degrade.render_degraded(scene, 32, np.random.default_rng(seed))
        for index, position in enumerate(POSITIONS):
            r0, r1, c0, c1 = cell_bounds(32, index)
            diff = (image - clean)[:, r0:r1, c0:c1].abs()
            if position == "center":
                assert float(diff.max()) <= 1 - degrade.MIN_OPACITY + 1e-5     # the object only fades
            else:
                # the farthest a palette colour is from white, per channel, times the ghost's opacity
                assert float(diff.max()) <= degrade.MAX_GHOST_OPACITY * 1.0 + 1e-5
                seen_ghost |= float(diff.max()) > 0.01
        assert parse_scene(image) == scene
    assert seen_ghost


def test_objects_keep_their_opacity_range(monkeypatch):
    _faults_off(monkeypatch)
    bg = np.asarray(BACKGROUNDS["black"]) / 255
    scene = Scene("black", (ShapeObject("square", "yellow", "top left", "large"),))
    r0, r1, c0, c1 = cell_bounds(32, 0)
    centre = (r0 + r1) // 2, (c0 + c1) // 2
    contrast = (np.asarray(COLORS["yellow"]) / 255 - bg).max()
    opacities = [float(degrade.render_degraded(scene, 32, np.random.default_rng(s))[:, centre[0], centre[1]].max())
                 / contrast for s in range(30)]
    assert min(opacities) >= degrade.MIN_OPACITY - 1e-5 and max(opacities) <= 1 + 1e-5
    assert max(opacities) - min(opacities) > 0.05        # the opacity does vary


def test_render_questions_degrades_the_asked_fraction():
    rng = random.Random(0)
    questions = [random_question(rng) for _ in range(40)]
    first, second = render_questions(questions, 32)
    clean = torch.stack([render(q.scenes[0], 32) for q in questions])
    assert torch.equal(first, clean)                   # the default: clean renders, as before
    first, _ = render_questions(questions, 32, 1.0, np.random.default_rng(0))
    assert all(not torch.equal(a, b) for a, b in zip(first, clean))
    first, _ = render_questions(questions, 32, 0.5, np.random.default_rng(0))
    degraded = sum(not torch.equal(a, b) for a, b in zip(first, clean))
    assert 8 <= degraded <= 32
    with pytest.raises(ValueError, match="needs an rng"):
        render_questions(questions, 32, 0.5)


def test_bad_degrade_prob_is_named():
    with pytest.raises(ValueError, match="degrade_prob must be in"):
        JudgeConfig(degrade_prob=1.5)
    assert cli.main(["judge", "--out", "unused", "--degrade_prob", "-0.1"]) == 2
