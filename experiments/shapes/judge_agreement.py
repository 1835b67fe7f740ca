"""Does the judge's reward agree with the oracle on what the students actually produce?

NP-Edit trains on the judge's answers; the oracle knows the truth. For held-out edits, this asks the
judge the trainer's questions (caption style: "does the image show <target caption>?", "is there a
<object> in the image?" for removals, "apart from the <object>, are the two images the same?") about
each method's outputs, and splits the judge's probability of the wanted answer by the oracle's
verdict: edit questions by edit success, identity questions by preservation. The same questions
about the true targets and the unedited references give the judge's ceiling and floor. A second
table puts, per edit category, the judge's edit-question reward next to the oracle's success rate.

    python experiments/shapes/judge_agreement.py --runs runs/exp_shapes --seeds 0 1 2
    # another judge than the one the runs trained against
    python experiments/shapes/judge_agreement.py --runs runs/exp_shapes --judge runs/judge_ft/judge

Writes OUT/judge_agreement.json and OUT/JUDGE.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from npedit.adapters.builtin import BuiltinJudge  # noqa: E402
from npedit.data.edits import make_example  # noqa: E402
from npedit.data.example import collate  # noqa: E402
from npedit.eval.shapes_eval import held_out_edits, run_editor, score_outputs  # noqa: E402
from npedit.inference import Editor, resolve_export  # noqa: E402
from npedit.method.questions import build_questions  # noqa: E402
from npedit.models.tokenizer import WordTokenizer  # noqa: E402
from npedit.models.vlm import TinyVLM  # noqa: E402
from npedit.presets import get_preset  # noqa: E402

DEFAULT_METHODS = ("warmup", "dmd_only", "npedit", "vlm_w0.3", "supervised")


def wanted_answer_probs(judge: BuiltinJudge, data, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> p(wanted answer) [N] for the edit question and [N] for the identity question of each edit."""
    batch = collate([make_example(s, e, t, data.references.shape[-1])
                     for s, e, t in zip(data.scenes, data.edits, data.targets)])
    questions, _ = build_questions(batch, identity=True, style="caption")   # per edit: (edit, identity)
    with torch.no_grad():
        p = torch.exp(-judge.answer_losses(questions, images, batch.images, 1.0))
    return p[0::2], p[1::2]


def split_mean(p: torch.Tensor, verdict: torch.Tensor) -> dict:
    """Mean of p where the oracle says yes / no (None when no edit falls on that side)."""
    def mean(sel):
        return float(p[sel].mean()) if bool(sel.any()) else None
    return {"oracle_yes": mean(verdict), "oracle_no": mean(~verdict), "n_yes": int(verdict.sum()),
            "n_no": int((~verdict).sum())}


def agreement(judge: BuiltinJudge, data, outputs: torch.Tensor) -> dict:
    scores = score_outputs(data, outputs)
    rows = scores["examples"]
    success = torch.tensor([r["success"] for r in rows])
    preserved = torch.tensor([r["preservation"] for r in rows])
    p_edit, p_identity = wanted_answer_probs(judge, data, outputs)
    edit_by_category = {c: float(p_edit[[i for i, x in enumerate(data.categories) if x == c]].mean())
                        for c in scores["per_category"]}
    return {"edit": split_mean(p_edit, success), "identity": split_mean(p_identity, preserved),
            "edit_mean": float(p_edit.mean()), "identity_mean": float(p_identity.mean()),
            "edit_by_category": edit_by_category,
            "success_by_category": {c: s["success"] for c, s in scores["per_category"].items()}}


def export_of(run: Path) -> Path | None:
    """The run's exported editor: RUN/export (supervised.py) or its latest checkpoint's (the trainer)."""
    if (run / "export" / "config.json").is_file():
        return run / "export"
    try:
        return resolve_export(run)
    except FileNotFoundError:
        return None


def judge_at(folder: str | Path, max_text_len: int) -> BuiltinJudge:
    """The built-in judge saved in `folder`, asked with the trainer's binary answer loss."""
    return BuiltinJudge(TinyVLM.from_pretrained(folder).eval(), WordTokenizer.from_pretrained(folder),
                        max_text_len, "binary")


def load_judge(export: Path) -> tuple[BuiltinJudge, str]:
    """The judge the run in `export` trained against (its config's vlm.pretrained) and that folder."""
    vlm = json.loads((export / "config.json").read_text())["vlm"]
    return judge_at(vlm["pretrained"], vlm["max_text_len"]), vlm["pretrained"]


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(result: dict) -> str:
    lines = ["# Shapes world: does the judge agree with the oracle?", "",
             f"Judge: `{result.get('judge', '?')}`. "
             f"Generated by `experiments/shapes/judge_agreement.py` from seeds {result['seeds']}; "
             f"{result['num_examples']} held-out edits. Each cell: the judge's probability of the answer the "
             "trainer wants, mean over edits (and seeds). Edit question split by the oracle's edit success, "
             "identity question by its preservation. A useful reward is high where the oracle says yes and low "
             "where it says no.", "",
             "| images | edit q: oracle success | edit q: failure | identity q: preserved | identity q: not |",
             "|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {_fmt(r['edit']['oracle_yes'])} | {_fmt(r['edit']['oracle_no'])} | "
                     f"{_fmt(r['identity']['oracle_yes'])} | {_fmt(r['identity']['oracle_no'])} |")
    categories = list(next(iter(result["rows"].values()))["edit_by_category"])
    lines += ["", "Per edit category: the judge's edit-question reward / the oracle's edit success rate.", "",
              "| images | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for name, r in result["rows"].items():
        cells = [f"{_fmt(r['edit_by_category'][c])} / {_fmt(r['success_by_category'][c])}" for c in categories]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(REPO / "runs" / "exp_shapes"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--num_examples", type=int, default=240)
    p.add_argument("--judge", default="", help="built-in judge folder (default: the one the runs trained against)")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    data = held_out_edits(args.num_examples)
    per_method: dict[str, list[dict]] = {}
    judge, judge_name = (judge_at(args.judge, get_preset("shapes").vlm.max_text_len), args.judge) if args.judge else (None, "")
    for method in args.methods:
        for seed in args.seeds:
            export = export_of(runs / f"{method}_s{seed}")
            if export is None:
                continue
            if judge is None:
                judge, judge_name = load_judge(export)
            editor = Editor(export)
            outputs = run_editor(lambda im, ins: editor.edit(im, ins, seed=0), data)
            per_method.setdefault(method, []).append(agreement(judge, data, outputs))
            print(f"{method} seed {seed}: {per_method[method][-1]}", flush=True)
    if judge is None:
        print(f"no finished runs under {runs}", file=sys.stderr)
        return 2
    rows = {"true targets": agreement(judge, data, data.truths),
            "references (unedited)": agreement(judge, data, data.references)}
    for method, results in per_method.items():
        rows[method] = {q: {side: _mean([r[q][side] for r in results]) for side in ("oracle_yes", "oracle_no")}
                        for q in ("edit", "identity")}
        rows[method].update({key: {c: _mean([r[key][c] for r in results]) for c in results[0][key]}
                             for key in ("edit_by_category", "success_by_category")})
    if judge_name and Path(judge_name).resolve().is_relative_to(REPO):   # a path inside the repository: shown relative
        judge_name = str(Path(judge_name).resolve().relative_to(REPO))
    result = {"judge": judge_name, "seeds": args.seeds, "num_examples": args.num_examples, "rows": rows, "runs": per_method}
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_agreement.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "JUDGE.md").write_text(markdown(result))
    print((out / "JUDGE.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
