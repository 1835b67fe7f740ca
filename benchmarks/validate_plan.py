"""Check `npedit plan`'s predictions against measured steps on this machine (CPU or CUDA).

    python benchmarks/validate_plan.py --device cuda --out plan_validation.json [--quick]

For each configuration and stack: the planner's prediction of a single-process step
(`predict_measurable`) and the measurement (`measure_step`: the allocator's peak and the live
tensor peak). Built-in models always; tiny published models (tests/fixtures_hf.py) when diffusers
and deepspeed are installed. Prints a table and writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch

from npedit.config import apply_overrides
from npedit.plan.measure import measure_step
from npedit.plan.predict import predict_measurable
from npedit.plan.stacks import NPEDIT, PLAIN
from npedit.presets import get_preset
from npedit.trainer import build_dataset

TOL = 0.15


def _cases(device: str, quick: bool, tmp: Path):
    selective = ["student.checkpointing=selective", "method.fake_updates=1"]
    yield "shapes_tiny", apply_overrides(get_preset("shapes_tiny"), selective), None
    yield "shapes", apply_overrides(get_preset("shapes"), selective), None
    if device == "cuda":
        from bench_step import step_config, vocabulary
        yield "built-in 512px (bench_step GPU world, bf16)", step_config(512, device), vocabulary()
    if quick or not all(importlib.util.find_spec(m) for m in ("diffusers", "deepspeed")):
        return
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures_hf import save_student, save_vlm
    for student, judge in (("flux", "llava_onevision"), ("sd3", "internvl"), ("sd3", "qwen2_5_vl")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sets = selective + ["data.batch_size=1", "data.image_size=32", "text.max_length=8",
                                f"student.pretrained={save_student(student, tmp / student)}",
                                f"vlm.pretrained={save_vlm(judge, tmp / judge)}"]
        yield f"tiny {student} + {judge}", apply_overrides(get_preset("shapes_tiny"), sets), None


def _write(path: Path, device: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"device": device, "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                               "rows": rows}, indent=2) + "\n")
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", default=None, help="JSON file for the rows")
    p.add_argument("--quick", action="store_true", help="built-in models only")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg, words in _cases(args.device, args.quick, Path(tmp)):
            dataset = build_dataset(cfg)
            for stack in (PLAIN, NPEDIT):
                t0 = time.perf_counter()
                predicted = predict_measurable(cfg, stack, args.device, 2, dataset, words=words)
                measured = measure_step(cfg, stack, args.device, dataset, 2, words=words)
                err = (predicted.allocated - measured.peak_bytes) / measured.peak_bytes
                err_live = (predicted.allocated - measured.live_peak_bytes) / measured.live_peak_bytes
                rows.append({"case": name, "stack": stack.name, "device": args.device,
                             "predicted": predicted.allocated, "allocator": measured.peak_bytes,
                             "live": measured.live_peak_bytes, "baseline": measured.baseline_bytes, "err": err,
                             "err_live": err_live, "within": abs(err) <= TOL, "seconds": time.perf_counter() - t0})
                print(f"{name:44s} {stack.name:7s} predicted {predicted.allocated / 2**20:10.1f} MiB  allocator "
                      f"{measured.peak_bytes / 2**20:10.1f} MiB ({err:+.1%})  live {measured.live_peak_bytes / 2**20:10.1f}"
                      f" MiB ({err_live:+.1%})", flush=True)
                if args.out:   # after every row: a run cut off by a time limit keeps what it measured
                    _write(Path(args.out), args.device, rows)
    within = sum(r["within"] for r in rows)
    print(f"{within}/{len(rows)} predictions within {TOL:.0%} of the allocator's peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
