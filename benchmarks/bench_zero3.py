"""The full NP-Edit step sharded by the trainer's DeepSpeed ZeRO-3 engines over N ranks, against the
plain stack in one process (a DDP replica holds the same per rank), in the same run.

Each rank runs `zero3_worker.py` (torchrun); recorded per N: the largest per-rank peak and resident
bytes and the slowest rank's step time. The built-in models of `bench_step.step_config` at 512 px,
k=2 unrolled passes, the judge's vocabulary padded to 152,064 words; npedit's generated DeepSpeed
config and `configs/zero3_min_memory.json` (no prefetch, weights released right after use). On the
CPU the ranks use gloo and the small built-in world; with `--bench-device cuda` NCCL, one GPU per rank
(as many ranks as there are GPUs) and the larger bf16 world of `bench_step`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_step import MIB, step_config, vocabulary

from npedit.plan.measure import measure_step
from npedit.plan.stacks import PLAIN

HERE = Path(__file__).resolve().parent
RESOLUTION, PASSES = 512, 2


DS_CONFIGS = {"generated": None, "min-memory": HERE.parent / "configs" / "zero3_min_memory.json"}


def run_ranks(world: int, out: Path, port: int, ds_config: Path | None, device: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port", str(port),
           str(HERE / "zero3_worker.py"), "--resolution", str(RESOLUTION), "--passes", str(PASSES), "--out", str(out)]
    cmd += ["--ds_config", str(ds_config)] if ds_config else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-6000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("knobs", list(DS_CONFIGS))
@pytest.mark.parametrize("world", [0, 1, 2, 4], ids=["plain", "zero3x1", "zero3x2", "zero3x4"])
def test_sharded_step(recorder, device, tmp_path, world, knobs):
    if device == "cuda" and world > torch.cuda.device_count():
        pytest.skip(f"{world} ranks need {world} GPUs")
    case = f"{RESOLUTION}px built-in, k={PASSES}"
    if world == 0:
        if knobs != "generated":
            pytest.skip("the plain stack has no ZeRO knobs")
        from npedit.trainer import build_dataset

        cfg = step_config(RESOLUTION, device)
        torch.manual_seed(0)
        m = measure_step(cfg, PLAIN, device, build_dataset(cfg), PASSES, words=vocabulary())
        recorder.add("sharded_step", case=case, stack="plain", ranks=1, peak_mib=m.peak_bytes / MIB,
                     resident_mib=m.baseline_bytes / MIB, note="plain: one process (what each DDP replica holds)")
        return
    ranks = run_ranks(world, tmp_path, 29800 + world, DS_CONFIGS[knobs], device)
    assert {r["world_size"] for r in ranks} == {world}
    recorder.add("sharded_step", case=case, stack=f"npedit ZeRO-3 ({knobs} DeepSpeed config)", ranks=world,
                 peak_mib=max(r["peak_bytes"] for r in ranks) / MIB,
                 resident_mib=max(r["resident_bytes"] for r in ranks) / MIB,
                 step_s=max(r["step_seconds"] for r in ranks),
                 note="npedit: the trainer's DeepSpeed engines, one OMP thread per rank; peak and resident are "
                      "the largest over ranks; resident = tensors held between steps (weights or shards, "
                      "optimizer states, engine buffers); peak = resident + the allocator's highest bytes in the step")
