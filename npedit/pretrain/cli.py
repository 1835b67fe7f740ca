"""`npedit pretrain teacher|judge --world shapes --out DIR`: reproduce the shapes world's toy models.

    npedit pretrain teacher --world shapes --out npedit/assets/shapes   # teacher/ + text_encoder/
    npedit pretrain judge --world shapes --out npedit/assets/shapes     # judge/

Both write a JSON report (teacher: caption faithfulness of its samples; judge: held-out accuracy per
question type) and a PNG next to the weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields


def _add_config_flags(p: argparse.ArgumentParser, config_cls) -> None:
    for f in fields(config_cls):
        p.add_argument(f"--{f.name}", type=type(f.default), default=None, help=f"(default {f.default})")


def _config_from(args: argparse.Namespace, config_cls):
    given = {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name) is not None}
    return config_cls(**given)


def main(argv=None) -> int:
    from npedit.pretrain.judge import JudgeConfig
    from npedit.pretrain.teacher import TeacherConfig

    p = argparse.ArgumentParser(prog="npedit pretrain", description="Pretrain a toy model of the shapes world.")
    sub = p.add_subparsers(dest="what", required=True)
    for name, config_cls, text in (("teacher", TeacherConfig, "text-to-image flow teacher + its text encoder"),
                                   ("judge", JudgeConfig, "VLM judge on generic yes/no visual questions")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--world", default="shapes", choices=["shapes"], help="only the shapes world has toy models")
        sp.add_argument("--out", required=True, help="folder for the model folder(s), report JSON and PNG")
        sp.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
        _add_config_flags(sp, config_cls)
    args = p.parse_args(argv)
    try:
        if args.what == "teacher":
            from npedit.pretrain.teacher import train_teacher
            report = train_teacher(_config_from(args, TeacherConfig), args.out, args.threads)
            print(json.dumps(report["faithfulness"], indent=2))
        else:
            from npedit.pretrain.judge import train_judge
            report = train_judge(_config_from(args, JudgeConfig), args.out, args.threads)
            print(json.dumps(report["accuracy"], indent=2))
    except (ValueError, FileNotFoundError) as exc:
        print(f"npedit pretrain: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
