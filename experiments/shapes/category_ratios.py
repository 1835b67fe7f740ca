"""NP-Edit against the supervised baseline with and without removals, from committed results.

report.py states the issue's targets over all six edit categories. Every experiment so far puts the
success gap in one category: the supervised baseline's removals, most of which fade the whole scene
(rescored/README.md). This reads the `results.json` that report.py wrote (category means over seeds)
and prints, per experiment folder, the success and preservation ratios over all categories, over
the five that are not removals (unweighted mean of the category means, as the held-out sets are
balanced), and on removals alone:

    python experiments/shapes/category_ratios.py experiments/shapes/rescored/default \
        experiments/shapes/rescored/long experiments/shapes/rescored/long_5x
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OURS, BASELINE, SET_ASIDE = "npedit", "supervised", "remove"


def category_mean(summary: dict, method: str, metric: str, categories: list[str]) -> float:
    per_category = summary[method]["per_category"]
    return sum(per_category[c][metric][0] for c in categories) / len(categories)


def ratios(results: dict) -> dict[str, dict[str, float]]:
    """-> {"all" | "without remove" | "remove": {"success": ours/baseline, "preservation": ...,
    "ours_success": .., "baseline_success": ..}} from report.py's results.json."""
    summary = results["summary"]
    for method in (OURS, BASELINE):
        if method not in summary:
            raise KeyError(f"results.json has no {method!r} runs (methods: {sorted(summary)})")
    categories = list(summary[OURS]["per_category"])
    if SET_ASIDE not in categories:
        raise KeyError(f"results.json has no {SET_ASIDE!r} category (categories: {categories})")
    groups = {"all": categories, f"without {SET_ASIDE}": [c for c in categories if c != SET_ASIDE],
              SET_ASIDE: [SET_ASIDE]}
    out = {}
    for name, cats in groups.items():
        row = {}
        for metric in ("success", "preservation"):
            ours, theirs = category_mean(summary, OURS, metric, cats), category_mean(summary, BASELINE, metric, cats)
            row[f"ours_{metric}"], row[f"baseline_{metric}"] = ours, theirs
            row[metric] = ours / theirs if theirs > 0 else float("inf")
        out[name] = row
    return out


def markdown(folders: list[Path]) -> str:
    lines = ["| results | categories | NP-Edit success | supervised success | success ratio | preservation ratio |",
             "|---|---|---|---|---|---|"]
    for folder in folders:
        for name, row in ratios(json.loads((folder / "results.json").read_text())).items():
            lines.append(f"| `{folder}` | {name} | {100 * row['ours_success']:.1f} | "
                         f"{100 * row['baseline_success']:.1f} | {row['success']:.2f} | {row['preservation']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="folders holding report.py's results.json")
    args = p.parse_args(argv)
    folders = [Path(f) for f in args.folders]
    missing = [str(f / "results.json") for f in folders if not (f / "results.json").is_file()]
    if missing:
        print(f"category_ratios: error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        print(markdown(folders))
    except KeyError as exc:
        print(f"category_ratios: error: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
