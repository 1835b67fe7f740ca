"""What the shipped toy teacher draws with and without a caption: the realism prior unconditional DMD uses.

Samples the teacher (`npedit/assets/shapes/`) with 20 Euler steps for N held-out captions (with the
DMD's guidance, CFG 3.5, and without) and N times the negative prompt (its CFG "unconditional", 10%
of its training batches; what the real score sees with `method.dmd_condition=unconditional`), and
parses every sample with the oracle. Writes `teacher_samples.png` (one row per prompt kind) and
`teacher_samples.json` next to this file. About 20 s on one core:

    python experiments/shapes/unconditional_dmd/teacher_samples.py
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

from npedit.config import MethodConfig  # noqa: E402
from npedit.data.oracle import parse_scenes  # noqa: E402
from npedit.data.shapes import BACKGROUNDS, caption  # noqa: E402
from npedit.outputs import image_grid  # noqa: E402
from npedit.pretrain.teacher import NEGATIVE_PROMPT, generate_images, held_out_scenes, load_teacher  # noqa: E402

ASSETS = REPO / "npedit" / "assets" / "shapes"
HERE = Path(__file__).resolve().parent


def summary(images: torch.Tensor) -> dict:
    """Share of samples the oracle parses as a world scene (1-3 objects, distinct names), and the mean
    number of objects it finds."""
    parsed = parse_scenes(images)
    return {"world_scene": sum(p.is_world_scene() for p in parsed) / len(parsed),
            "background": {b: sum(p.background == b for p in parsed) / len(parsed) for b in BACKGROUNDS},
            "mean_objects": sum(len(p.objects) for p in parsed) / len(parsed), "n": len(parsed)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=64, help="samples per prompt kind")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dit, text, codec, image_size = load_teacher(ASSETS)
    captions = [caption(s) for s in held_out_scenes(args.num)]
    kinds = {"caption, CFG 3.5": (captions, MethodConfig().cfg_scale), "caption, no CFG": (captions, 1.0),
             "negative prompt": ([NEGATIVE_PROMPT] * args.num, 1.0)}
    images = {k: generate_images(dit, text, codec, prompts, image_size, "euler20", cfg_scale=scale)
              for k, (prompts, scale) in kinds.items()}
    report = {k: summary(v) for k, v in images.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "teacher_samples.json").write_text(json.dumps(report, indent=1) + "\n")
    shown = 8
    image_grid([images[k][:shown] for k in kinds], [""] * shown, list(kinds), cell=64).save(out / "teacher_samples.png")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
