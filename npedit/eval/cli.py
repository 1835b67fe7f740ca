"""`npedit eval --world shapes --checkpoint DIR`: oracle report of a trained student.

Writes OUT/oracle_report.json (per-category success, preservation, exact match, pixel error) and
OUT/oracle_grid.png (reference | output | truth, each row captioned with its instruction and scores).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from npedit.data.shapes import SHAPES_CATEGORIES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="npedit eval", description="Score a trained editor against the shapes "
                                "world's exact ground truth on held-out edits.")
    p.add_argument("--world", default="shapes", choices=["shapes"], help="only the shapes world has an oracle")
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoints/step_<N> or its export/")
    p.add_argument("--num_examples", type=int, default=240, help="held-out edits (categories balanced)")
    p.add_argument("--categories", default=",".join(SHAPES_CATEGORIES),
                   help="comma-separated edit categories to score (default: all, balanced)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint>/oracle_eval)")
    p.add_argument("--seed", type=int, default=0, help="sampling noise seed of the editor")
    p.add_argument("--sampler", default="fewstep",
                   help="fewstep (default) or euler<N>: N Euler steps of the flow ODE, for a student trained as "
                        "a plain flow model (e.g. the supervised baseline)")
    p.add_argument("--grid_rows", type=int, default=24, help="rows of the PNG grid")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from npedit.data.edits import check_categories
    from npedit.eval.shapes_eval import format_report, held_out_edits, run_editor, score_outputs
    from npedit.inference import Editor
    from npedit.method.unroll import euler_steps
    from npedit.outputs import save_sample_grid

    try:
        if args.num_examples < 1:
            raise ValueError(f"--num_examples must be >= 1, got {args.num_examples}")
        euler_steps(args.sampler)   # a bad name fails before the checkpoint loads
        categories = check_categories(c.strip() for c in args.categories.split(",") if c.strip())
        editor = Editor.from_checkpoint(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"npedit eval: error: {exc}", file=sys.stderr)
        return 2
    data = held_out_edits(args.num_examples, editor.image_size, categories=categories)
    outputs = run_editor(lambda images, texts: editor.edit(images, texts, seed=args.seed, sampler=args.sampler),
                         data)
    report = score_outputs(data, outputs)
    rows = report.pop("examples")
    report = {"checkpoint": str(args.checkpoint), "sampler": args.sampler, "num_examples": args.num_examples,
              "categories": list(categories), "image_size": editor.image_size, **report}

    out = Path(args.out) if args.out else Path(args.checkpoint) / "oracle_eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "oracle_report.json").write_text(json.dumps(report, indent=2) + "\n")
    # spread the grid over categories: the held-out stream cycles through them
    k = min(args.grid_rows, len(data))
    labels = [f"[{r['category']}] {data.instructions[i]}  success={int(r['success'])} "
              f"preserved={int(r['preservation'])}" for i, r in enumerate(rows[:k])]
    save_sample_grid(out / "oracle_grid.png", data.references[:k], outputs[:k], labels,
                     extra={"truth": data.truths[:k]})
    print(format_report(report))
    print(f"wrote {out / 'oracle_report.json'} and {out / 'oracle_grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
