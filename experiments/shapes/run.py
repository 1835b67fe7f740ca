"""Run the shapes-world experiment: NP-Edit vs its ablations vs the supervised upper bound, several seeds.

Every method trains from the same shipped teacher with the same budget (the `shapes` preset's
steps and batch size, overridable with --set for all of them); the untrained student is the "before"
oracle report of the NP-Edit runs. The reference-copy warm-up does not depend on the NP-Edit stage's
loss weights, so the trainer arms of a seed (NP-Edit, DMD-only, VLM-only) share one: it runs once to
OUT/warmup_s<seed>/ (its own oracle report is the "warm-up only" row) and each arm resumes from its
last checkpoint, exactly as if it had run straight through (the trainer's resume is step-exact).
The arms then differ only in what the NP-Edit stage did. Runs go to OUT/<method>_s<seed>/; the
same command run again skips the finished runs and continues an interrupted warm-up or trainer arm
from its newest complete checkpoint (a supervised run, which keeps none, starts over). Then
report.py writes RESULTS.md, results.json and the figures.

    python experiments/shapes/run.py --seeds 0 1 2 --jobs 2 --out runs/exp_shapes

--extend_from PREV gives finished runs a larger budget without training them again: each trainer arm
starts from the final checkpoint of PREV/<method>_s<seed> (its "before" report and metrics log come
along; the warm-up is linked, not rerun) and resumes to the new train.max_steps. The student's LR then
follows the new, longer cosine from PREV's last step: a warm restart, not the schedule of a straight
run of that length. A supervised run keeps no checkpoints and trains the whole new budget straight.

    python experiments/shapes/run.py --seeds 0 1 2 --out runs/exp_12000 --extend_from runs/exp_7200 \
        --set train.max_steps=12000
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# method -> extra --set overrides of the NP-Edit trainer (None: the supervised loop)
METHODS: dict[str, list[str] | None] = {
    "npedit": [],
    "dmd_only": ["method.vlm_weight=0"],
    "vlm_only": ["method.dmd_weight=0"],
    # does more VLM feedback help? the preset's (the paper's) vlm_weight is 0.02
    "vlm_w0.1": ["method.vlm_weight=0.1"],
    "vlm_w0.3": ["method.vlm_weight=0.3"],
    "supervised": None,
}


WARMUP = "warmup"   # the shared reference-copy warm-up of the trainer arms (OUT/warmup_s<seed>)


def is_supervised(method: str) -> bool:
    """Trained by supervised.py on true pairs (no warm-up fork, no checkpoints), not by the trainer."""
    return method != WARMUP and METHODS[method] is None


def preset_config(overrides: list[str]):
    """The `shapes` preset with the experiment's overrides (the budget every method gets)."""
    from npedit.config import apply_overrides
    from npedit.presets import get_preset

    return apply_overrides(get_preset("shapes"), overrides)


def command(method: str, seed: int, out: Path, overrides: list[str], threads: int,
            warmup_steps: int = 0, resume: bool = False) -> list[str]:
    """The run's command line. method WARMUP: the trainer stopped after `warmup_steps`; a trainer arm
    with warmup_steps > 0 resumes from the warm-up checkpoint copied into `out` (fork_from_warmup);
    `resume`: either continues from its own newest checkpoint in `out` (an interrupted run)."""
    sets = [a for o in overrides for a in ("--set", o)]
    if is_supervised(method):
        return [sys.executable, str(HERE / "supervised.py"), "--seed", str(seed), "--output_dir", str(out),
                "--threads", str(threads), *sets]
    if method == WARMUP:
        extra = ["--set", f"train.max_steps={warmup_steps}"] + (["--resume"] if resume else [])
    else:
        extra = [a for o in METHODS[method] for a in ("--set", o)] + (["--resume"] if warmup_steps or resume else [])
    return [sys.executable, str(REPO / "npedit" / "train.py"), "--preset", "shapes", "--output_dir", str(out),
            "--set", f"train.seed={seed}", "--set", "train.tensorboard=false", *sets, *extra]


def fork(source: Path, checkpoint: Path, out: Path) -> None:
    """Start a trainer run in `out` from `checkpoint` of the run `source`: the checkpoint, the source's
    metrics log and its "before" oracle report (the untrained student); the run then goes on --resume."""
    # copied under a temporary name, then renamed: an interrupted fork leaves no complete-looking
    # checkpoint behind; the report is written last, so its presence means the fork is whole
    partial = out / "checkpoints" / f".tmp_{checkpoint.name}"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(checkpoint, partial)
    partial.rename(out / "checkpoints" / checkpoint.name)
    shutil.copy2(source / "metrics.jsonl", out / "metrics.jsonl")
    before = json.loads((source / "oracle_report.json").read_text())["before"]
    (out / "oracle_report.json").write_text(json.dumps({"before": before}, indent=2))


