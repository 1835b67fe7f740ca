"""Benchmark results: rows collected during the run, written as JSON and a markdown table.

    benchmarks/results/<machine>-<date>.json   {"machine", "versions", "command", "rows": [...]}
    benchmarks/results/<machine>-<date>.md     one table per group

<machine> is the GPU name when the run used CUDA, else the CPU model, as a file-name slug.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

__all__ = ["Recorder", "machine_info", "versions"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    info = {"cpu": _cpu_model(), "cpu_cores_visible": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}")
    return info


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "diffusers", "transformers", "deepspeed", "flash_attn", "xformers", "liger_kernel"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except Exception:  # noqa: BLE001 - not installed, or fails to import here (e.g. flash-attn on a CPU torch)
            out[name] = None
    try:
        from npedit.ops import _ext
        out["npedit._C"] = "built" if _ext.available() else f"not available ({_ext.unavailable_reason()})"
    except Exception as exc:  # noqa: BLE001 - reported in the results, not fatal
        out["npedit._C"] = f"error: {exc}"
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


class Recorder:
    """Collects rows; `write(out_dir)` saves them (nothing when no row was recorded)."""

    def __init__(self, device: str):
        self.device = device
        self.rows: list[dict] = []

    def add(self, group: str, **row) -> dict:
        row = {"group": group, **row}
        self.rows.append(row)
        return row

    def machine_name(self) -> str:
        info = machine_info(self.device)
        return _slug(info.get("gpu") or info["cpu"])

    def write(self, out_dir: str | Path) -> Path | None:
        if not self.rows:
            return None
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{self.machine_name()}-{_dt.date.today().isoformat()}"
        command = " ".join(["pytest", *sys.argv[1:]]) if "pytest" in sys.argv[0] else " ".join(sys.argv)
        rows, commands = list(self.rows), [command]
        previous = out_dir / f"{stem}.json"
        if previous.is_file():  # same machine and day: keep the groups this run did not measure
            old = json.loads(previous.read_text())
            groups = {r["group"] for r in rows}
            rows = [r for r in old.get("rows", []) if r["group"] not in groups] + rows
            commands = [c for c in old.get("commands", [old.get("command", "")]) if c and c != command] + commands
        finalize(rows)
        doc = {"machine": machine_info(self.device), "versions": versions(), "command": command,
               "commands": commands, "date": _dt.datetime.now().isoformat(timespec="seconds"), "rows": rows}
        (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(markdown(doc))
        return out_dir / f"{stem}.json"


# ---------------------------------------------------------------------------------------------------- ratios


def _index(rows, group, key) -> dict:
    return {key(r): r for r in rows if r["group"] == group}


def finalize(rows: list[dict]) -> None:
    """Ratios against the baselines measured in the same run (rows are completed in place)."""
    att = [r for r in rows if r["group"] == "attention"]
    for r in att:
        base = next((b for name in ("sdpa-flash", "sdpa-math") for b in att
                     if b["impl"] == name and b["case"] == r["case"] and b["mode"] == r["mode"]), None)
        if base is not None:
            r["vs_baseline"] = base["median_ms"] / r["median_ms"]
    plain = _index(rows, "answer_loss", lambda r: (r["case"], r["mode"], r["impl"]))
    for r in (r for r in rows if r["group"] == "answer_loss"):
        base = plain.get((r["case"], r["mode"], "plain-logits"))
        if base is not None and r.get("peak_mib"):
            r["memory_vs_plain"] = base["peak_mib"] / r["peak_mib"]
    ref = _index(rows, "csrc", lambda r: (r["case"], r["mode"], r["impl"].split()[0]))
    for r in (r for r in rows if r["group"] == "csrc"):
        base = ref.get((r["case"], r["mode"], "ref"))
        if base is not None:
            r["vs_ref"] = base["median_ms"] / r["median_ms"]
    step = _index(rows, "step", lambda r: (r["case"], r["passes"], r["stack"]))
    for r in (r for r in rows if r["group"] == "step"):
        base = step.get((r["case"], r["passes"], "plain"))
        if base is not None and r.get("median_s"):
            r["time_vs_plain"] = r["median_s"] / base["median_s"]
        if base is not None and r["stack"] == "npedit":
            r["peak_plain_over_npedit"] = base["peak_mib"] / r["peak_mib"]
            r["step_plain_over_npedit"] = base["step_mib"] / r["step_mib"]
    sharded = [r for r in rows if r["group"] == "sharded_step"]
    plain_rows = {r["case"]: r for r in sharded if r["stack"] == "plain"}
    for r in sharded:
        if r["stack"] != "plain" and r["case"] in plain_rows:
            r["peak_plain_over_npedit"] = plain_rows[r["case"]]["peak_mib"] / r["peak_mib"]


# ---------------------------------------------------------------------------------------------------- markdown

COLUMNS = {
    "attention": ["case", "impl", "mode", "median_ms", "tflops", "vs_baseline"],
    "answer_loss": ["case", "impl", "mode", "median_ms", "saved_mib", "peak_mib", "memory_vs_plain"],
    "csrc": ["case", "impl", "mode", "median_ms", "gbps", "vs_ref"],
    "step": ["case", "stack", "passes", "median_s", "peak_mib", "step_mib", "saved_mib", "predicted_mib",
             "prediction_err", "time_vs_plain", "peak_plain_over_npedit", "step_plain_over_npedit"],
    "sharded_step": ["case", "stack", "ranks", "peak_mib", "resident_mib", "step_s", "peak_plain_over_npedit"],
}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(doc: dict) -> str:
    m, v = doc["machine"], doc["versions"]
    lines = [f"# Benchmark results, {doc['date'][:10]}", "",
             (f"- machine: {m.get('gpu') or m['cpu']} ({'GPU' if m.get('gpu') else 'CPU'}; CPU {m['cpu']}, "
              f"{m['cpu_cores_visible']} cores visible, OMP_NUM_THREADS={m['omp_num_threads']})"),
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             *[f"- command: `{c}`" for c in doc.get("commands", [doc["command"]])], ""]
    groups = list(dict.fromkeys(r["group"] for r in doc["rows"]))
    for group in groups:
        rows = [r for r in doc["rows"] if r["group"] == group]
        cols = COLUMNS.get(group) or sorted({k for r in rows for k in r} - {"group"})
        lines += [f"## {group}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
        notes = sorted({r["note"] for r in rows if r.get("note")})
        lines += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)
