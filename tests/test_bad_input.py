"""Bad input fails before training, with a message naming the cause; nothing is written."""
import json

import pytest
from PIL import Image

from npedit.train import main


def _run(capsys, out, *args):
    code = main(["--preset", "shapes_tiny", "--output_dir", str(out), *args])
    return code, capsys.readouterr().err


def _manifest(tmp_path, rows):
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"image": "good.png", "instruction": "make the red square blue", "category": "color",
        "object": "red square", "target_caption": "a blue square", "caption": "a red square"}


@pytest.mark.parametrize("row, fragments", [
    ({**GOOD, "image": "corrupt.png"}, ["data.jsonl:2", "corrupt.png"]),
    ({k: v for k, v in GOOD.items() if k != "target_caption"}, ["data.jsonl:2", "target_caption"]),
    ({**GOOD, "image": "missing.png"}, ["data.jsonl:2", "missing.png"]),
    ({**GOOD, "category": "teleport"}, ["data.jsonl:2", "teleport"]),
])
def test_bad_manifest_is_reported_with_file_and_line(tmp_path, capsys, row, fragments):
    manifest = _manifest(tmp_path, [GOOD, row])
    out = tmp_path / "run"
    code, err = _run(capsys, out, "--set", "data.kind=manifest", "--set", f"data.manifest={manifest}")
    assert code == 2
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


def test_a_good_manifest_passes_the_checks(tmp_path, capsys):
    manifest = _manifest(tmp_path, [GOOD, GOOD])
    code, _ = _run(capsys, tmp_path / "run", "--set", "data.kind=manifest", "--set", f"data.manifest={manifest}",
                   "--print_config")
    assert code == 0


def test_unknown_set_key(tmp_path, capsys):
    code, err = _run(capsys, tmp_path / "run", "--set", "method.vlm_wieght=1")
    assert code == 2 and "method.vlm_wieght" in err and "vlm_weight" in err


def test_deepspeed_json_that_disagrees(tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 3}}))
    code, err = _run(capsys, tmp_path / "run", "--ds_config", str(ds))
    assert code == 2 and "train_micro_batch_size_per_gpu" in err and "ds.json" in err
    assert not (tmp_path / "run").exists()


def test_missing_deepspeed_json_and_missing_model_folder(tmp_path, capsys):
    code, err = _run(capsys, tmp_path / "run", "--ds_config", str(tmp_path / "nope.json"))
    assert code == 2 and "nope.json" in err
    code, err = _run(capsys, tmp_path / "run", "--set", f"student.pretrained={tmp_path / 'no_model'}")
    assert code == 2 and "student.pretrained" in err and "no_model" in err
