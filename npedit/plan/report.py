"""Human-readable and JSON reports of a `Prediction`."""
from __future__ import annotations

import json
from pathlib import Path

from npedit.plan.predict import Prediction

__all__ = ["GIB", "describe_run", "json_report", "summary_line", "text_report"]

GIB = 1024 ** 3
MIB = 1024 ** 2


def _unit(p: Prediction) -> tuple[str, int]:
    """GiB, or MiB for small runs (built-in worlds), so the table never reads 0.0."""
    return ("GiB", GIB) if max(b.allocated for b in p.stacks.values()) >= 2 * GIB else ("MiB", MIB)


def _model_name(source: str, family: str) -> str:
    if not source:
        return f"built-in ({family})"
    return Path(source).name or source


def describe_run(p: Prediction) -> dict:
    cfg, plan_sizes = p.cfg, {s.role: s.params for s in p.sizes}
    return {
        "student": _model_name(cfg.student.pretrained, "FlowDiT"),
        "student_params_b": round(plan_sizes.get("student", 0) / 1e9, 2),
        "judge": _model_name(cfg.vlm.pretrained, "TinyVLM"),
        "judge_params_b": round(plan_sizes.get("vlm", 0) / 1e9, 2),
        "image_size": cfg.data.image_size,
        "batch_per_gpu": cfg.data.batch_size,
        "precision": cfg.train.precision,
        "zero_stage": cfg.train.zero_stage,
        "checkpointing": cfg.student.checkpointing,
        "passes": p.passes,
        "critic_updates": cfg.method.fake_updates,
        "gpus": p.hardware.gpus,
        "gpu_mem_gib": p.hardware.gpu_mem_gb,
        "offload": p.hardware.offload,
    }


def summary_line(p: Prediction) -> str:
    d = describe_run(p)
    parts = []
    for name, b in p.stacks.items():
        parts.append(f"{name} {b.total / GIB:.0f} GiB/GPU ({'fits' if p.fits(name) else 'does not fit'})")
    return (f"{d['student']} + {d['judge']} at {d['image_size']}px, batch {d['batch_per_gpu']}, {d['passes']} "
            f"unrolled passes, {d['gpus']} x {d['gpu_mem_gib']:g} GiB: " + ", ".join(parts))


ROWS = [("weights", "params"), ("gradient partitions", "grads"), ("optimizer states", "optimizer"),
        ("engine buffers", "engine_buffers"), ("ZeRO-3 gathered weights", "gathered")]


def text_report(p: Prediction) -> str:
    d = describe_run(p)
    names = list(p.stacks)
    head = (f"run: {d['student']} ({d['student_params_b']}B) student, {d['judge']} ({d['judge_params_b']}B) judge, "
            f"{d['image_size']} px, batch {d['batch_per_gpu']}/GPU, {d['precision']}, ZeRO-{d['zero_stage']} "
            f"(npedit), checkpointing {d['checkpointing']} (npedit), {d['passes']} unrolled passes, "
            f"{d['critic_updates']} critic updates\nhardware: {d['gpus']} GPU(s) x {d['gpu_mem_gib']:g} GiB, "
            f"offload {d['offload']}\n")
    unit, scale = _unit(p)
    lines = [head, f"{unit + ' per GPU':34s}" + "".join(f"{n:>12s}" for n in names)]

    def size(n: float) -> str:
        return f"{n / scale:.1f}"

    def row(label, values):
        lines.append(f"{label:34s}" + "".join(f"{v:>12s}" for v in values))

    for label, key in ROWS:
        row(label, [size(getattr(p.stacks[n], key)) if getattr(p.stacks[n], key) else "-" for n in names])
    parts = list(dict.fromkeys(k for n in names for k in p.stacks[n].activations))
    for part in parts:
        row(f"activations: {part}", [size(p.stacks[n].activations.get(part, 0)) for n in names])
    row("step temporaries, gradients", [size(p.stacks[n].step_extra) for n in names])
    row("CUDA runtime reserve", [size(p.stacks[n].runtime) for n in names])
    row("total", [size(p.stacks[n].total) for n in names])
    row(f"fits in {d['gpu_mem_gib']:g} GiB", ["yes" if p.fits(n) else "no" for n in names])
    if any(p.stacks[n].host for n in names):
        row("offloaded to host (per GPU)", [size(p.stacks[n].host) for n in names])
    for n in names:
        lines.append(f"{n} peaks in: {p.stacks[n].peak_phase or '-'}")
    lines.append("")
    lines.append(summary_line(p))
    if "plain" in p.stacks and "npedit" in p.stacks:
        lines.append(f"plain / npedit: {p.ratio():.1f}x")
    return "\n".join(lines)


def json_report(p: Prediction) -> str:
    out = {
        "run": describe_run(p),
        "models": [vars(s) for s in p.sizes],
        "stacks": {n: b.to_dict() for n, b in p.stacks.items()},
        "fits": {n: p.fits(n) for n in p.stacks},
        "summary": summary_line(p),
    }
    return json.dumps(out, indent=2)
