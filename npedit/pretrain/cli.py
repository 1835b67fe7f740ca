"""`npedit pretrain teacher|judge|text --world shapes --out DIR`: reproduce the shapes world's toy models.

    npedit pretrain judge --world shapes --out npedit/assets/shapes     # judge/
    # the shipped teacher: its text encoder alone (caption parsing), then the teacher on it, frozen
    npedit pretrain text --world shapes --out runs/text                 # text_encoder/
    npedit pretrain teacher --world shapes --out npedit/assets/shapes \
        --text_encoder runs/text/text_encoder --train_text false --steps 6000   # teacher/ + text_encoder/
    # train a judge on from the shipped one, with more two-image questions in the mix
    npedit pretrain judge --world shapes --out runs/judge_ft --init_from npedit/assets/shapes \
        --kind_weights same_except=0.5,same=0.12,caption=0.3 --steps 6000 --batch_size 64 --lr 3e-4
    # ... with half its images drawn student-like (faded, off-colour, noisy, faint ghosts)
    npedit pretrain judge ... --degrade_prob 0.5

Each writes a JSON report (teacher: caption faithfulness of its samples, and a PNG; judge: held-out
accuracy per question type, on clean and on student-like renders, and a PNG; text: held-out
caption-parsing accuracy).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def _add_config_flags(p: argparse.ArgumentParser, config_cls) -> None:
    for f in fields(config_cls):
        kind = _bool if isinstance(f.default, bool) else type(f.default)
        p.add_argument(f"--{f.name}", type=kind, default=None, help=f"(default {f.default})")


def _config_from(args: argparse.Namespace, config_cls):
    given = {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name) is not None}
    return config_cls(**given)


def main(argv=None) -> int:
    from npedit.pretrain.judge import JudgeConfig
    from npedit.pretrain.teacher import TeacherConfig
    from npedit.pretrain.text import TextPretrainConfig

    p = argparse.ArgumentParser(prog="npedit pretrain", description="Pretrain a toy model of the shapes world.")
    sub = p.add_subparsers(dest="what", required=True)
    for name, config_cls, text in (("teacher", TeacherConfig, "text-to-image flow teacher + its text encoder"),
                                   ("judge", JudgeConfig, "VLM judge on generic yes/no visual questions"),
                                   ("text", TextPretrainConfig, "text encoder alone, trained to parse captions")):
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
        elif args.what == "text":
            from npedit.pretrain.text import train_text_encoder
            report = train_text_encoder(_config_from(args, TextPretrainConfig), args.out, args.threads)
            print(json.dumps(report["parse"], indent=2))
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
