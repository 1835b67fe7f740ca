"""Shapes world: scenes, rendering, captions, vocabulary, the dataset, and the parsing oracle."""
import random

import numpy as np
import pytest
import torch

from npedit.data import (BACKGROUNDS, COLORS, POSITIONS, SHAPES, SHAPES_CATEGORIES, SIZES, EditExample, Scene,
                         ShapeObject, ShapesEditDataset, caption, edit_example_with_truth, parse_scene, random_scene,
                         render, vocabulary)
from npedit.data.example import collate
from npedit.data.oracle import parse_scenes
from npedit.data.shapes import SIZE_EXTENT, cell_bounds, coverage_templates, words


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def test_random_scene_invariants_and_rng_kinds():
    for scene in _scenes(500) + [random_scene(np.random.default_rng(i)) for i in range(200)]:
        assert scene.is_world_scene()
        assert 1 <= len(scene.objects) <= 3
        assert len({o.position for o in scene.objects}) == len(scene.objects)
        assert len(set(scene.names())) == len(scene.objects)
        assert [POSITIONS.index(o.position) for o in scene.objects] == sorted(
            POSITIONS.index(o.position) for o in scene.objects)
    counts = {len(s.objects) for s in _scenes(200)}
    assert counts == {1, 2, 3}
    assert random_scene(random.Random(5)) == random_scene(random.Random(5))
    assert random_scene(7) == random_scene(7)
    two = [random_scene(random.Random(i), min_objects=2, max_objects=2) for i in range(50)]
    assert all(len(s.objects) == 2 for s in two)


def test_scene_validation_and_canonical_order():
    a = ShapeObject("circle", "red", "bottom", "small")
    b = ShapeObject("square", "blue", "top left", "large")
    assert Scene("white", (a, b)) == Scene("white", (b, a))
    assert Scene("white", (a, b)).objects[0] == b
    assert a.name == "red circle"
    with pytest.raises(ValueError, match="cell"):
        Scene("white", (a, ShapeObject("square", "blue", "bottom", "large")))
    with pytest.raises(ValueError, match="background"):
        Scene("pink", (a,))
    with pytest.raises(ValueError, match="shape"):
        ShapeObject("hexagon", "red", "top", "small")
    with pytest.raises(ValueError, match="color"):
        ShapeObject("circle", "white", "top", "small")   # backgrounds are not object colours


def test_palettes_are_separable():
    def dist(x, y):
        return float(np.linalg.norm((np.array(x) - np.array(y)) / 255))
    cols, bgs = list(COLORS.values()), list(BACKGROUNDS.values())
    assert min(dist(x, y) for i, x in enumerate(cols) for y in cols[i + 1:]) >= 0.3
    assert min(dist(x, y) for i, x in enumerate(bgs) for y in bgs[i + 1:]) >= 0.3
    assert min(dist(x, y) for x in cols for y in bgs) >= 0.3


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_render_shape_range_and_content(size):
    for scene in _scenes(30):
        img = render(scene, size)
        assert img.shape == (3, size, size) and img.dtype == torch.float32
        assert img.min() >= 0 and img.max() <= 1
        if size >= 16:   # corners are background (objects keep a margin inside their cell)
            bg = torch.tensor(BACKGROUNDS[scene.background]) / 255
            assert torch.allclose(img[:, 0, 0], bg)
    # anti-aliased: edges hold intermediate coverage
    scene = Scene("black", (ShapeObject("circle", "red", "center", "large"),))
    red = render(scene, 32)[0]
    assert ((red > 0.05) & (red < 0.8)).any()


def test_render_rejects_bad_sizes():
    scene = _scenes(1)[0]
    for bad in (0, 12, 33):
        with pytest.raises(ValueError, match="multiple of 8"):
            render(scene, bad)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_cells_partition_the_image_and_hold_their_objects(size):
    owner = np.full((size, size), -1)
    for i in range(9):
        r0, r1, c0, c1 = cell_bounds(size, i)
        assert (owner[r0:r1, c0:c1] == -1).all()
        owner[r0:r1, c0:c1] = i
    assert (owner >= 0).all()
    # objects are not clipped by their cell at these sizes: coverage integrates to the shape's area
    area = {"circle": np.pi, "square": 4.0, "triangle": 2.0, "diamond": 2.0}   # in units of half-extent^2
    for (shape, obj_size, _), cov in coverage_templates(size).items():
        half = SIZE_EXTENT[obj_size] * size / 3
        assert cov.max() > 0.5
        assert cov.sum() == pytest.approx(area[shape] * half ** 2, rel=0.08)


