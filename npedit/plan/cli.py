"""`npedit plan`: predict per-GPU memory of a run, plain stack vs npedit, and say what fits."""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]

EPILOG = """known published models (student.pretrained / vlm.pretrained, no download needed):
{known}
planner presets: {presets}
examples:
  npedit plan --preset paper --gpus 8 --gpu_mem_gb 40
  npedit plan --preset open --gpus 8 --gpu_mem_gb 140
  npedit plan --preset shapes --set data.batch_size=8 --gpus 1 --gpu_mem_gb 24 --json
"""


def _parser() -> argparse.ArgumentParser:
    from npedit.plan.known import KNOWN
    from npedit.plan.settings import PLAN_PRESETS

    known = "\n".join(f"  {k:20s} {v}" for k, v in KNOWN.items())
    p = argparse.ArgumentParser(prog="npedit plan", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Predict the per-GPU memory of an NP-Edit run for the plain stack and "
                                            "for npedit: the run's models are built on the meta device and one "
                                            "training step is simulated with the trainer's own code.",
                                epilog=EPILOG.format(known=known, presets=", ".join(PLAN_PRESETS)))
    p.add_argument("--preset", required=True, help="a trainer preset (shapes, shapes_tiny, ...) or a planner preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), as for training")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs (ZeRO shards over them)")
    p.add_argument("--gpu_mem_gb", type=float, default=80.0,
                   help="memory per GPU in GiB (torch.cuda.get_device_properties(0).total_memory / 2**30)")
    p.add_argument("--offload", choices=("none", "optimizer", "param"), default="none",
                   help="DeepSpeed offload for npedit: optimizer states, or optimizer states and weights")
    p.add_argument("--passes", type=int, choices=(1, 2), default=None,
                   help="student passes with gradient (default: the most the schedule makes)")
    p.add_argument("--stack", choices=("both", "plain", "npedit"), default="both")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    return p


def _quiet() -> None:
    """Library chatter about meta-device models (dtype casts, missing weights) is not for this report."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for name in ("transformers", "diffusers", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from npedit.config import ConfigError
    from npedit.plan.known import resolve_known
    from npedit.plan.memory_model import Hardware
    from npedit.plan.predict import predict
    from npedit.plan.report import json_report, text_report
    from npedit.plan.settings import plan_config
    from npedit.plan.stacks import STACKS

    _quiet()
    try:
        cfg = resolve_known(plan_config(args.preset, args.overrides))
        hardware = Hardware(args.gpus, args.gpu_mem_gb, args.offload)
        stacks = tuple(STACKS.values()) if args.stack == "both" else (STACKS[args.stack],)
        prediction = predict(cfg, hardware, passes=args.passes, stacks=stacks)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"npedit plan: error: {exc}", file=sys.stderr)
        return 2
    print(json_report(prediction) if args.json else text_report(prediction))
    return 0


if __name__ == "__main__":
    sys.exit(main())
