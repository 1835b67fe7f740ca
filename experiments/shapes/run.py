"""Run the shapes-world experiment: NP-Edit vs its ablations vs the supervised upper bound, several seeds.

Every method trains from the same shipped teacher with the same budget (the `shapes` preset's
steps and batch size, overridable with --set for all of them); the untrained student is the "before"
oracle report of the NP-Edit runs. Runs go to OUT/<method>_s<seed>/ (a finished run is skipped, so
the command resumes), then report.py writes RESULTS.md, results.json and the figures.

    python experiments/shapes/run.py --seeds 0 1 2 --jobs 2 --out runs/exp_shapes
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# method -> extra --set overrides of the NP-Edit trainer (None: the supervised loop)
METHODS: dict[str, list[str] | None] = {
    "npedit": [],
    "dmd_only": ["method.vlm_weight=0"],
    "vlm_only": ["method.dmd_weight=0"],
    "supervised": None,
}


def command(method: str, seed: int, out: Path, overrides: list[str], threads: int) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    if METHODS[method] is None:
        return [sys.executable, str(HERE / "supervised.py"), "--seed", str(seed), "--output_dir", str(out),
                "--threads", str(threads), *sets]
    extra = [a for o in METHODS[method] for a in ("--set", o)]
    return [sys.executable, str(REPO / "npedit" / "train.py"), "--preset", "shapes", "--output_dir", str(out),
            "--set", f"train.seed={seed}", "--set", "train.tensorboard=false", *extra, *sets]


def record_teacher(root: Path, overrides: list[str]) -> None:
    """ROOT/teacher.json: the teacher every method starts from (folder and weights' sha256), for the report."""
    sys.path.insert(0, str(REPO))
    from npedit.config import apply_overrides
    from npedit.presets import get_preset

    folder = Path(apply_overrides(get_preset("shapes"), overrides).student.pretrained)
    weights = sorted(folder.glob("*.safetensors"))[0]
    try:
        shown = str(folder.relative_to(REPO))
    except ValueError:
        shown = str(folder)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    path = root / "teacher.json"
    if path.is_file() and json.loads(path.read_text())["sha256"] != digest:
        raise SystemExit(f"{root} holds runs from another teacher ({path}); use a new --out")
    path.write_text(json.dumps({"path": shown, "weights": weights.name, "sha256": digest}) + "\n")


def finished(out: Path) -> bool:
    path = out / "oracle_report.json"
    return path.is_file() and "after" in json.loads(path.read_text())


def run_one(method: str, seed: int, root: Path, overrides: list[str], threads: int) -> tuple[str, int, float]:
    out = root / f"{method}_s{seed}"
    if finished(out):
        return method, seed, 0.0
    if out.exists():   # an interrupted run: start it again from scratch
        subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)   # the trainer picks a free rendezvous port per process
    start = time.time()
    with (out / "log.txt").open("w") as log:
        rc = subprocess.run(command(method, seed, out, overrides, threads), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    took = time.time() - start
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
    p.add_argument("--no_report", action="store_true", help="only run; skip report.py")
    args = p.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    record_teacher(root, args.overrides)
    threads = max(1, 2 // args.jobs)
    # the slowest runs first, so the parallel slots finish together
    jobs = [(m, s) for m in sorted(args.methods, key=lambda m: METHODS[m] is None) for s in args.seeds]
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for method, seed, took in pool.map(lambda j: run_one(j[0], j[1], root, args.overrides, threads), jobs):
            print(f"[{time.time() - start:6.0f} s] {method} seed {seed}: {took:.0f} s", flush=True)
    print(f"all runs done in {time.time() - start:.0f} s")
    if not args.no_report:
        from report import main as report_main   # noqa: E402 (sibling script)
        return report_main(["--runs", str(root), "--seeds", *map(str, args.seeds)])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
