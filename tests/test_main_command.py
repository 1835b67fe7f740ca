"""The README's main command (`make train`: `train.py --preset shapes`) completes and writes what it
promises. CI runs it at a tenth of the preset's budget (both stages, checkpoints, samples, the oracle
before and after), which keeps the suite near its 20-minute guide; the full command, 8-9 minutes on
2 cores, is run from a fresh clone before each hand-over (`make train`)."""
import json

import pytest

from helpers import read_metrics, train
from npedit.presets import get_preset


SHORT = dict(max_steps=150, warmup_stage_steps=120, sample_every=75, checkpoint_every=75)


@pytest.mark.slow
def test_main_command_on_the_shapes_world(tmp_path):
    out = tmp_path / "shapes"
    train(out, *[f"--set=train.{k}={v}" for k, v in SHORT.items()], preset="shapes", timeout=1800,
          OMP_NUM_THREADS="2")
    cfg = get_preset("shapes").train
    for key, value in SHORT.items():
        setattr(cfg, key, value)
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
