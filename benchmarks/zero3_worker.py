"""One rank of the sharded step benchmark: the trainer's DeepSpeed engines (ZeRO-3 for the student and
the critic, optimizer-less ZeRO-3 for the real score, text encoder and judge) on CPU/gloo, one
steady-state NP-Edit step measured on this rank.

    torchrun --nproc_per_node N benchmarks/zero3_worker.py --resolution 512 --passes 2 --out DIR

Two steps run (the first creates the optimizer states). `resident`: the unique storages of every
tensor this rank holds before the second step (its weights or ZeRO shards, gathered weights DeepSpeed
kept, flat buffers, optimizer states); `peak`: resident plus the highest bytes the CPU allocator
holds during the second step (`torch.profiler` memory events, as `npedit.plan.measure` counts a
single-process step). On GPUs (NCCL, the larger built-in world of `bench_step`, bf16) both come
from the CUDA allocator: `memory_allocated` before the step and `max_memory_allocated` during it.
Writes DIR/rank<R>.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def live_tensor_bytes() -> int:
    """Bytes of the unique storages of every tensor the garbage collector can reach (weights, ZeRO
    shards and flat buffers, optimizer states): what this rank holds between steps."""
    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu" or obj.is_meta:
                continue
            storage = obj.untyped_storage()
        except (RuntimeError, ReferenceError):
            continue
        if storage.data_ptr() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--passes", type=int, default=2, choices=(1, 2))
    p.add_argument("--out", required=True)
    p.add_argument("--ds_config", default=None, help="DeepSpeed JSON (ZeRO knobs); default: npedit's generated config")
    args = p.parse_args(argv)

    from bench_step import step_config, vocabulary

    from npedit.build import ModelPlan
    from npedit.config import apply_overrides
    from npedit.engine.distributed import init_distributed, shutdown_distributed
    from npedit.engine.ds_config import base_ds_config, load_ds_json
    from npedit.engine.engines import build_engines
    from npedit.method.step import fake_score_loss, npedit_student_loss, student_samples
    from npedit.plan.measure import cpu_peak_bytes
    from npedit.plan.run_step import probe_batch, step_with_passes
    from npedit.trainer import build_dataset, networks_for

    on_gpu = torch.cuda.is_available()   # init_distributed picks NCCL and this rank's GPU then
    cfg = apply_overrides(step_config(args.resolution, "cuda" if on_gpu else "cpu"),
                          ["train.zero_stage=3", "train.max_steps=100", "train.warmup_stage_steps=0"])
    words = vocabulary()
    dataset = build_dataset(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    user = load_ds_json(args.ds_config) if args.ds_config else None
    base_ds = base_ds_config(cfg, world, user, args.ds_config or "generated")
    rank, world, device = init_distributed()
    torch.manual_seed(0)

    plan = ModelPlan(cfg, words, dataset)
    models = plan.build(base_ds)
    engines = build_engines(models, cfg, base_ds, device)
    nets = networks_for(engines, models, cfg)
    batch = probe_batch(cfg, dataset, device)
    step = step_with_passes(cfg, args.passes)

    def npedit_step() -> None:   # Trainer.npedit_step on a fixed batch
        loss, _, _ = npedit_student_loss(nets, batch, step, cfg, rank)
        engines.student.backward(loss)
        engines.student.step()
        del loss
        for j in range(cfg.method.fake_updates):
            stream = step * (1 + cfg.method.fake_updates) + 1 + j
            x0, cap = student_samples(nets, batch, step, cfg, rank, stream_step=stream)
            loss_fake = fake_score_loss(nets, x0, cap, cfg, rank, stream_step=stream)
            del x0, cap
            engines.fake.backward(loss_fake)
            engines.fake.step()
            del loss_fake

    npedit_step()                 # creates the optimizer states
    gc.collect()
    torch.distributed.barrier()
    if on_gpu:                        # the CUDA allocator's own counts
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        npedit_step()
        torch.cuda.synchronize()
        seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated()
    else:
        resident = live_tensor_bytes()
        start = time.perf_counter()
        peak = resident + cpu_peak_bytes(npedit_step)
        seconds = time.perf_counter() - start
    trainable = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                    for m in (engines.student.module, engines.fake.module) for p in m.parameters())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": world, "resolution": args.resolution, "passes": args.passes,
        "resident_bytes": resident, "peak_bytes": peak, "step_seconds": seconds,
        "trainable_params": trainable, "zero_stage": cfg.train.zero_stage, "device": str(device)}) + "\n")
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