def test_caption_mentions_every_object():
    for scene in _scenes(300):
        text = caption(scene)
        assert text == text.lower() and "  " not in text and text.split() == words(text)
        for obj in scene.objects:
            assert f"{obj.size} {obj.color} {obj.shape}" in text
        assert text.endswith(f"on a {scene.background} background")
    scene = Scene("white", (ShapeObject("circle", "red", "top left", "small"),
                            ShapeObject("square", "blue", "center", "large")))
    assert caption(scene) == ("a small red circle at the top left and a large blue square in the center "
                              "on a white background")


def test_vocabulary_covers_generated_text():
    vocab = set(vocabulary())
    assert vocabulary() == sorted(vocab)
    assert set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(SIZES) <= vocab
    for i in range(3000):
        ex, _, target = edit_example_with_truth(i, seed=3, image_size=8)
        for text in (ex.caption, ex.instruction, ex.object, ex.target_caption, caption(target)):
            assert set(text.split()) <= vocab, text
            assert text.split() == words(text)


def test_dataset_deterministic_and_balanced():
    ds = ShapesEditDataset(num_examples=1000, image_size=32, seed=0)
    assert len(ds) == 1000
    a, b = ds[17], ds[17]
    assert torch.equal(a.image, b.image) and a.instruction == b.instruction and a.caption == b.caption
    assert ShapesEditDataset(1000, 32, seed=0)[17].target_caption == a.target_caption
    other = ShapesEditDataset(1000, 32, seed=1)
    diffs = sum(ds[i].target_caption != other[i].target_caption for i in range(50))
    assert diffs >= 45
    cats = [ds[i].category for i in range(60)]
    assert set(cats) == set(SHAPES_CATEGORIES) and all(cats.count(c) == 10 for c in SHAPES_CATEGORIES)
    assert ds[-1].instruction == ds[999].instruction
    with pytest.raises(IndexError):
        ds[1000]
    sub = ShapesEditDataset(100, 16, seed=0, categories=("remove",))
    assert all(sub[i].category == "remove" for i in range(20))
    with pytest.raises(ValueError, match="categories"):
        ShapesEditDataset(10, 32, categories=("style",))


def test_dataset_never_returns_target_and_matches_truth_api():
    ds = ShapesEditDataset(num_examples=600, image_size=32, seed=4)
    assert not any("target" in f and f != "target_caption" for f in EditExample.__dataclass_fields__)
    for i in range(600):
        ex = ds[i]
        assert isinstance(ex, EditExample)
        truth_ex, target_img, target_scene = edit_example_with_truth(i, seed=4, image_size=32)
        assert torch.equal(ex.image, truth_ex.image) and ex.instruction == truth_ex.instruction
        assert ex.target_caption == truth_ex.target_caption == caption(target_scene)
        assert ex.target_caption != ex.caption, (ex.category, ex.instruction)
        assert not torch.equal(target_img, ex.image)
        assert torch.equal(target_img, render(target_scene, 32))


@pytest.mark.parametrize("size", [32, 64])
def test_parse_exact_on_renders(size):
    scenes = _scenes(2000, seed=size)
    for scene in scenes:
        assert parse_scene(render(scene, size)) == scene


