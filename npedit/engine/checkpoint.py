"""Complete, resumable checkpoints: DIR/checkpoints/step_<N>/.

Layout of one checkpoint:
  student/ds/, fake/ds/        DeepSpeed engine state (weights, optimizer, scheduler), every rank's shard
  rng_rank<r>.pt               torch / numpy / python RNG states of rank r
  export/                      what inference needs, consolidated: student/, text_encoder/ (+ tokenizer.json),
                               codec/, config.json (built-in student); student/ (the diffusers transformer,
                               save_pretrained), pipeline.json (where its text encoders and VAE come from),
                               config.json (diffusers student)
  trainer_state.json           step (the data position is the step), world size; written last = complete
A checkpoint is written to `.tmp_step_<N>` and renamed when every rank has finished, so a crash
never leaves a half-written `step_<N>`; the newest `keep` complete checkpoints are kept.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from npedit.engine.distributed import barrier

STATE_FILE = "trainer_state.json"


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder step_<N> was taken after: N."""
    return int(path.name.removeprefix("step_"))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with trainer_state.json), oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def _gathered_save(module: torch.nn.Module, directory: Path, rank: int) -> None:
    """save_pretrained of a possibly ZeRO-3-partitioned module, written by rank 0."""
    import deepspeed

    params = list(module.parameters())
    partitioned = any(hasattr(p, "ds_id") for p in params)
    ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if partitioned else _nullcontext()
    with ctx:
        if rank == 0:
            module.save_pretrained(directory)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def save_checkpoint(output_dir: str | Path, step: int, engines, models, config_dict: dict, rank: int,
                    world_size: int, keep: int) -> Path:
    """Collective: every rank must call it at the same step."""
    root = checkpoints_root(output_dir)
    tmp, final = root / f".tmp_step_{step}", root / f"step_{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    engines.student.save_checkpoint(str(tmp / "student"), tag="ds", save_latest=False)
    engines.fake.save_checkpoint(str(tmp / "fake"), tag="ds", save_latest=False)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / f"rng_rank{rank}.pt")
    export = tmp / "export"
    models.plan.export(export, engines.student.module, engines.modules, rank, _gathered_save)
    if rank == 0:
        (export / "config.json").write_text(json.dumps(config_dict, indent=2))
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "world_size": world_size}, indent=2))
    barrier()
    if rank == 0:
        if final.exists():  # re-saving a step after a resume: replace it only once the new one is complete
            old = root / f".old_step_{step}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        for stale in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def follow_schedule(engine) -> None:
    """Set the optimizer's LR from this run's schedule at the restored step. The checkpoint holds the LR
    its own run had set for the next step; a resume with another train.max_steps (or a warm-up run
    continued into the NP-Edit stage) must follow the schedule of the config it resumes with."""
    sched = engine.lr_scheduler
    if sched is None or not hasattr(sched, "lr_lambdas"):
        return
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(engine.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs


def load_checkpoint(path: Path, engines, rank: int, world_size: int) -> int:
    """Restore engines and this rank's RNG; -> the step the checkpoint was taken after."""
    state = json.loads((path / STATE_FILE).read_text())
    for name, engine in (("student", engines.student), ("fake", engines.fake)):
        loaded, _ = engine.load_checkpoint(str(path / name), tag="ds", load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"could not load the {name} engine state from {path / name}")
        follow_schedule(engine)
    rng_file = path / f"rng_rank{rank}.pt"
    if state.get("world_size") == world_size and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])
