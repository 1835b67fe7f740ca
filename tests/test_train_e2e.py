"""The training entry point end to end, as users run it (subprocesses, real DeepSpeed on CPU/gloo)."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import read_metrics, run, train
from npedit.build import build_models
from npedit.config import apply_overrides
from npedit.engine.distributed import free_port
from npedit.outputs import REQUIRED_METRICS
from npedit.presets import get_preset


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """4 steps of the tiny preset in one go (checkpoints at 2 and 4, samples at 2 and 4)."""
    out = tmp_path_factory.mktemp("straight")
    train(out, "--max_steps", "4")
    return out


def assert_same_training(expected_run, run, step: int = 4) -> None:
    """Same losses at every step (rel 1e-4) and the same exported student weights at `step`."""
    for a, b in zip(read_metrics(expected_run), read_metrics(run)):
        for key in ("loss_student", "loss_vlm", "loss_dmd", "loss_fake"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    wa = load_file(expected_run / f"checkpoints/step_{step}/export/student/model.safetensors")
    wb = load_file(run / f"checkpoints/step_{step}/export/student/model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-6)


def test_run_writes_metrics_samples_and_complete_checkpoints(straight_run):
    rows = read_metrics(straight_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["stage"] == "warmup" and all(r["stage"] == "npedit" for r in rows[1:])
    assert rows[1]["vlm_tau"] == pytest.approx(get_preset("shapes_tiny").method.tau_start)   # ramp starts here
    for row in rows[1:]:
        for key in REQUIRED_METRICS:
            assert key in row and row[key] is not None, key
            assert row[key] == row[key]  # not NaN
    assert (straight_run / "samples" / "step_2.png").is_file() and (straight_run / "samples" / "step_4.png").is_file()
    for step in (2, 4):
        ckpt = straight_run / "checkpoints" / f"step_{step}"
        assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == step
        for part in ("student/ds", "fake/ds", "rng_rank0.pt", "export/student/model.safetensors",
                     "export/text_encoder/tokenizer.json", "export/codec/config.json", "export/config.json"):
            assert (ckpt / part).exists(), part
    assert not list((straight_run / "checkpoints").glob(".tmp*"))


def test_edit_cli_on_the_trained_checkpoint(straight_run, tmp_path):
    from PIL import Image

    from npedit.data.shapes import ShapesEditDataset
    from npedit.data.images import tensor_to_pil
    src = tmp_path / "in.png"
    tensor_to_pil(ShapesEditDataset(num_examples=4, image_size=48)[0].image).save(src)  # resized on load
    out = tmp_path / "out.png"
    run([sys.executable, "-m", "npedit", "edit", "--checkpoint", str(straight_run), "--image", str(src),
         "--instruction", "make the red circle blue", "--out", str(out), "--device", "cpu"])
    assert Image.open(out).size == (16, 16)
    run([sys.executable, "-m", "npedit", "edit", "--checkpoint", str(straight_run), "--image", str(src),
         "--instruction", "make the red circle blue", "--out", str(tmp_path / "euler.png"), "--sampler", "euler2"])
    assert Image.open(tmp_path / "euler.png").size == (16, 16)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc = run([sys.executable, "-m", "npedit", "edit", "--checkpoint", str(straight_run), "--image", str(bad),
                "--instruction", "x", "--out", str(out)], check=False)
    assert proc.returncode == 2 and "bad.png" in proc.stderr


def test_eval_cli_scores_the_chosen_categories(straight_run, tmp_path):
    out = tmp_path / "eval"
    run([sys.executable, "-m", "npedit", "eval", "--checkpoint", str(straight_run), "--num_examples", "4",
         "--categories", "remove,background", "--out", str(out), "--grid_rows", "2"])
    report = json.loads((out / "oracle_report.json").read_text())
    assert report["categories"] == ["remove", "background"] and report["num_examples"] == 4
    assert {c: r["n"] for c, r in report["per_category"].items()} == {"remove": 2, "background": 2}
    assert (out / "oracle_grid.png").is_file() and report["sampler"] == "fewstep"
    run([sys.executable, "-m", "npedit", "eval", "--checkpoint", str(straight_run), "--num_examples", "2",
         "--sampler", "euler3", "--out", str(tmp_path / "euler"), "--grid_rows", "1"])
    assert json.loads((tmp_path / "euler" / "oracle_report.json").read_text())["sampler"] == "euler3"
    proc = run([sys.executable, "-m", "npedit", "eval", "--checkpoint", str(straight_run), "--sampler", "ddim",
                "--out", str(tmp_path / "bad")], check=False)
    assert proc.returncode == 2 and "'ddim'" in proc.stderr
    proc = run([sys.executable, "-m", "npedit", "eval", "--checkpoint", str(straight_run), "--categories", "paint",
                "--out", str(tmp_path / "bad")], check=False)
    assert proc.returncode == 2 and "paint" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_resume_matches_a_straight_run(straight_run, tmp_path):
    train(tmp_path, "--max_steps", "2")
    train(tmp_path, "--max_steps", "4", "--resume")
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert_same_training(straight_run, tmp_path)


def test_resume_with_more_steps_follows_the_new_schedule(tmp_path):
    """A run stopped at the end of its schedule (LR 0 for the next step) and resumed with a longer
    max_steps trains exactly like the longer run straight through: the LR comes from the resumed
    config's schedule, not from the checkpoint (the shapes experiment forks its arms this way)."""
    cosine = ["--set", "student_optim.schedule=cosine", "--set", "train.warmup_stage_steps=2"]
    train(tmp_path / "straight", "--max_steps", "4", *cosine)
    train(tmp_path / "forked", "--max_steps", "2", *cosine)
    assert read_metrics(tmp_path / "forked")[-1]["lr"] == 0.0   # the warm-up run's cosine ended
    train(tmp_path / "forked", "--max_steps", "4", "--resume", *cosine)
    assert_same_training(tmp_path / "straight", tmp_path / "forked")
    lrs = [r["lr"] for r in read_metrics(tmp_path / "forked")]
    assert lrs[2:] == [r["lr"] for r in read_metrics(tmp_path / "straight")][2:]