@pytest.mark.parametrize("size", [32, 64])
def test_parse_under_mild_noise(size):
    gen = torch.Generator().manual_seed(size)
    for scene in _scenes(1000, seed=100 + size):
        img = render(scene, size)
        noisy = (img + 0.03 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
        assert parse_scene(noisy) == scene


def test_parse_edge_cases():
    empty = Scene("gray")
    assert parse_scene(render(empty, 32)) == empty
    full = Scene("beige", tuple(ShapeObject(SHAPES[i % 4], list(COLORS)[i % 6], p, SIZES[i % 2])
                                for i, p in enumerate(POSITIONS)))
    assert parse_scene(render(full, 32)) == full                 # repeated names, 9 objects: still parsed
    batch = torch.stack([render(s, 32) for s in _scenes(4)])
    assert parse_scenes(batch) == _scenes(4)
    assert parse_scene(render(_scenes(1)[0], 32).numpy()) == _scenes(1)[0]
    with pytest.raises(ValueError, match="image_size"):
        parse_scene(render(empty, 32), image_size=64)
    with pytest.raises(ValueError, match="square"):
        parse_scene(torch.zeros(3, 32, 16))


def test_examples_identical_across_processes():
    """Resume relies on example i being the same in a fresh process (no dependence on hash seeds)."""
    import os
    import subprocess
    import sys
    code = ("from npedit.data import ShapesEditDataset as D; import hashlib; d = D(1000, 16, seed=2); "
            "xs = [d[i] for i in range(0, 1000, 37)]; "
            "print(hashlib.md5(b''.join(x.image.numpy().tobytes() + x.instruction.encode() + "
            "x.target_caption.encode() for x in xs)).hexdigest())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed,
                   PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1


def test_partial_captions_name_a_random_part_of_the_scene():
    from npedit.data.shapes import describe_partial, partial_caption, partial_mention
    rng = random.Random(3)
    counts, backgrounds = set(), 0
    for _ in range(300):
        scene = random_scene(rng)
        assert partial_caption(scene, rng, 1.0) == caption(scene)
        assert partial_caption(scene, rng, 0.0) == "a background"
        seed = rng.randrange(1 << 30)
        objects, background = partial_mention(scene, random.Random(seed), 0.5)
        text = partial_caption(scene, random.Random(seed), 0.5)
        assert text == describe_partial(objects, background)   # a pure function of the rng
        assert set(objects) <= set(scene.objects) and background in (None, scene.background)
        assert all(o.describe() in text for o in objects) and "plain" not in text
        assert (f"{scene.background} background" in text) == (background is not None)
        counts.add(len(objects))
        backgrounds += background is not None
    assert counts == {0, 1, 2, 3} and 100 < backgrounds < 200
    assert describe_partial((), "white") == "a white background"
    with pytest.raises(ValueError, match="keep"):
        partial_caption(scene, rng, 1.5)


def test_dataset_partial_dmd_captions_leave_everything_else_unchanged():
    full, partial = ShapesEditDataset(60, seed=4), ShapesEditDataset(60, seed=4, dmd_caption_keep=0.5)
    shorter = 0
    for i in range(60):
        a, b = full[i], partial[i]
        assert a.dmd_caption == "" and b.dmd_caption == partial[i].dmd_caption   # deterministic per index
        assert (a.instruction, a.target_caption, a.caption) == (b.instruction, b.target_caption, b.caption)
        assert torch.equal(a.image, b.image)
        _, _, target = edit_example_with_truth(i, seed=4, categories=full.categories)
        named = [o for o in target.objects if o.describe() in b.dmd_caption]
        assert len(b.dmd_caption.split(" and ")) <= max(1, len(named))   # names nothing the target lacks
        shorter += b.dmd_caption != b.target_caption
    assert shorter > 30
    batch = collate([partial[i] for i in range(4)])
    assert batch.dmd_target_captions() == [partial[i].dmd_caption for i in range(4)]
    assert batch.to("cpu").dmd_target_captions() == batch.dmd_target_captions() and batch[1].dmd_caption == partial[1].dmd_caption
    plain = collate([full[i] for i in range(4)])
    assert plain.dmd_captions is None and plain.dmd_target_captions() == plain.target_captions
    with pytest.raises(ValueError, match="dmd_caption_keep"):
        ShapesEditDataset(10, dmd_caption_keep=-0.1)


def test_partial_teacher_batches_and_faithfulness_on_true_renders():
    from npedit.data.shapes import partial_mention
    from npedit.pretrain.teacher import TeacherConfig, partial_faithfulness, teacher_batch
    cfg = TeacherConfig(batch_size=64, caption_keep=0.5, drop_prob=0.0)
    _, prompts = teacher_batch(cfg, random.Random(0), 0)
    assert not any("plain" in p for p in prompts) and any(not p.endswith("background") for p in prompts)
    rng = random.Random(1)
    scenes = [random_scene(rng) for _ in range(24)]
    named = [partial_mention(s, rng, 0.5) for s in scenes]
    images = torch.stack([render(s) for s in scenes])
    report = partial_faithfulness(scenes, named, images)
    assert report["named_present"] == 1.0 and report["mean_unnamed_objects"] > 0
    wrong = partial_faithfulness(scenes, named, images.flip(-1))   # mirrored: named objects move
    assert wrong["named_present"] < 1.0


def test_teacher_pretraining_refuses_a_caption_keep_outside_0_1(tmp_path):
    from npedit.pretrain.teacher import TeacherConfig, train_teacher
    with pytest.raises(ValueError, match="caption_keep must be in"):
        train_teacher(TeacherConfig(caption_keep=2.0, steps=1), tmp_path)
    assert not any(tmp_path.iterdir())   # refused before anything was written
