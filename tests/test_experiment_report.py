"""The shapes experiment's bookkeeping: the report's target and ablation verdicts, and the teacher record."""
import json
import shutil
import sys

import pytest

from helpers import REPO, train

sys.path.insert(0, str(REPO / "experiments" / "shapes"))
import report  # noqa: E402
import run as experiment  # noqa: E402

CATEGORIES = ("color", "background")


def write_report(folder, key_scores: dict[str, tuple[float, float]]) -> None:
    """oracle_report.json with `key -> (success, preservation)` ("before" / "after")."""
    folder.mkdir(parents=True)
    data = {}
    for key, (success, preservation) in key_scores.items():
        scores = {"n": 10, "success": success, "preservation": preservation, "exact": min(success, preservation),
                  "pixel_mae": 0.1}
        data[key] = {"num_examples": 20, "overall": scores, "per_category": {c: scores for c in CATEGORIES}}
    (folder / "oracle_report.json").write_text(json.dumps(data))


@pytest.fixture
def runs(tmp_path):
    """3 seeds. NP-Edit 0.50-0.60 success; supervised 0.60; DMD-only equal to NP-Edit; VLM-only far below."""
    for seed, jitter in enumerate((0.0, 0.05, 0.10)):
        write_report(tmp_path / f"npedit_s{seed}", {"before": (0.1, 0.1), "after": (0.5 + jitter, 0.5 + jitter)})
        write_report(tmp_path / f"dmd_only_s{seed}", {"after": (0.5 + jitter, 0.5 + jitter)})
        write_report(tmp_path / f"vlm_only_s{seed}", {"after": (0.1, 0.5 + jitter)})
        write_report(tmp_path / f"supervised_s{seed}", {"after": (0.6, 0.5)})
    return tmp_path


def test_report_states_the_targets_and_which_ablations_are_clearly_worse(runs):
    summary = report.summarise(report.load_reports(runs, [0, 1, 2]))
    assert summary["untrained"]["overall"]["success"][0] == pytest.approx(0.1)
    text = report.markdown(summary, [0, 1, 2], 20, "")
    assert "- success: NP-Edit 55.0% / supervised 60.0% = 0.92 (met)" in text
    assert "- preservation: NP-Edit 55.0% / supervised 50.0% = 1.10 (met)" in text
    ablations = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("- ") and "only" in line}
    assert ablations["- DMD only (vlm_weight=0)"].endswith("not clearly worse")
    assert ablations["- VLM only (dmd_weight=0)"].endswith("clearly worse in success")


def test_one_seed_gets_no_ablation_verdict(runs):
    summary = report.summarise(report.load_reports(runs, [0]))
    dmd_line = next(line for line in report.ablation_lines(summary) if line.startswith("- DMD only"))
    assert dmd_line.endswith("no verdict from one seed (no seed spread to compare the gap with)")


def test_an_earlier_results_json_adds_the_seeds_the_runs_lack(runs):
    """--merge: seed 3 of an earlier report joins seeds 0-1 on disk; its seed 0 does not replace the run's."""
    earlier = report.load_reports(runs, [0, 2])
    for rows in earlier.values():
        for row in rows:
            row["seed"] = 3 if row["seed"] == 2 else 0
    earlier["npedit"][0]["overall"] = dict(earlier["npedit"][0]["overall"], success=0.99)  # seed 0: ignored
    merged = report.merge_reports(report.load_reports(runs, [0, 1]), {"runs": earlier})
    assert [r["seed"] for r in merged["npedit"]] == [0, 1, 3]
    assert [r["overall"]["success"] for r in merged["npedit"]] == pytest.approx([0.5, 0.55, 0.6])
    assert [r["seed"] for r in merged["untrained"]] == [0, 1, 3]
    summary = report.summarise(merged)
    assert summary["supervised"]["seeds"] == [0, 1, 3]
    assert summary["npedit"]["overall"]["success"][0] == pytest.approx(0.55)


