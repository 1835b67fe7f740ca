"""A teacher's faithfulness on full and on partial captions (`npedit.pretrain.teacher.evaluate_teacher`).

Full captions: how often the parsed sample is exactly the caption's scene (20 Euler steps and the
student's 4). Partial captions (each object and the background named with probability
--caption_keep): how often everything named is drawn, and how many unnamed objects the sample holds
beside the named ones. CFG 3.5 (the trainer's) unless --cfg_scale says otherwise, 200 held-out
scenes. About a minute on one core:

    python experiments/shapes/partial_captions/evaluate_teacher.py --teacher npedit/assets/shapes
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from npedit.pretrain.teacher import TeacherConfig, evaluate_teacher, load_teacher  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="a folder holding teacher/ and text_encoder/")
    p.add_argument("--caption_keep", type=float, default=0.5)
    p.add_argument("--cfg_scale", type=float, default=TeacherConfig.cfg_scale)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dit, text, codec, image_size = load_teacher(args.teacher)
    cfg = TeacherConfig(caption_keep=args.caption_keep, cfg_scale=args.cfg_scale, image_size=image_size)
    report = evaluate_teacher(dit, text, codec, cfg)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
