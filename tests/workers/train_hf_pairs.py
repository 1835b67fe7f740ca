"""Run under python / torchrun: train a few steps with each (student, judge) pair of published-model folders.

usage: train_hf_pairs.py OUTPUT_DIR FIXTURES_DIR PAIRS [KEY=VALUE ...] [--resume]
  PAIRS: comma-separated student:judge names of folders in FIXTURES_DIR, e.g. sd3:qwen2_5_vl,flux:internvl
         ("builtin" = a fresh built-in model on that side)
Writes OUTPUT_DIR/<student>_<judge>/result_rank<r>.json with the last metrics row, how each network was
partitioned right after loading (before any DeepSpeed engine existed) and a digest of the trained student.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed
import torch

import npedit.trainer as trainer_module
from npedit.config import apply_overrides
from npedit.engine.distributed import shutdown_distributed
from npedit.presets import get_preset

LOADED: dict = {}


def shard_report(module: torch.nn.Module) -> dict:
    """How much of a module this rank holds: ds params and the fraction of elements held locally."""
    params = list(module.parameters())
    ds = [p for p in params if hasattr(p, "ds_id")]
    held = sum(p.ds_tensor.numel() for p in ds)
    total = sum(p.ds_numel for p in ds)
    return {"params": len(params), "ds_params": len(ds), "held_fraction": held / max(total, 1),
            "local_numel": sum(p.numel() for p in params)}


def recording_build(original):
    def build(self, base_ds=None):
        models = original(self, base_ds)
        LOADED.clear()
        LOADED.update({"student": shard_report(models.student), "real": shard_report(models.real),
                       "fake": shard_report(models.fake)})
        LOADED.update({name: shard_report(m) for name, m in models.frozen.items()})
        return models
    return build


def student_digest(module: torch.nn.Module) -> list[float]:
    params = list(module.parameters())
    ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if any(hasattr(p, "ds_id") for p in params) \
        else torch.no_grad()
    with ctx:
        return [float(p.detach().float().sum()) for p in params]


def main() -> None:
    out, fixtures, pairs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
    extra = [a for a in sys.argv[4:] if a != "--resume"]
    resume = "--resume" in sys.argv[4:]
    trainer_module.ModelPlan.build = recording_build(trainer_module.ModelPlan.build)
    ds_user = json.loads((Path(__file__).resolve().parents[2] / "configs" / "zero3_cpu.json").read_text())
    ds_user["bf16"] = {"enabled": "auto"}  # from train.precision
    for pair in pairs:
        student, judge = pair.split(":")
        image_size = "56" if judge.startswith("qwen") else "0"
        sources = {name: "" if name == "builtin" else str(fixtures / name) for name in (student, judge)}
        text = [] if student == "builtin" else ["text.max_length=16"]  # T5 sequence of the tiny pipelines
        cfg = apply_overrides(get_preset("shapes_tiny"), [
            f"student.pretrained={sources[student]}", f"vlm.pretrained={sources[judge]}",
            f"vlm.image_size={image_size}", "data.image_size=32", *text, "train.max_steps=2",
            "train.checkpoint_every=2", "train.sample_every=2", "method.nothing_prob=0.5", *extra])
        run_dir = out / f"{student}_{judge}"
        trainer = trainer_module.Trainer(cfg, run_dir, ds_user=ds_user, ds_source="configs/zero3_cpu.json",
                                         resume=resume)
        last = trainer.run()
        result = {"last": last, "loaded": dict(LOADED), "world_size": trainer.world,
                  "student": student_digest(trainer.engines.student.module)}
        (run_dir / f"result_rank{trainer.rank}.json").write_text(json.dumps(result))
        del trainer
    shutdown_distributed()


if __name__ == "__main__":
    main()