def test_merge_refuses_reports_scored_on_other_held_out_sets(runs, tmp_path_factory, capsys):
    earlier = report.load_reports(runs, [2])
    for rows in earlier.values():
        for row in rows:
            row.update(seed=3, num_examples=1200)
    path = tmp_path_factory.mktemp("earlier") / "results.json"
    path.write_text(json.dumps({"seeds": [3], "runs": earlier}))
    out = tmp_path_factory.mktemp("out")
    assert report.main(["--runs", str(runs), "--seeds", "0", "1", "--merge", str(path), "--out", str(out)]) == 2
    assert "different numbers of held-out edits ([20, 1200])" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_clearly_below_needs_more_than_the_seed_spread():
    assert report.clearly_below((0.5, 0.05), (0.3, 0.1))
    assert not report.clearly_below((0.5, 0.1), (0.35, 0.1))
    assert not report.clearly_below((0.3, 0.0), (0.5, 0.0))


def test_teacher_record_refuses_a_folder_of_runs_from_another_teacher(runs, tmp_path_factory):
    teacher = tmp_path_factory.mktemp("teacher")
    shutil.copytree(REPO / "npedit" / "assets" / "shapes" / "teacher", teacher, dirs_exist_ok=True)
    experiment.record_teacher(runs, [f"student.pretrained={teacher}"])
    recorded = json.loads((runs / "teacher.json").read_text())
    assert recorded["weights"] == "model.safetensors" and len(recorded["sha256"]) == 64
    assert f"sha256 {recorded['sha256'][:12]}" in report.teacher_line(runs)
    experiment.record_teacher(runs, [f"student.pretrained={teacher}"])   # same teacher: a resume is fine
    (teacher / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(SystemExit, match="another teacher"):
        experiment.record_teacher(runs, [f"student.pretrained={teacher}"])
    assert json.loads((runs / "teacher.json").read_text()) == recorded


def test_report_without_a_teacher_record_says_so(tmp_path):
    assert "not recorded" in report.teacher_line(tmp_path)


def _checkpoint(folder, step):
    """A complete-looking checkpoint folder: step_<step>/ with its trainer state."""
    from npedit.engine.checkpoint import STATE_FILE

    (folder / "checkpoints" / f"step_{step}").mkdir(parents=True)
    (folder / "checkpoints" / f"step_{step}" / STATE_FILE).write_text(json.dumps({"step": step}))


def _exported_checkpoint(folder, step):
    """_checkpoint with the export's config of a run whose budget is `step` steps, 1,200 of them warm-up."""
    _checkpoint(folder, step)
    export = folder / "checkpoints" / f"step_{step}" / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps(
        {"train": {"max_steps": step, "warmup_stage_steps": 1200}, "data": {"batch_size": 4}}))


def test_an_arm_forks_from_the_shared_warmup_and_resumes(tmp_path):
    """The arm gets the warm-up's newest complete checkpoint, its metrics log and only its "before"
    report (the untrained student); its command resumes, and the warm-up's stops after the warm-up."""
    warmup = tmp_path / "warmup_s0"
    write_report(warmup, {"before": (0.1, 0.2), "after": (0.3, 0.4)})
    for step in (750, 1200):
        _checkpoint(warmup, step)
    (warmup / "checkpoints" / ".tmp_step_1500").mkdir()   # an unfinished save is never forked
    (warmup / "metrics.jsonl").write_text('{"step": 1}\n')
    arm = tmp_path / "npedit_s0"
    arm.mkdir()
    experiment.fork_from_warmup(warmup, arm, 1200)
    assert [p.name for p in (arm / "checkpoints").iterdir()] == ["step_1200"]
    assert (arm / "metrics.jsonl").read_text() == '{"step": 1}\n'
    forked = json.loads((arm / "oracle_report.json").read_text())
    assert list(forked) == ["before"] and forked["before"]["overall"]["success"] == 0.1

    arm_cmd = experiment.command("dmd_only", 0, arm, ["train.max_steps=2100"], 1, warmup_steps=1200)
    assert "--resume" in arm_cmd and "method.vlm_weight=0" in arm_cmd
    warm_cmd = experiment.command(experiment.WARMUP, 0, warmup, ["train.max_steps=2100"], 1, warmup_steps=1200)
    assert "--resume" not in warm_cmd
    sets = [warm_cmd[i + 1] for i, a in enumerate(warm_cmd) if a == "--set"]
    assert sets[-1] == "train.max_steps=1200"   # the last override wins: the warm-up stops at its end
    with pytest.raises(RuntimeError, match="no checkpoint"):
        experiment.fork_from_warmup(tmp_path / "vlm_only_s0", tmp_path / "elsewhere", 1200)
    with pytest.raises(RuntimeError, match="ends at step_1200, but this experiment's warm-up stage has 800"):
        experiment.fork_from_warmup(warmup, tmp_path / "elsewhere", 800)


