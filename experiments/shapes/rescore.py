"""Re-score an experiment's finished runs on a larger held-out set.

The trainer scores 120 held-out edits (20 per category) at the end of a run. On a 20% success rate
that is a binomial std of about 3.6 points per run, as large as the gaps the experiment asks about
(NP-Edit against the supervised baseline, the ablations against NP-Edit). This scores every run's
final export again on `--num_examples` edits (categories balanced; the same held-out stream, so the
trainer's 120 are its first 120), with the run's own seed as the sampling-noise seed, and writes
RUN/<--name> in the trainer's {"before", "after"} layout ("before", the untrained student, only in
the NP-Edit runs). A run still training is left out; a run already re-scored with the same
--num_examples and --sampler is skipped unless --force, so the command can be rerun as runs finish.
Then:

    python experiments/shapes/rescore.py --runs runs/exp_shapes --num_examples 600
    python experiments/shapes/report.py --runs runs/exp_shapes --report oracle_rescore.json --out DIR
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from report import untrained_editor  # noqa: E402
from run import finished  # noqa: E402

RUN_NAME = re.compile(r"^(?P<method>.+)_s(?P<seed>\d+)$")


def finished_runs(runs: Path) -> list[tuple[Path, int]]:
    """(folder, seed) of every RUNS/<method>_s<seed> whose oracle report (the trainer's or supervised.py's)
    holds the final "after" scores; an arm forked from its warm-up has a report with only "before"
    until it finishes."""
    found = []
    for folder in sorted(runs.iterdir()):
        match = RUN_NAME.match(folder.name)
        if match and folder.is_dir() and finished(folder):
            found.append((folder, int(match["seed"])))
    return found


def already_scored(path: Path, num_examples: int, sampler: str) -> bool:
    if not path.is_file():
        return False
    done = json.loads(path.read_text())
    return done.get("num_examples") == num_examples and done.get("sampler") == sampler and "after" in done


def score(editor, num_examples: int, seed: int, sampler: str) -> dict:
    from npedit.eval.shapes_eval import evaluate_editor

    return evaluate_editor(lambda images, texts: editor.edit(images, texts, seed=seed, sampler=sampler),
                           num_examples=num_examples, image_size=editor.image_size,
                           categories=tuple(editor.config.data.categories))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="the experiment's folder (run.py --out)")
    p.add_argument("--num_examples", type=int, default=600)
    p.add_argument("--name", default="oracle_rescore.json", help="file written into each run folder")
    p.add_argument("--sampler", default="fewstep", help="fewstep (default) or euler<N>")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--force", action="store_true", help="score runs again that already have the same scores")
    args = p.parse_args(argv)

    import torch

    from npedit.inference import Editor
    from npedit.method.unroll import euler_steps

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        euler_steps(args.sampler)
        if args.num_examples < 1:
            raise ValueError(f"--num_examples must be >= 1, got {args.num_examples}")
        if args.name == "oracle_report.json":
            raise ValueError("--name oracle_report.json would overwrite the trainer's own report")
        runs = finished_runs(Path(args.runs))
        if not runs:
            raise FileNotFoundError(f"no finished runs (<method>_s<seed>/oracle_report.json with the final "
                                    f"\"after\" scores) under {args.runs}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"rescore: error: {exc}", file=sys.stderr)
        return 2
    for folder, seed in runs:
        if not args.force and already_scored(folder / args.name, args.num_examples, args.sampler):
            print(f"{folder.name}: already scored in {args.name} (--force scores it again)", flush=True)
            continue
        start = time.time()
        result = {"num_examples": args.num_examples, "noise_seed": seed, "sampler": args.sampler,
                  "after": score(Editor.from_checkpoint(folder), args.num_examples, seed, args.sampler)}
        if folder.name.startswith("npedit_s"):
            result["before"] = score(untrained_editor(folder), args.num_examples, seed, args.sampler)
        (folder / args.name).write_text(json.dumps(result, indent=2) + "\n")
        o = result["after"]["overall"]
        print(f"{folder.name}: success {100 * o['success']:.1f}%  preservation {100 * o['preservation']:.1f}%  "
              f"exact {100 * o['exact']:.1f}%  ({time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