def test_a_run_stopped_before_its_final_report_writes_it_on_resume(tmp_path):
    """Killed after its last checkpoint but before the "after" oracle report: the resume trains no
    step and writes the missing report."""
    oracle = ["--set", "train.oracle_eval_examples=6"]
    train(tmp_path, "--max_steps", "2", *oracle)
    path = tmp_path / "oracle_report.json"
    reports = json.loads(path.read_text())
    assert set(reports) == {"before", "after"}
    path.write_text(json.dumps({"before": reports["before"]}))
    train(tmp_path, "--max_steps", "2", "--resume", *oracle)
    assert json.loads(path.read_text())["after"] == reports["after"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointing_under_zero3_trains_like_keeping_every_activation(straight_run, tmp_path, mode):
    """The DeepSpeed ZeRO-3 engines gather weights inside checkpointed blocks, differently in forward
    and in the recompute; the run must still match the straight run (checkpointing none) step by step."""
    train(tmp_path, "--max_steps", "4", "--set", f"student.checkpointing={mode}")
    assert_same_training(straight_run, tmp_path)


def test_keeps_only_the_latest_checkpoints_and_refuses_to_overwrite(tmp_path):
    train(tmp_path, "--max_steps", "4", "--set", "train.keep_checkpoints=1")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4"]
    proc = train(tmp_path, "--max_steps", "6", check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4"]


@pytest.mark.multiproc
def test_two_ranks_zero3_with_the_deepspeed_launcher(tmp_path):
    """Then, with its final oracle report taken away (a run stopped just before it), a resume on both
    ranks writes the report again without training or hanging (the report is a collective)."""
    def launch(*extra):
        run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
             "npedit/train.py", "--ds_config", "configs/zero3_cpu.json", "--preset", "shapes_tiny",
             "--output_dir", str(tmp_path), "--max_steps", "3", "--set", "train.oracle_eval_examples=4", *extra],
            timeout=900)

    launch()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss_student"])) for r in rows)
    assert (tmp_path / "checkpoints" / "step_3" / "trainer_state.json").is_file()
    shards = sorted((tmp_path / "checkpoints" / "step_3" / "student" / "ds").glob("*optim_states.pt"))
    assert len(shards) == 2  # one ZeRO-3 optimizer shard per rank

    report = tmp_path / "oracle_report.json"
    before = json.loads(report.read_text())["before"]
    report.write_text(json.dumps({"before": before}))
    launch("--resume")
    assert set(json.loads(report.read_text())) == {"before", "after"}
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.multiproc
@pytest.mark.parametrize("stage, checkpointing", [(2, "none"), (3, "selective")])
def test_two_ranks_keep_identical_parameters(tmp_path, stage, checkpointing):
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "tests/workers/train_and_dump.py", str(tmp_path), f"train.zero_stage={stage}", "train.max_steps=3",
         f"student.checkpointing={checkpointing}"], timeout=900)
    ranks = [torch.load(tmp_path / f"params_rank{r}.pt", weights_only=False) for r in (0, 1)]
    init = build_models(apply_overrides(get_preset("shapes_tiny"), [f"train.zero_stage={stage}"]))
    for net, fresh in (("student", init.student), ("fake", init.fake)):
        for name, value in ranks[0][net].items():
            assert torch.equal(value, ranks[1][net][name]), (net, name)
        changed = [n for n, p in fresh.named_parameters() if not torch.equal(p.detach(), ranks[0][net][n])]
        assert changed, f"{net}: training did not change any parameter"
    assert ranks[0]["world_size"] == 2
    if stage == 3:   # npedit's generated config: the reduce bucket holds at most the whole student
        assert ranks[0]["reduce_buckets"] == [sum(p.numel() for p in init.student.parameters() if p.requires_grad)]
    assert all(v is None or v == v for v in ranks[0]["last"].values() if not isinstance(v, str))


def test_bf16_run(tmp_path):
    train(tmp_path, "--max_steps", "3", "--set", "train.precision=bf16", "--set", "student.checkpointing=full")
    rows = read_metrics(tmp_path)
    assert all(r["loss_student"] == r["loss_student"] for r in rows)  # finite, not NaN
    weights = load_file(tmp_path / "checkpoints/step_3/export/student/model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}


def test_vlm_only_skips_the_critic_and_trains_the_student_as_before(tmp_path):
    """dmd_weight = 0 (the VLM-only ablation): no critic updates (loss_fake is not a number) and the
    same student as a run whose DMD weight rounds to 0 in fp32 (1e-300: the critic trains, and the
    DMD term sends zeros), so skipping changes nothing but the time."""
    skip, keep = tmp_path / "skip", tmp_path / "keep"
    train(skip, "--max_steps", "4", "--set", "method.dmd_weight=0")
    train(keep, "--max_steps", "4", "--set", "method.dmd_weight=1e-300")
    skipped, kept = read_metrics(skip)[1:], read_metrics(keep)[1:]
    assert all(r["loss_fake"] is None or r["loss_fake"] != r["loss_fake"] for r in skipped), skipped
    assert all(r["loss_fake"] == r["loss_fake"] and r["loss_fake"] > 0 for r in kept), kept
    wa = load_file(keep / "checkpoints/step_4/export/student/model.safetensors")
    wb = load_file(skip / "checkpoints/step_4/export/student/model.safetensors")
    assert all(torch.equal(wb[name], wa[name]) for name in wa)
