"""Removals in pixels: which object a student dims, and what the DMD direction says about it.

For N held-out removals and every finished run of an experiment folder (run.py --out) this measures:

- **the student's output** at the named object's cell: its opacity alpha, the least-squares fit of
  background + alpha * coverage * (colour - background) with the object's own template (1 = still
  there as drawn, 0 = erased; the oracle reads the cell as empty below about 0.5), the same for the
  other objects of the scene (what a removal should keep), their difference (> 0 where the student
  dims the named object more than the rest: it has found which one to remove), the share of edits
  that erase the named object (alpha < 0.3) and keep every other one (alpha > 0.7), and the
  oracle's "removed";
- **the DMD signal on those outputs** (runs with a fake score: NP-Edit, DMD-only): at noise levels t,
  the real score's x0 prediction (target caption, the run's removal guidance `method.cfg_scale_hard`
  against the negative prompt) and the fake score's (target caption, no guidance, the run's final
  critic): alpha of the named object in each, and the share of the DMD direction's energy
  |x_real - x_fake|^2 that falls in the named object's cell (a cell is 1/9 of the image).

Writes the JSON file --out and prints a summary per run. About 1 minute per run on 2 cores:

    python experiments/shapes/removal_signal/measure.py --runs runs/exp_shapes_5x \
        --out experiments/shapes/removal_signal/mixed.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
for path in (REPO, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from rescore import finished_runs  # noqa: E402

from npedit.data.shapes import BACKGROUNDS, COLORS, POSITIONS, ShapeObject, caption, cell_bounds, coverage_templates  # noqa: E402

NOISE_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
ALPHA_BINS = (-np.inf, 0.1, 0.3, 0.5, 0.7, 0.9, 1.1, np.inf)
ERASED, KEPT = 0.3, 0.7          # opacity below which an object is gone, above which it is kept
ALPHA_BIN_NAMES = ("<0.1", "0.1-0.3", "0.3-0.5", "0.5-0.7", "0.7-0.9", "0.9-1.1", ">1.1")


def object_alpha(image: torch.Tensor, obj: ShapeObject, background: str) -> float:
    """Least-squares opacity of `obj` (its template and palette colour) over `background` in image [3, S, S]."""
    size = image.shape[-1]
    r0, r1, c0, c1 = cell_bounds(size, POSITIONS.index(obj.position))
    cover = coverage_templates(size)[(obj.shape, obj.size, obj.position)]                    # [h, w]
    pixels = image.detach().double().numpy().transpose(1, 2, 0)[r0:r1, c0:c1]              # [h, w, 3]
    bg = np.asarray(BACKGROUNDS[background], np.float64) / 255
    dc = np.asarray(COLORS[obj.color], np.float64) / 255 - bg
    return float((cover[..., None] * (pixels - bg) * dc).sum() / ((cover * cover).sum() * (dc * dc).sum()))


def cell_energy_share(diff: torch.Tensor, position: str) -> float:
    """Share of sum(diff^2) over [3, S, S] that lies in the cell at `position`."""
    r0, r1, c0, c1 = cell_bounds(diff.shape[-1], POSITIONS.index(position))
    energy = diff.double().pow(2).sum(0)
    return float(energy[r0:r1, c0:c1].sum() / energy.sum().clamp_min(1e-12))


def mean_or_nan(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def load_fake_score(checkpoint: Path, like: torch.nn.Module) -> torch.nn.Module:
    """The critic of checkpoints/step_<N>: a copy of `like` with the fake score's weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    fake = copy.deepcopy(like)
    fake.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / "fake"), tag="ds"))
    return fake.eval()


@torch.no_grad()
def score_signal(editor, fake, real, data, outputs: torch.Tensor, seed: int) -> dict:
    """alpha of the named object in the real and fake x0 predictions from the student's own outputs, and
    the named cell's share of |x_real - x_fake|^2, per noise level (means over the removals)."""
    from npedit import ops
    from npedit.method.losses import cfg_velocity

    m, diffusion = editor.config.method, editor.diffusion
    n = len(outputs)
    x0 = diffusion.encode_images(outputs)
    cap = diffusion.encode_text([caption(target) for target in data.targets])
    neg = diffusion.encode_text([m.negative_prompt] * n)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    named = [(s.object_named(e.object), s.background) for s, e in zip(data.scenes, data.edits)]
    rows = {}
    for t in NOISE_LEVELS:
        tt = torch.full((n,), t)
        x_t, _ = ops.flow_noise(x0, noise, tt)
        v_real = cfg_velocity(diffusion.velocity(real, x_t, tt, cap), diffusion.velocity(real, x_t, tt, neg),
                              torch.full((n,), m.cfg_scale_hard))
        x_real = diffusion.decode_latents(x_t - t * v_real)
        x_fake = diffusion.decode_latents(x_t - t * diffusion.velocity(fake, x_t, tt, cap))
        rows[str(t)] = {
            "alpha_real": float(np.mean([object_alpha(x_real[i], o, b) for i, (o, b) in enumerate(named)])),
            "alpha_fake": float(np.mean([object_alpha(x_fake[i], o, b) for i, (o, b) in enumerate(named)])),
            "named_cell_share": float(np.mean([cell_energy_share(x_real[i] - x_fake[i], o.position)
                                               for i, (o, _) in enumerate(named)]))}
    return rows


