"""The README's main command (`make train` runs exactly this) completes and writes what it promises."""
import json

import pytest

from helpers import read_metrics, train
from npedit.presets import get_preset


@pytest.mark.slow
def test_main_command_on_the_shapes_world(tmp_path):
    out = tmp_path / "shapes"
    train(out, preset="shapes", timeout=1800, OMP_NUM_THREADS="2")
    cfg = get_preset("shapes").train
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, cfg.max_steps + 1))
    assert all(r["loss_student"] == r["loss_student"] for r in rows)  # no NaN
    assert (out / "samples" / f"step_{cfg.max_steps}.png").is_file()
    assert (out / "checkpoints" / f"step_{cfg.max_steps}" / "trainer_state.json").is_file()
    assert (out / "tensorboard").is_dir()
    # the run starts from the shipped teacher and ends with the oracle's before / after report
    report = json.loads((out / "oracle_report.json").read_text())
    for when in ("before", "after"):
        overall = report[when]["overall"]
        assert overall["n"] == cfg.oracle_eval_examples
        assert 0 <= overall["success"] <= 1 and 0 <= overall["preservation"] <= 1
    assert report["before"]["overall"] != report["after"]["overall"]