def test_an_interrupted_trainer_run_continues_and_a_supervised_one_starts_over(tmp_path, monkeypatch):
    """run.py run again: the arm with a checkpoint of its own and its "before" report resumes in place
    (its checkpoint and log kept); one with neither, and the supervised run (no checkpoints), start over."""
    calls = {}

    def fake_run(cmd, **kwargs):
        calls[kwargs["stdout"].name] = cmd
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(experiment.subprocess, "run", fake_run)
    warmup = tmp_path / "warmup_s0"
    write_report(warmup, {"before": (0.1, 0.2), "after": (0.3, 0.4)})
    _checkpoint(warmup, 1200)
    (warmup / "metrics.jsonl").write_text("")
    done = type("Done", (), {"result": lambda self: None})()

    arm = tmp_path / "npedit_s0"
    write_report(arm, {"before": (0.1, 0.2)})
    _checkpoint(arm, 1200)
    _checkpoint(arm, 2400)
    (arm / "log.txt").write_text("first attempt\n")
    experiment.run_one("npedit", 0, tmp_path, [], 1, done, 1200)
    assert sorted(p.name for p in (arm / "checkpoints").iterdir()) == ["step_1200", "step_2400"]
    assert (arm / "log.txt").read_text().startswith("first attempt\n")
    assert "--resume" in calls[str(arm / "log.txt")]

    broken = tmp_path / "dmd_only_s0"   # stopped while forking: a partial copy and no report
    (broken / "checkpoints" / ".tmp_step_1200").mkdir(parents=True)
    experiment.run_one("dmd_only", 0, tmp_path, [], 1, done, 1200)
    assert sorted(p.name for p in (broken / "checkpoints").iterdir()) == ["step_1200"]   # forked afresh

    supervised = tmp_path / "supervised_s0"
    supervised.mkdir()
    (supervised / "metrics.jsonl").write_text('{"step": 5}\n')
    experiment.run_one("supervised", 0, tmp_path, [], 1)
    assert not (supervised / "metrics.jsonl").exists()
    assert "--resume" not in calls[str(supervised / "log.txt")]

    warm_cmd = experiment.command(experiment.WARMUP, 0, warmup, [], 1, warmup_steps=1200, resume=True)
    assert "--resume" in warm_cmd


def test_extend_from_continues_finished_arms_to_a_larger_budget(tmp_path, monkeypatch, capsys):
    """--extend_from: an arm starts from the final checkpoint of the earlier run (with its "before"
    report and metrics log, its wall time counted) and resumes to the new max_steps; the warm-up is
    linked, not rerun; an unfinished earlier arm, or one already at the budget, is refused and leaves
    nothing behind."""
    calls = {}

    def fake_run(cmd, **kwargs):
        calls[kwargs["stdout"].name] = cmd
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(experiment.subprocess, "run", fake_run)
    prev, root = tmp_path / "exp_2400", tmp_path / "exp_3600"
    write_report(prev / "warmup_s0", {"before": (0.1, 0.2), "after": (0.2, 0.3)})
    write_report(prev / "npedit_s0", {"before": (0.1, 0.2), "after": (0.5, 0.6)})
    for step in (1200, 2400):
        _checkpoint(prev / "npedit_s0", step)
    (prev / "npedit_s0" / "metrics.jsonl").write_text('{"step": 2400}\n')
    (prev / "npedit_s0" / "wall_seconds.txt").write_text("100.0\n")
    write_report(prev / "dmd_only_s0", {"before": (0.1, 0.2)})   # still training
    _checkpoint(prev / "dmd_only_s0", 1800)

    assert experiment.main(["--seeds", "0", "--methods", "npedit", "--jobs", "1", "--out", str(root),
                            "--extend_from", str(prev), "--set", "train.max_steps=3600", "--no_report"]) == 0
    arm = root / "npedit_s0"
    assert [p.name for p in (arm / "checkpoints").iterdir()] == ["step_2400"]
    assert list(json.loads((arm / "oracle_report.json").read_text())) == ["before"]
    assert (arm / "metrics.jsonl").read_text() == '{"step": 2400}\n'
    assert float((arm / "wall_seconds.txt").read_text()) >= 100.0
    cmd = calls[str(arm / "log.txt")]
    assert "--resume" in cmd and "train.max_steps=3600" in cmd
    assert (root / "warmup_s0").is_symlink() and (root / "warmup_s0").resolve() == (prev / "warmup_s0").resolve()
    assert str(root / "warmup_s0" / "log.txt") not in calls   # the warm-up is not rerun

    with pytest.raises(RuntimeError, match="not a finished run"):
        experiment.run_one("dmd_only", 0, root, ["train.max_steps=3600"], 1, extend_from=prev)
    with pytest.raises(RuntimeError, match="already trained 2400 steps"):
        experiment.run_one("npedit", 0, tmp_path / "exp_2400b", ["train.max_steps=2400"], 1, extend_from=prev)
    assert not (root / "dmd_only_s0").exists() and not (tmp_path / "exp_2400b" / "npedit_s0").exists()
    with pytest.raises(SystemExit):
        experiment.main(["--out", str(root), "--extend_from", str(root), "--no_report"])
    assert "another folder than --out" in capsys.readouterr().err