def fork_from_warmup(warmup: Path, out: Path, warmup_steps: int) -> None:
    """Start a trainer arm in `out` from the finished warm-up run `warmup`, whose last checkpoint must
    be the end of the warm-up stage."""
    from npedit.engine.checkpoint import latest_checkpoint

    last = latest_checkpoint(warmup)
    if last is None:
        raise RuntimeError(f"the warm-up run {warmup} has no checkpoint to start the NP-Edit stage from")
    if last.name != f"step_{warmup_steps}":
        raise RuntimeError(f"the warm-up run {warmup} ends at {last.name}, but this experiment's warm-up stage "
                           f"has {warmup_steps} steps; use a new --out")
    fork(warmup, last, out)


def fork_to_extend(source: Path, out: Path, max_steps: int) -> None:
    """Start a trainer arm in `out` from the final checkpoint of the finished run `source`, to go on
    to `max_steps`."""
    from npedit.engine.checkpoint import checkpoint_step, latest_checkpoint

    if not finished(source):
        raise RuntimeError(f"--extend_from: {source} is not a finished run (no \"after\" oracle report); "
                           f"finish it first")
    last = latest_checkpoint(source)
    if last is None:
        raise RuntimeError(f"--extend_from: {source} kept no checkpoint to go on from")
    step = checkpoint_step(last)
    if step >= max_steps:
        raise RuntimeError(f"--extend_from: {source} already trained {step} steps; set train.max_steps above it")
    fork(source, last, out)


def link_warmup(source: Path, root: Path, seed: int) -> None:
    """ROOT/warmup_s<seed> -> SOURCE's (relative link), for the report's warm-up-only row."""
    target, link = source / f"{WARMUP}_s{seed}", root / f"{WARMUP}_s{seed}"
    if target.is_dir() and not link.exists() and not link.is_symlink():
        link.symlink_to(os.path.relpath(target.resolve(), root.resolve()), target_is_directory=True)


def _weights_record(folder: Path) -> dict:
    weights = sorted(folder.glob("*.safetensors"))[0]
    try:
        shown = str(folder.relative_to(REPO))
    except ValueError:
        shown = str(folder)
    return {"path": shown, "weights": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}


def teacher_record(overrides: list[str]) -> dict:
    """The teacher every method starts from (folder and weights' sha256), and the real score's when
    `student.teacher` sets another."""
    cfg = preset_config(overrides)
    record = _weights_record(Path(cfg.student.pretrained))
    if cfg.student.teacher:
        record["real_score"] = _weights_record(Path(cfg.student.teacher))
    return record


def same_teacher(root: Path, record: dict) -> bool:
    """Whether ROOT's runs (if it has any recorded) started from the teacher of `record`."""
    path = root / "teacher.json"
    if not path.is_file():
        return True
    digests = lambda r: (r["sha256"], r.get("real_score", {}).get("sha256"))   # noqa: E731
    return digests(json.loads(path.read_text())) == digests(record)


def record_teacher(root: Path, overrides: list[str]) -> None:
    """ROOT/teacher.json, for the report; refuses a ROOT of runs from another teacher."""
    record = teacher_record(overrides)
    if not same_teacher(root, record):
        raise SystemExit(f"{root} holds runs from another teacher ({root / 'teacher.json'}); use a new --out")
    (root / "teacher.json").write_text(json.dumps(record) + "\n")


def finished(out: Path) -> bool:
    path = out / "oracle_report.json"
    return path.is_file() and "after" in json.loads(path.read_text())


def resumable(method: str, out: Path) -> bool:
    """An interrupted trainer run (warm-up or arm) with a complete checkpoint of its own and its
    "before" report (a forked arm's is written once the fork is whole): it can go on from there.
    supervised.py keeps no checkpoints, so an interrupted supervised run cannot."""
    from npedit.engine.checkpoint import latest_checkpoint

    if is_supervised(method):
        return False
    return latest_checkpoint(out) is not None and (out / "oracle_report.json").is_file()


def _wall_seconds(run: Path) -> float:
    wall = run / "wall_seconds.txt"
    return float(wall.read_text()) if wall.is_file() else 0.0


