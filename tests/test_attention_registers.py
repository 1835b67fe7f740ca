"""The attention backward lowered for sm_90 without a GPU (kernels/compile_check.py runs ptxas): the
register budget that decides whether its tiles spill, counted deterministically for the pinned Triton.

- varlen inputs and the causal mask cost the dK/dV and dQ passes no more than the non-causal batch
  layout: the sequence starts (int64) live in the scalar base pointers, not in every tile offset, and
  the dK/dV pass walks its query tiles in one loop that masks the diagonal tiles, not in a masked and
  an unmasked copy (before, at hd128: dK/dV spilled 368-1016 B per thread causal or varlen against
  56 B, dQ 288-304 B varlen against 0; kernels/NOTES.md v7);
- the tensor-descriptor (TMA) backward compiles, and its dQ pass needs no spill at the shipped tile.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_backward_registers_on_sm90(tmp_path):
    report = tmp_path / "bwd.json"
    only = "bwd dkdv bf16 hd128,bwd dq bf16 hd128,bwd dkdv tma bf16 hd128,bwd dq tma bf16 hd128"
    proc = subprocess.run([sys.executable, str(ROOT / "kernels" / "compile_check.py"), "--only", only,
                           "--json", str(report)], capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="0"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["case"]: r for r in json.loads(report.read_text())["results"]}
    tag = "bf16 hd128"
    for kernel in ("dkdv", "dq"):
        batch = rows[f"attention bwd {kernel} {tag} full"]
        for case in ("full varlen", "causal", "causal varlen"):
            other = rows[f"attention bwd {kernel} {tag} {case}"]
            assert other["local"] <= batch["local"] + 16, (batch, other)
    for mask in ("full", "causal"):
        assert rows[f"attention bwd dq tma {tag} {mask}"]["local"] == 0, rows[f"attention bwd dq tma {tag} {mask}"]
        assert rows[f"attention bwd dkdv tma {tag} {mask}"]["ok"]
        assert rows[f"attention bwd dq tma {tag} {mask}"]["wgmma"] > 0
