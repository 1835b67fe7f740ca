"""JSONL manifests: loading and the errors that name file, line and cause."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from npedit.data import CATEGORIES, ManifestDataset, ManifestError, StepLoader, read_manifest


def _png(path, size=(12, 8), color=(200, 10, 10)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = color
    Image.fromarray(arr).save(path)


def _write(path, rows):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(image="a.png", **kw):
    row = {"image": image, "instruction": "make the car red", "category": "color", "target_caption": "a red car"}
    row.update(kw)
    return row


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "a.png")
    _png(tmp_path / "imgs" / "b.png", size=(8, 20), color=(0, 0, 255))
    Image.new("RGBA", (10, 10), (0, 255, 0, 128)).save(tmp_path / "c.png")
    return tmp_path


def test_good_manifest_loads(folder):
    path = _write(folder / "train.jsonl", [
        _row(),
        "",
        _row("imgs/b.png", category="Remove", object="car", caption="a blue car", instruction="remove the car",
             target_caption="an empty road", extra=1),
        _row(str(folder / "c.png"), category="style", object=None),
    ])
    records = read_manifest(path)
    assert len(records) == 3
    assert records[0]["object"] == "" and records[0]["caption"] == ""
    assert records[1]["category"] == "remove" and records[1]["extra"] == 1 and records[1]["object"] == "car"
    ds = ManifestDataset(path, image_size=16)
    assert len(ds) == 3
    ex = ds[1]
    assert ex.image.shape == (3, 16, 16) and ex.image.dtype == torch.float32
    assert 0 <= ex.image.min() and ex.image.max() <= 1
    assert ex.image[2].mean() > 0.9 and ex.image[0].mean() < 0.1   # the blue image, cropped + resized
    assert (ex.caption, ex.instruction, ex.category, ex.object) == ("a blue car", "remove the car", "remove", "car")
    assert ds[2].image.shape == (3, 16, 16)                            # RGBA -> RGB
    batch = StepLoader(ds, batch_size=2, seed=0).batch(0)
    assert batch.images.shape == (2, 3, 16, 16)


def _error(path) -> str:
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    return str(info.value)


@pytest.mark.parametrize("bad,cause", [
    (_row("garbage.png"), "cannot read image"),
    (_row("missing.png"), "not found"),
    ({k: v for k, v in _row().items() if k != "target_caption"}, "missing required field 'target_caption'"),
    (_row(category="teleport"), "unknown value 'teleport'"),
    ('{"image": "a.png", "instruction": ', "bad JSON"),
    (_row(instruction="  "), "'instruction' is empty"),
    (_row(instruction=3), "must be a string"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_line_names_file_line_and_cause(folder, bad, cause):
    (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png" * 3)
    path = _write(folder / "m.jsonl", [_row(), _row(), bad, _row()])
    msg = _error(path)
    assert "m.jsonl:3:" in msg and cause in msg
    assert str(path) in msg
    assert "m.jsonl:1:" not in msg and "m.jsonl:4:" not in msg
    if "missing" in str(bad):
        assert "missing.png" in msg


def test_unknown_category_lists_allowed(folder):
    msg = _error(_write(folder / "m.jsonl", [_row(category="zoom")]))
    assert all(c in msg for c in CATEGORIES)


def test_truncated_image_is_caught(folder):
    data = (folder / "a.png").read_bytes()
    _png(folder / "big.png", size=(64, 64))
    big = (folder / "big.png").read_bytes()
    (folder / "trunc.png").write_bytes(big[: len(big) // 2])
    msg = _error(_write(folder / "m.jsonl", [_row("trunc.png")]))
    assert "m.jsonl:1:" in msg and "trunc.png" in msg and len(data) > 0


def test_all_problems_collected_and_capped(folder):
    rows = [_row(category="nope")] * 30 + [_row("missing.png")]
    msg = _error(_write(folder / "m.jsonl", rows))
    assert "31 problems" in msg and "m.jsonl:1:" in msg and "m.jsonl:20:" in msg
    assert "m.jsonl:21:" not in msg and "and 11 more" in msg
    msg = _error(_write(folder / "m.jsonl", [_row(category="nope"), _row("missing.png")]))
    assert "m.jsonl:1:" in msg and "m.jsonl:2:" in msg


def test_missing_or_empty_manifest(folder):
    with pytest.raises(ManifestError, match="nothere.jsonl"):
        read_manifest(folder / "nothere.jsonl")
    (folder / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="empty.jsonl.*no records"):
        read_manifest(folder / "empty.jsonl")
    with pytest.raises(ManifestError, match="m.jsonl:1:"):
        ManifestDataset(_write(folder / "m.jsonl", [_row("missing.png")]), image_size=16)