def run_one(method: str, seed: int, root: Path, overrides: list[str], threads: int,
            warmup: Future | None = None, warmup_steps: int = 0,
            extend_from: Path | None = None) -> tuple[str, int, float]:
    """One run to ROOT/<method>_s<seed>. A trainer arm given the `warmup` future of its seed waits for
    it and starts from its checkpoint; one given `extend_from` starts from the final checkpoint of
    EXTEND_FROM/<method>_s<seed>; its wall time then counts the warm-up's, or the earlier run's, too.
    An interrupted run continues from its newest checkpoint where it has one (its wall time then
    counts only this attempt), else starts again from scratch."""
    out = root / f"{method}_s{seed}"
    if finished(out):
        return method, seed, 0.0
    resume = out.exists() and resumable(method, out)
    if out.exists() and not resume:
        shutil.rmtree(out)
    shared = warmup is not None
    extended = extend_from is not None and not is_supervised(method)
    earlier_seconds = 0.0
    if shared:
        warmup.result()   # re-raises the warm-up's failure
        earlier_seconds = _wall_seconds(root / f"{WARMUP}_s{seed}")
    if extended:
        earlier_seconds = _wall_seconds(extend_from / out.name)
    if not resume:
        out.mkdir(parents=True)
        try:
            if shared:
                fork_from_warmup(root / f"{WARMUP}_s{seed}", out, warmup_steps)
            if extended:
                fork_to_extend(extend_from / out.name, out, preset_config(overrides).train.max_steps)
        except RuntimeError:
            shutil.rmtree(out)   # nothing was trained here; leave no half-made run behind
            raise
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)   # the trainer picks a free rendezvous port per process
    start = time.time()
    with (out / "log.txt").open("a" if resume else "w") as log:
        if resume:
            log.write("\n[run.py] continuing the interrupted run from its newest checkpoint\n")
            log.flush()
        cmd = command(method, seed, out, overrides, threads, warmup_steps if (shared or method == WARMUP) else 0,
                      resume=resume or extended)
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    took = time.time() - start + earlier_seconds
    (out / "wall_seconds.txt").write_text(f"{took:.1f}\n")
    if rc != 0:
        raise RuntimeError(f"{method} seed {seed} failed (exit {rc}); see {out / 'log.txt'}")
    return method, seed, took


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets 2 // jobs threads, at least 1)")
    p.add_argument("--out", default=str(REPO / "runs" / "exp_shapes"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every method (same budget for all)")
    p.add_argument("--extend_from", metavar="PREV",
                   help="go on from the finished trainer arms of PREV (an earlier --out) to this budget, "
                        "instead of training them from the teacher")
    p.add_argument("--no_report", action="store_true", help="only run; skip report.py")
    args = p.parse_args(argv)
    root = Path(args.out)
    extend_from = Path(args.extend_from) if args.extend_from else None
    if extend_from is not None:
        if not extend_from.is_dir():
            p.error(f"--extend_from: no folder {extend_from}")
        if extend_from.resolve() == root.resolve():
            p.error("--extend_from must name another folder than --out")
        if not same_teacher(extend_from, teacher_record(args.overrides)):
            p.error(f"--extend_from: {extend_from} holds runs from another teacher than this one")
    root.mkdir(parents=True, exist_ok=True)
    record_teacher(root, args.overrides)
    threads = max(1, 2 // args.jobs)
    warmup_steps = preset_config(args.overrides).train.warmup_stage_steps
    arms = [m for m in args.methods if not is_supervised(m)]
    start = time.time()

    def report(job: Future) -> None:
        if job.exception() is None:
            method, seed, took = job.result()
            print(f"[{time.time() - start:6.0f} s] {method} seed {seed}: {took:.0f} s", flush=True)
        else:
            print(f"[{time.time() - start:6.0f} s] FAILED: {job.exception()}", flush=True)

    # queue order: the warm-ups first (the arms wait on them, so they must hold the first slots), then
    # the supervised runs, then the arms
    with ThreadPoolExecutor(args.jobs) as pool:
        warmups = {}
        if extend_from is not None:
            for s in args.seeds:
                link_warmup(extend_from, root, s)
        elif arms and warmup_steps > 0:
            warmups = {s: pool.submit(run_one, WARMUP, s, root, args.overrides, threads, None, warmup_steps)
                       for s in args.seeds}
        jobs = list(warmups.values())
        jobs += [pool.submit(run_one, m, s, root, args.overrides, threads)
                 for m in args.methods if is_supervised(m) for s in args.seeds]
        jobs += [pool.submit(run_one, m, s, root, args.overrides, threads, warmups.get(s), warmup_steps,
                             extend_from)
                 for m in arms for s in args.seeds]
        for job in jobs:
            job.add_done_callback(report)
    failed = [job.exception() for job in jobs if job.exception() is not None]
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed; the first: {failed[0]}")
    print(f"all runs done in {time.time() - start:.0f} s")
    if not args.no_report:
        from report import main as report_main   # noqa: E402 (sibling script)
        return report_main(["--runs", str(root), "--seeds", *map(str, args.seeds)])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
