"""The warp-specialised Gluon forward (npedit/ops/triton/attention_ws.py, `NPEDIT_ATTN_FWD=ws`).

Gluon has no CPU interpreter, so on the CPU the kernel is compiled for sm_90 (ptxas, no GPU needed)
and its resources checked here, and run by the Gluon simulator in `test_gluon_sim.py`; on a GPU its
numerics are checked by `test_ops_attention.py`'s GPU tests and `test_warp_specialised_forward_cuda`
below. Off sm_90 the variant must fall back to the Triton kernels and give their results.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npedit import ops
from npedit.ops.testing import NotLaunched
from npedit.ops.triton import attention as kernels
from npedit.ops.triton import attention_ws
from npedit.ops.triton import interpreting

ROOT = Path(__file__).resolve().parents[1]
compiled_kernels = pytest.mark.skipif(interpreting(), reason="set TRITON_INTERPRET=0 to run the compiled kernels")


def test_ws_forward_compiles_for_sm90_into_a_load_warp_and_two_mma_warpgroups(tmp_path):
    """Every dtype / head dim / mask the launcher sends to the Gluon kernel lowers for sm_90 without
    spills or a shared-memory overflow, and really is warp-specialised: register reallocation gives
    the TMA load warp 24 registers and the softmax warpgroups at least 200, and wgmma is issued."""
    report = tmp_path / "ws.json"
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, str(ROOT / "kernels" / "compile_check.py"), "--only", "fwd ws",
                           "--json", str(report)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(report.read_text())["results"]
    labels = {r["case"] for r in rows}
    assert labels == {f"attention fwd ws {dt} hd{hd} {mask}" for dt in ("bf16", "fp16") for hd in (64, 128)
                      for mask in ("full", "causal")}
    for row in rows:
        assert row["ok"] and row["local"] == 0, row
        assert min(row["setmaxnreg"]) == 24 and max(row["setmaxnreg"]) >= 200, row
        assert row["wgmma"] > 0, row
        # the softmax warpgroups release a K/V stage once, after both got there (a bar.sync over the
        # partition before the arrive): what the Gluon simulator assumes of a partition's arrive
        assert row["arrives"] > 0 and row["arrives_after_bar_sync"] == row["arrives"], row
        # P stays in registers as wgmma's A operand: no warp hands a tile to the async proxy through
        # shared memory, so there is no intra-partition store-to-wgmma ordering to get wrong
        assert row["handoffs"] == 0, row


@pytest.mark.parametrize("causal", [False, True])
def test_ws_variant_off_sm90_gives_the_triton_kernels_results(monkeypatch, causal):
    """On the CPU (and any GPU but sm_90) NPEDIT_ATTN_FWD=ws runs the pointer-load kernel."""
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 37, h, 64) for h in (4, 2, 2))
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "pointer")
    expected, expected_lse = ops.attention(q, k, v, causal=causal, return_lse=True)
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "ws")
    out, lse = ops.attention(q, k, v, causal=causal, return_lse=True)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(lse, expected_lse, atol=0, rtol=0)


def test_ws_config_only_where_the_kernel_has_tiles(monkeypatch):
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "ws")
    monkeypatch.setattr(kernels, "interpreting", lambda: False)
    for head_dim_pad in (64, 128):
        cfg = kernels.fwd_config(head_dim_pad, torch.bfloat16)
        assert cfg["WS"] and (cfg["BLOCK_M"], cfg["num_warps"]) == (128, 8)
    assert not kernels.fwd_config(256, torch.bfloat16)["WS"]  # no hd256 tiles: the pointer kernel
    assert not kernels.fwd_config(128, torch.float32)["WS"]  # fp32 has no wgmma path here
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "pointer")
    assert not kernels.fwd_config(128, torch.bfloat16)["WS"]


def test_ws_layout_rules():
    """The descriptors view [B, S, H, D] as [B, S, H * D]: (H, D) must be contiguous, strides 16-byte
    aligned, head dim 64 or 128."""
    fits = attention_ws.strides_fit
    assert fits(torch.empty(2, 47, 4, 128, dtype=torch.bfloat16))
    qkv = torch.empty(2, 47, 3, 4, 64, dtype=torch.float16)  # a fused projection's q view: row stride 3HD
    assert fits(qkv[:, :, 0])
    assert not fits(torch.empty(2, 4, 47, 128, dtype=torch.bfloat16).transpose(1, 2))  # (H, D) not contiguous
    assert not fits(torch.empty(2, 47, 4, 96, dtype=torch.bfloat16))  # no 96 tiles
    assert not fits(torch.empty(2, 47, 4, 64, dtype=torch.float32))  # fp32
    odd = torch.empty(2 * 47 * 4 * 64 + 1, dtype=torch.bfloat16)[1:].view(2, 47, 4, 64)  # base 2-byte aligned
    assert not fits(odd)
    # and never on the CPU
    assert not attention_ws.ws_fits(*(torch.empty(1, 8, 2, 64, dtype=torch.bfloat16),) * 3, interpreting=False)


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@compiled_kernels
@pytest.mark.parametrize("sq,sk", [(1000, 1000), (777, 1001), (1001, 777), (1, 300), (129, 128)])
@pytest.mark.parametrize("d", [64, 128])
def test_warp_specialised_forward_cuda(monkeypatch, sq, sk, d):
    """The Gluon kernel itself (no silent fallback) on sm_90: odd lengths, Sq > Sk causal (rows that
    see no key), GQA, fp16 and bf16; outputs, lse and the gradients through it against float64."""
    from npedit.ops.testing import attention_gqa_cuda_check
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the warp-specialised forward is for sm_90")
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "ws")
    monkeypatch.setattr(kernels, "_attention_fwd_kernel", NotLaunched("the pointer-load forward kernel"))
    for dtype, atol, rtol in ((torch.bfloat16, 4e-3, 1e-2), (torch.float16, 1e-3, 2e-3)):
        for causal in (False, True):
            attention_gqa_cuda_check(ops.attention, ops.attention_ref, sq, sk, d, dtype, causal, atol, rtol)