def measure_run(checkpoint: Path, seed: int, num_examples: int) -> dict:
    """Everything above for a run folder (its final student: the supervised baseline's export/ or the
    newest checkpoints/step_<N>) or one step_<N> folder, on the first `num_examples` held-out removals;
    `seed` is the run's sampling-noise seed."""
    from npedit.engine.checkpoint import latest_checkpoint
    from npedit.data.oracle import parse_scenes
    from npedit.eval.shapes_eval import held_out_edits, run_editor, score_edit
    from npedit.inference import Editor
    from npedit.models.dit import FlowDiT

    editor = Editor.from_checkpoint(checkpoint)
    data = held_out_edits(num_examples, editor.image_size, categories=("remove",))
    outputs = run_editor(lambda images, texts: editor.edit(images, texts, seed=seed), data)
    named = [s.object_named(e.object) for s, e in zip(data.scenes, data.edits)]
    alphas = np.array([object_alpha(outputs[i], o, s.background) for i, (o, s) in enumerate(zip(named, data.scenes))])
    others = [[object_alpha(outputs[i], o, s.background) for o in s.objects if o != n]
              for i, (n, s) in enumerate(zip(named, data.scenes))]
    with_others = [i for i, a in enumerate(others) if a]            # removals from scenes of 2-3 objects
    removed = [score_edit(s, e, p)[0] for s, e, p in zip(data.scenes, data.edits, parse_scenes(outputs))]
    result = {"alpha_named_mean": float(alphas.mean()), "alpha_named_median": float(np.median(alphas)),
              "alpha_named_hist": dict(zip(ALPHA_BIN_NAMES, np.histogram(alphas, bins=ALPHA_BINS)[0].tolist())),
              "alpha_others_mean": mean_or_nan([a for i in with_others for a in others[i]]),
              # which object the student dims: > 0 where it dims the named one more than the rest
              "others_minus_named": mean_or_nan([np.mean(others[i]) - alphas[i] for i in with_others]),
              # the named object erased and every other one kept, in pixels
              "erased_only_named": mean_or_nan([alphas[i] < ERASED and min(others[i]) > KEPT for i in with_others]),
              "removed": float(np.mean(removed)), "n": len(alphas), "n_with_others": len(with_others)}
    step_folder = checkpoint if checkpoint.name.startswith("step_") else latest_checkpoint(checkpoint)
    if step_folder is not None and (step_folder / "fake" / "ds").is_dir():   # the trainer's arms, not supervised
        cfg = editor.config
        real = FlowDiT.from_pretrained(cfg.student.teacher or cfg.student.pretrained).eval()
        result["signal"] = score_signal(editor, load_fake_score(step_folder, real), real, data, outputs, seed)
    return result


def summary_line(name: str, r: dict) -> str:
    line = (f"{name}: removed {100 * r['removed']:.1f}%  alpha named {r['alpha_named_mean']:.2f} "
            f"(median {r['alpha_named_median']:.2f})  others {r['alpha_others_mean']:.2f}  "
            f"others - named {r['others_minus_named']:.2f}  erased only the named one {100 * r['erased_only_named']:.1f}%")
    for t, s in r.get("signal", {}).items():
        line += (f"\n    t={t}: alpha real {s['alpha_real']:.2f}  fake {s['alpha_fake']:.2f}  "
                 f"named cell's share of |x_real - x_fake|^2 {s['named_cell_share']:.2f}")
    return line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="an experiment folder (run.py --out)")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--num_examples", type=int, default=200, help="held-out removals")
    p.add_argument("--steps", type=int, nargs="*", default=[],
                   help="checkpoint steps to measure, where a run has them; a run with none of them (the supervised "
                        "baseline keeps only its export) and the default: each run's final student")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = finished_runs(Path(args.runs)) if Path(args.runs).is_dir() else []
    if not runs:
        print(f"measure: error: no finished runs under {args.runs}", file=sys.stderr)
        return 2
    results = {}
    for folder, seed in runs:
        chosen = [c for c in (folder / "checkpoints" / f"step_{n}" for n in args.steps) if c.is_dir()] or [folder]
        for checkpoint in chosen:
            name = folder.name if checkpoint == folder else f"{folder.name}/{checkpoint.name}"
            results[name] = r = measure_run(checkpoint, seed, args.num_examples)
            print(summary_line(name, r), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "num_examples": args.num_examples, "noise_levels": NOISE_LEVELS,
                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