def test_the_report_has_a_warmup_only_row(runs):
    write_report(runs / "warmup_s0", {"before": (0.1, 0.1), "after": (0.2, 0.3)})
    summary = report.summarise(report.load_reports(runs, [0, 1, 2]))
    assert summary["warmup"]["overall"]["preservation"][0] == pytest.approx(0.3)
    assert "| reference-copy warm-up only | 1 |" in report.markdown(summary, [0, 1, 2], 20, "")


def test_judge_agreement_splits_the_reward_by_the_oracle_verdict():
    """The shipped judge on 12 held-out edits: every true target is an oracle success and gets a higher
    edit-question reward than the unedited references, which are never one."""
    import judge_agreement
    from npedit.assets import asset_path
    from npedit.eval.shapes_eval import held_out_edits

    judge = judge_agreement.judge_at(asset_path("shapes/judge"), 40)
    data = held_out_edits(12)
    truths = judge_agreement.agreement(judge, data, data.truths)
    refs = judge_agreement.agreement(judge, data, data.references)
    assert truths["edit"]["n_yes"] == 12 and truths["edit"]["oracle_no"] is None
    assert refs["edit"]["n_yes"] == 0 and refs["identity"]["n_no"] == 0   # unedited: nothing else changed
    assert truths["edit"]["oracle_yes"] > refs["edit"]["oracle_no"] + 0.2
    # per category: the oracle's success rate is 1 on the true targets and 0 on the references
    assert set(truths["success_by_category"]) == set(data.categories)
    assert set(truths["success_by_category"].values()) == {1.0} and set(refs["success_by_category"].values()) == {0.0}
    means = [truths["edit_by_category"][c] for c in data.categories]
    assert abs(sum(means) / len(means) - truths["edit_mean"]) < 1e-6   # counted per edit: the overall mean
    text = judge_agreement.markdown({"judge": "shapes/judge", "seeds": [0], "num_examples": 12,
                                     "rows": {"true targets": truths, "references (unedited)": refs}})
    assert "| true targets | " in text and " - |" in text and "Judge: `shapes/judge`" in text
    assert "| references (unedited) | " + " | ".join(
        f"{refs['edit_by_category'][c]:.2f} / 0.00" for c in truths["edit_by_category"]) + " |" in text


