"""Training entry point.

    deepspeed npedit/train.py --ds_config configs/zero3.json --preset shapes --output_dir runs/x [--resume]
    python npedit/train.py --preset shapes --output_dir runs/x --set train.max_steps=100
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not sibling files
    sys.path[0] = str(Path(__file__).resolve().parents[1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="npedit train", description="Train an NP-Edit instruction editor.")
    p.add_argument("--preset", default="shapes", help="named preset (npedit/presets.py)")
    p.add_argument("--output_dir", required=True, help="metrics, samples, checkpoints go here")
    p.add_argument("--ds_config", default=None, help="DeepSpeed JSON (checked against the config); "
                                                     "generated from the config when omitted")
    p.add_argument("--max_steps", type=int, default=None, help="shorthand for --set train.max_steps=N")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set method.vlm_weight=0.05 (repeatable)")
    p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # DeepSpeed 0.19 calls collectives that torch 2.13 deprecates, once per step: not the user's concern
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)")
    from npedit.config import ConfigError, apply_overrides
    from npedit.presets import get_preset

    try:
        overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps else [])
        cfg = apply_overrides(get_preset(args.preset), overrides)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        from npedit.engine.distributed import shutdown_distributed
        from npedit.engine.ds_config import load_ds_json
        from npedit.trainer import Trainer

        ds_user = load_ds_json(args.ds_config) if args.ds_config else None
        trainer = Trainer(cfg, args.output_dir, ds_user, args.ds_config or "generated", resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"npedit: error: {exc}", file=sys.stderr)
        return 2
    last = trainer.run()
    if trainer.rank == 0:
        print(json.dumps({k: v for k, v in last.items() if k in ("step", "loss_vlm", "loss_dmd", "loss_fake")}))
    trainer.close()
    del trainer
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    from npedit.engine.process_exit import exit_process

    exit_process(main())
