"""Shared helpers of the end-to-end tests: run the real entry points in subprocesses."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "npedit" / "train.py")
ATTENTION_SWEEP = REPO / "kernels" / "attention" / "validate_and_time.py"


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    # PYTHONFAULTHANDLER: a child that aborts prints every thread's Python stack into the failure
    env.update({"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def run(cmd: list[str], timeout: int = 600, check: bool = True, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-8000:]}")
    return proc


def train(output_dir, *args: str, preset: str = "shapes_tiny", **kw) -> subprocess.CompletedProcess:
    return run([sys.executable, TRAIN, "--preset", preset, "--output_dir", str(output_dir), *args], **kw)


def read_metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines() if line]


def load_attention_sweep():
    """kernels/attention/validate_and_time.py (the GPU session's attention tile sweep) as a fresh module."""
    return _load_script(ATTENTION_SWEEP, "attention_validate_and_time")


def load_ptx_order():
    """kernels/ptx_order.py (what compile_check.py reads of a kernel's barrier ordering) as a module."""
    return _load_script(REPO / "kernels" / "ptx_order.py", "ptx_order")


def _load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