def test_rescore_scores_every_finished_run_on_the_held_out_stream(tmp_path):
    """A 2-step tiny run, re-scored on 6 held-out edits: the report has the trainer's layout (after, and
    before for an NP-Edit run), is read back by report.py --report, and a student equal to the untrained
    one scores the same before and after (same edits, same noise). Folders without a final report (not
    started, or an arm forked from its warm-up and still training) are skipped, and so is a run already
    scored the same way, unless --force."""
    import rescore

    runs = tmp_path / "exp"
    arm = runs / "npedit_s3"
    train(arm, "--max_steps", "2", "--set", "train.oracle_eval_examples=4")
    (runs / "warmup_s3").mkdir()                 # unfinished: no oracle_report.json
    (runs / "dmd_only_s3").mkdir()               # forked from the warm-up, still training: only "before"
    (runs / "dmd_only_s3" / "oracle_report.json").write_text(json.dumps({"before": {}}))
    (runs / "notes").mkdir()
    assert rescore.finished_runs(runs) == [(arm, 3)]
    # make the "untrained" student the trained one: before and after must then agree exactly
    export = next(arm.glob("checkpoints/step_2/export"))
    cfg = json.loads((export / "config.json").read_text())
    cfg["student"]["pretrained"] = str(export / "student")
    (export / "config.json").write_text(json.dumps(cfg))

    assert rescore.main(["--runs", str(runs), "--num_examples", "6", "--name", "rescored.json"]) == 0
    result = json.loads((arm / "rescored.json").read_text())
    assert result["num_examples"] == 6 and result["noise_seed"] == 3 and result["sampler"] == "fewstep"
    assert result["after"]["overall"]["n"] == 6 and result["before"] == result["after"]
    assert sum(c["n"] for c in result["after"]["per_category"].values()) == 6
    summary = report.summarise(report.load_reports(runs, [3], "rescored.json"))
    assert summary["npedit"]["overall"]["success"][0] == result["after"]["overall"]["success"]
    assert not (runs / "warmup_s3" / "rescored.json").exists()
    assert not (runs / "dmd_only_s3" / "rescored.json").exists()

    # a rerun skips the run already scored this way; another --num_examples or --force scores it again
    def rescore_marked(*extra):
        (arm / "rescored.json").write_text(json.dumps({**json.loads((arm / "rescored.json").read_text()),
                                                       "marker": 1}))
        assert rescore.main(["--runs", str(runs), "--name", "rescored.json", *extra]) == 0
        return json.loads((arm / "rescored.json").read_text())

    assert rescore_marked("--num_examples", "6")["marker"] == 1
    assert "marker" not in rescore_marked("--num_examples", "4")
    assert "marker" not in rescore_marked("--num_examples", "4", "--force")


