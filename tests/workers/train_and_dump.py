"""Run under torchrun / deepspeed: train a few steps, then dump every rank's full parameters.

usage: train_and_dump.py OUTPUT_DIR [--set key=value ...]
Writes OUTPUT_DIR/params_rank<r>.pt with the student and fake-score parameters as this rank holds them.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402

from npedit.config import apply_overrides  # noqa: E402
from npedit.engine.distributed import shutdown_distributed  # noqa: E402
from npedit.presets import get_preset  # noqa: E402
from npedit.trainer import Trainer  # noqa: E402


def rank_state(module: torch.nn.Module) -> dict:
    """This rank's full parameters: its own replica (ZeRO 0-2), or gathered from the shards (ZeRO-3)."""
    params = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return {name: p.detach().clone().float() for name, p in module.named_parameters()}
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {name: p.detach().clone().float() for name, p in module.named_parameters()}


def reduce_buckets(engine) -> list[int]:
    """Elements of the ZeRO-3 optimizer's preallocated reduce buckets (none below stage 3)."""
    buckets = getattr(engine.optimizer, "ipg_buckets", {})
    return [b.buffer.numel() for b in buckets.values() if isinstance(getattr(b, "buffer", None), torch.Tensor)]


def main() -> None:
    out = Path(sys.argv[1])
    overrides = [a for a in sys.argv[2:] if a != "--set"]
    cfg = apply_overrides(get_preset("shapes_tiny"), overrides)
    trainer = Trainer(cfg, out, ds_user=None)
    last = trainer.run()
    state = {"student": rank_state(trainer.engines.student.module),
             "fake": rank_state(trainer.engines.fake.module), "last": last,
             "world_size": trainer.world, "reduce_buckets": reduce_buckets(trainer.engines.student)}
    torch.save(state, out / f"params_rank{trainer.rank}.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main()
