"""Run under torchrun / deepspeed: train a few steps, then dump every rank's full parameters.

usage: train_and_dump.py OUTPUT_DIR [--set key=value ...]
Writes OUTPUT_DIR/params_rank<r>.pt with the gathered student and fake-score state dicts.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402

from npedit.config import apply_overrides  # noqa: E402
from npedit.presets import get_preset  # noqa: E402
from npedit.trainer import Trainer  # noqa: E402


def gathered_state(module: torch.nn.Module) -> dict:
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {name: p.detach().clone().float() for name, p in module.named_parameters()}


def main() -> None:
    out = Path(sys.argv[1])
    overrides = [a for a in sys.argv[2:] if a != "--set"]
    cfg = apply_overrides(get_preset("shapes_tiny"), overrides)
    trainer = Trainer(cfg, out, ds_user=None)
    last = trainer.run()
    state = {"student": gathered_state(trainer.engines.student.module),
             "fake": gathered_state(trainer.engines.fake.module), "last": last,
             "world_size": trainer.world}
    torch.save(state, out / f"params_rank{trainer.rank}.pt")


if __name__ == "__main__":
    main()