def test_rescore_refuses_bad_arguments(tmp_path, capsys):
    import rescore

    assert rescore.main(["--runs", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    assert rescore.main(["--runs", str(tmp_path), "--name", "oracle_report.json"]) == 2
    assert "overwrite the trainer's own report" in capsys.readouterr().err
    assert rescore.main(["--runs", str(tmp_path), "--sampler", "heun"]) == 2
    assert "'heun'" in capsys.readouterr().err


def test_the_budget_comes_from_the_newest_checkpoint_not_the_forked_warmup(tmp_path):
    for step in (1200, 2100):   # step_1200 is the warm-up's, forked into the arm
        _exported_checkpoint(tmp_path / "npedit_s0", step)
    assert report.budget_line(tmp_path).startswith("Budget per method: 2100 steps of batch 4 (1200 of them")
    assert report.budget_line(tmp_path / "npedit_s0") == ""


def test_the_budget_comes_from_an_ablation_where_no_npedit_run_is_on_disk(tmp_path):
    """A folder of ablation runs only (merged into an earlier table) still states its budget."""
    (tmp_path / "supervised_s0").mkdir()   # trained straight, no checkpoints: never the source
    _exported_checkpoint(tmp_path / "dmd_only_s0", 7200)
    assert report.budget_line(tmp_path).startswith("Budget per method: 7200 steps of batch 4 (1200 of them")


def test_category_ratios_set_removals_aside(tmp_path, capsys):
    import category_ratios

    def method(success: dict, preservation: float) -> dict:
        return {"per_category": {c: {"success": [s, 0.0], "preservation": [preservation, 0.0]}
                                 for c, s in success.items()}}
    summary = {"npedit": method({"color": 0.2, "remove": 0.0, "background": 0.8}, 0.6),
               "supervised": method({"color": 0.1, "remove": 0.6, "background": 0.7}, 0.2)}
    got = category_ratios.ratios({"summary": summary})
    assert got["all"]["success"] == pytest.approx(1.0 / 1.4)
    assert got["without remove"]["success"] == pytest.approx(1.0 / 0.8)
    assert got["remove"]["success"] == 0.0 and got["all"]["preservation"] == pytest.approx(3.0)
    with pytest.raises(KeyError, match="no 'supervised' runs"):
        category_ratios.ratios({"summary": {"npedit": summary["npedit"]}})
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "results.json").write_text(json.dumps({"summary": summary}))
    assert category_ratios.main([str(tmp_path / "exp")]) == 0
    assert "| without remove | 50.0 | 40.0 | 1.25 | 3.00 |" in capsys.readouterr().out
    assert category_ratios.main([str(tmp_path / "missing")]) == 2
    assert "missing/results.json" in capsys.readouterr().err


def test_teacher_record_names_a_separate_real_score_and_refuses_another(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs_real_score")
    student, real = (tmp_path_factory.mktemp(n) for n in ("student", "real"))
    for folder in (student, real):
        shutil.copytree(REPO / "npedit" / "assets" / "shapes" / "teacher", folder, dirs_exist_ok=True)
    (real / "model.safetensors").write_bytes(b"a teacher of partial captions")
    sets = [f"student.pretrained={student}", f"student.teacher={real}"]
    experiment.record_teacher(runs, sets)
    recorded = json.loads((runs / "teacher.json").read_text())
    assert recorded["real_score"]["sha256"] != recorded["sha256"]
    assert f"real and fake scores from `{real}`" in report.teacher_line(runs)
    experiment.record_teacher(runs, sets)   # a resume with the same pair is fine
    with pytest.raises(SystemExit, match="another teacher"):
        experiment.record_teacher(runs, sets[:1])   # the same student without that real score is not


def test_removal_signal_reads_an_objects_opacity_and_the_dmd_direction(tmp_path):
    """object_alpha is 1 on the render, 0 with the object removed, 0.5 on their average, and does not see
    the other cells; a difference inside one cell puts all its energy there. On a 2-step tiny run the
    script writes, per run, the student's opacities and the real / fake signal at every noise level."""
    sys.path.insert(0, str(REPO / "experiments" / "shapes" / "removal_signal"))
    import measure
    import torch

    from npedit.data.shapes import Scene, ShapeObject, render

    named = ShapeObject(shape="square", color="red", position="top left", size="large")
    other = ShapeObject(shape="circle", color="blue", position="bottom right", size="small")
    scene, removed = Scene("white", (named, other)), Scene("white", (other,))
    for size in (16, 32):
        full, gone = render(scene, size), render(removed, size)
        assert measure.object_alpha(full, named, "white") == pytest.approx(1.0, abs=1e-5)
        assert measure.object_alpha(gone, named, "white") == pytest.approx(0.0, abs=1e-5)
        assert measure.object_alpha((full + gone) / 2, named, "white") == pytest.approx(0.5, abs=1e-5)
        assert measure.object_alpha(gone, other, "white") == pytest.approx(1.0, abs=1e-5)
        assert measure.cell_energy_share(full - gone, "top left") == pytest.approx(1.0)
        assert measure.cell_energy_share(full - gone, "bottom right") == pytest.approx(0.0)

    runs = tmp_path / "exp"
    arm = runs / "npedit_s1"
    train(arm, "--max_steps", "2", "--set", "train.oracle_eval_examples=4")
    export = next(arm.glob("checkpoints/step_2/export"))   # the tiny preset has no teacher: the real score
    cfg = json.loads((export / "config.json").read_text())   # is then the student's own start
    cfg["student"]["pretrained"] = str(export / "student")
    (export / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "signal.json"
    assert measure.main(["--runs", str(runs), "--out", str(out), "--num_examples", "8", "--steps", "2", "7"]) == 0
    result = json.loads(out.read_text())["results"]
    assert list(result) == ["npedit_s1/step_2"]          # step_7 does not exist: skipped
    r = result["npedit_s1/step_2"]
    assert r["n"] == 8 and sum(r["alpha_named_hist"].values()) == 8 and 0 <= r["removed"] <= 1
    assert set(r["signal"]) == {str(t) for t in measure.NOISE_LEVELS}
    assert all(0 <= s["named_cell_share"] <= 1 and torch.isfinite(torch.tensor(s["alpha_fake"]))
               for s in r["signal"].values())
    assert measure.main(["--runs", str(runs), "--out", str(out), "--num_examples", "2", "--steps", "7"]) == 0
    assert list(json.loads(out.read_text())["results"]) == ["npedit_s1"]   # none of the steps: the final student
    assert measure.main(["--runs", str(tmp_path / "none"), "--out", str(out)]) == 2
