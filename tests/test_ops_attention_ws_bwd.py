"""The warp-specialised Gluon backward (npedit/ops/triton/attention_ws_bwd.py, `NPEDIT_ATTN_BWD=ws`).

Gluon has no CPU interpreter, so on the CPU the kernel is compiled for sm_90 (ptxas, no GPU needed)
and its resources checked here, and run by the Gluon simulator in `test_gluon_sim.py`; on a GPU its
numerics are checked by `test_warp_specialised_backward_cuda` below and `test_ops_attention.py`'s GPU
tests. Off sm_90 the variant must run the split backward and
give its results.
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
from npedit.ops.triton import attention as fwd_kernels
from npedit.ops.triton import attention_bwd as kernels
from npedit.ops.triton import attention_ws_bwd, interpreting

ROOT = Path(__file__).resolve().parents[1]
compiled_kernels = pytest.mark.skipif(interpreting(), reason="set TRITON_INTERPRET=0 to run the compiled kernels")


def test_ws_backward_compiles_for_sm90_into_a_load_warp_and_two_mma_warpgroups(tmp_path):
    """bf16 at both head dims, causal or not, dQ by atomics ("ws"), by TMA reductions ("ws-dqtma") or
    left to the dQ pass ("ws-dkdv"), lowers for sm_90 without spills or a shared-memory overflow,
    really warp-specialised (a 24-register TMA warp, compute warpgroups of at least 200), with wgmma
    issued for every matmul: per (key tile, query tile) 4 of them without dQ, 5 with, so the kernels
    that add dQ issue more. dQ leaves by per-thread atomics or by TMA reductions, never both; the
    reductions read an fp32 [BLOCK_M, D] tile of shared memory, which is all the shared memory they add.
    No mode loads from global memory but by TMA (lse and delta come with Q and dO)."""
    report = tmp_path / "ws_bwd.json"
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, str(ROOT / "kernels" / "compile_check.py"), "--only",
                           "bwd ws bf16,bwd ws-dkdv bf16,bwd ws-dqtma bf16", "--json", str(report)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["case"]: r for r in json.loads(report.read_text())["results"]}
    assert set(rows) == {f"attention bwd {name} bf16 hd{hd} {mask}" for name in ("ws", "ws-dkdv", "ws-dqtma")
                         for hd in (64, 128) for mask in ("full", "causal")}
    for row in rows.values():  # the dK / dV accumulators and the S^T, dP^T tiles fit in 240 registers
        assert row["ok"] and row["local"] == 0, row
        assert min(row["setmaxnreg"]) == 24 and max(row["setmaxnreg"]) >= 200, row
        assert row["global_loads"] == 0, row
        # what the Gluon simulator assumes of the compute partition (test_gluon_sim.py runs it as one
        # thread): it releases a Q / dO stage once, after all its warps got there, and no warp
        # overwrites the dQ tile before the TMA reduction read it
        assert row["arrives"] > 0 and row["arrives_after_bar_sync"] == row["arrives"], row
        assert row["bulk_read_waits_then_bar_sync"] == row["bulk_read_waits"], row
        # what it cannot see: the warps of the compute partition hand tiles through shared memory to
        # the async proxy (dS^T to the dQ wgmma; with TMA reductions the dQ tile too), each warp
        # storing its rows; every such store is fenced and synced over the partition before the
        # reader is issued
        handoffs = {"ws": 1, "ws-dqtma": 2, "ws-dkdv": 0}[row["case"].split()[2]]
        assert row["handoffs"] == handoffs and row["handoffs_fenced_and_synced"] == handoffs, row
    for hd in (64, 128):
        for mask in ("full", "causal"):
            atomics, tma, dkdv = (rows[f"attention bwd {name} bf16 hd{hd} {mask}"] for name in ("ws", "ws-dqtma", "ws-dkdv"))
            assert dkdv["wgmma"] > 0 and atomics["wgmma"] > dkdv["wgmma"], (atomics, dkdv)
            assert tma["wgmma"] == atomics["wgmma"], (tma, atomics)  # the same matmuls
            assert atomics["shared"] > dkdv["shared"], (atomics, dkdv)  # the two dS^T buffers dQ reads
            block_m = kernels.WS_BWD_TILES[hd]["BLOCK_M"]
            assert tma["shared"] - atomics["shared"] == block_m * hd * 4, (tma, atomics)
            assert atomics["global_atomics"] > 0 and atomics["tma_reductions"] == 0, atomics
            assert tma["tma_reductions"] > 0 and tma["global_atomics"] == 0, tma
            assert tma["bulk_read_waits"] > 0, tma
            assert dkdv["global_atomics"] == dkdv["tma_reductions"] == 0, dkdv


@pytest.mark.parametrize("seqlen", [1, 37, 64, 1000])
def test_row_stats_buffers_start_every_row_on_16_bytes(seqlen):
    """lse and delta as the Gluon backward's TMA reads them: [B, H, S] views with the same strides, each
    row on a 16-byte boundary, lse's values; no copy where lse's rows are aligned already."""
    lse = torch.randn(2, 3, seqlen)
    lse[0, 1, 0] = float("-inf")  # a row that saw no key stays -inf (the kernel maps it to P = 0)
    lse_tma, delta = attention_ws_bwd.row_stats_buffers(lse)
    assert lse_tma.shape == delta.shape == lse.shape and lse_tma.stride() == delta.stride()
    assert lse_tma.stride(2) == 1 and lse_tma.stride(1) % 4 == 0 and lse_tma.stride(0) % 4 == 0
    for t in (lse_tma, delta):
        assert t.data_ptr() % 16 == 0
    assert torch.equal(lse_tma, lse)
    assert (lse_tma.data_ptr() == lse.data_ptr()) == (seqlen % 4 == 0)
    assert delta.data_ptr() != lse_tma.data_ptr()


@pytest.mark.parametrize("causal", [False, True])
def test_ws_variant_off_sm90_gives_the_split_backward_results(monkeypatch, causal):
    """On the CPU (and any GPU but sm_90) NPEDIT_ATTN_BWD=ws runs the split backward, bit for bit."""
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    torch.manual_seed(0)
    inputs = [torch.randn(2, 37, h, 64, requires_grad=True) for h in (4, 2, 2)]
    grad = torch.randn(2, 37, 4, 64)
    grads = {}
    for variant in ("split", "ws"):
        monkeypatch.setenv("NPEDIT_ATTN_BWD", variant)
        grads[variant] = torch.autograd.grad(ops.attention(*inputs, causal=causal), inputs, grad)
    for name, a, b in zip(("dq", "dk", "dv"), grads["split"], grads["ws"]):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)


def test_ws_config_out_of_the_kernels_scope_runs_the_split_default(monkeypatch):
    """Where the launcher's config asks for the Gluon kernel (as on sm_90) but the inputs are out of its
    scope (here: CPU tensors), the split default runs with its own tiles, not the Gluon kernel's."""
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    monkeypatch.setattr(kernels, "interpreting", lambda: False)  # GPU configs; the interpreter still runs
    launched = []
    real = kernels._attention_bwd_dkdv_kernel

    class Recording:
        def __getitem__(self, grid):
            launched.append(grid)
            return real[grid]

    monkeypatch.setattr(kernels, "_attention_bwd_dkdv_kernel", Recording())
    torch.manual_seed(0)
    inputs = [torch.randn(1, 150, 2, 128, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    grad = torch.randn(1, 150, 2, 128, dtype=torch.bfloat16)
    grads = {}
    for variant in ("split", "ws"):
        monkeypatch.setenv("NPEDIT_ATTN_BWD", variant)
        assert kernels.bwd_configs(128, torch.bfloat16)[0]["WS"] == (variant == "ws")
        grads[variant] = torch.autograd.grad(ops.attention(*inputs), inputs, grad)
    split_tile = kernels._default_bwd_configs(128, torch.bfloat16)[0]["BLOCK_N"]
    assert split_tile != kernels.WS_BWD_TILES[128]["BLOCK_N"]
    assert launched == [(-(-150 // split_tile), 2)] * 2  # the split's key tiles both times
    for name, a, b in zip(("dq", "dk", "dv"), grads["split"], grads["ws"]):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)


def test_ws_config_only_where_the_kernel_has_tiles(monkeypatch):
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "ws")
    for module in (kernels, fwd_kernels):  # (tile overrides apply only to compiled kernels)
        monkeypatch.setattr(module, "interpreting", lambda: False)
    for head_dim_pad in (64, 128):
        kv, _ = kernels.bwd_configs(head_dim_pad, torch.bfloat16)
        assert kv["WS"] and kv["FUSE_DQ"] and not kv["TMA"]
        assert kv["BLOCK_N"] == 16 * kv["num_warps"]  # the kernel's rule: 16 keys per compute warp
    assert not kernels.bwd_configs(256, torch.bfloat16)[0]["WS"]  # no hd256 tiles: the split default
    assert not kernels.bwd_configs(128, torch.float32)[0]["WS"]  # fp32 has no wgmma path here
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "split")
    assert not kernels.bwd_configs(128, torch.bfloat16)[0]["WS"]
    # a sweep's dK/dV override turns it on with or without dQ atomics
    monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDES", {"dkdv": dict(BLOCK_M=64, BLOCK_N=128, num_warps=8,
                                                                      num_stages=3, WS=True)})
    kv, _ = kernels.bwd_configs(fwd_kernels.TILE_OVERRIDE_HEAD_DIM, torch.bfloat16)
    assert kv["WS"] and not kv["FUSE_DQ"] and not kv["DQ_TMA"] and kv["num_stages"] == 3
    fwd_kernels.TILE_OVERRIDES["dkdv"].update(FUSE_DQ=True, DQ_TMA=True)  # dQ by TMA reductions
    kv, _ = kernels.bwd_configs(fwd_kernels.TILE_OVERRIDE_HEAD_DIM, torch.bfloat16)
    assert kv["WS"] and kv["FUSE_DQ"] and kv["DQ_TMA"]
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "ws")
    monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDES", {})
    assert not kernels.bwd_configs(128, torch.bfloat16)[0]["DQ_TMA"]  # the variant's default: atomics


def test_ws_backward_rejects_a_key_tile_its_warps_do_not_cover():
    t = torch.empty(1, 8, 1, 64, dtype=torch.bfloat16)
    lse = torch.empty(1, 1, 8)
    with pytest.raises(ValueError, match="BLOCK_N = 16 \\* num_warps"):
        attention_ws_bwd.attention_bwd_ws(t, t, t, t, lse, lse, None, t, t, False, 1.0, 1.0, BLOCK_N=64, num_warps=8)
    with pytest.raises(ValueError, match="dq_tma adds dQ inside the kernel"):
        attention_ws_bwd.attention_bwd_ws(t, t, t, t, lse, lse, None, t, t, False, 1.0, 1.0, dq_tma=True)


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@compiled_kernels
@pytest.mark.parametrize("dq_mode", ["dq-atomics", "dq-tma", "dq-pass"])
@pytest.mark.parametrize("sq,sk", [(1000, 1000), (777, 1001), (1001, 777), (1, 300), (129, 128)])
@pytest.mark.parametrize("d", [64, 128])
def test_warp_specialised_backward_cuda(monkeypatch, sq, sk, d, dq_mode):
    """The Gluon backward itself (no silent fallback: the Triton dK/dV kernels are patched to raise, and
    where the kernel adds dQ, by atomics or TMA reductions, the dQ pass too) on sm_90: odd lengths,
    Sq > Sk causal (rows that see no key), one query, GQA, fp16 and bf16; gradients (and out, lse)
    against float64 with the tests' rule."""
    from npedit.ops.testing import attention_gqa_cuda_check
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the warp-specialised backward is for sm_90")
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "ws")
    if dq_mode != "dq-atomics":  # the other dQ modes through a sweep-style dK/dV override
        fuse = dict(FUSE_DQ=True, DQ_TMA=True) if dq_mode == "dq-tma" else {}
        monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDE_HEAD_DIM", d)
        monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDES", {"dkdv": dict(kernels.WS_BWD_TILES[d], WS=True, **fuse)})
    patched = ["_attention_bwd_dkdv_kernel", "_attention_bwd_dkdv_tma_kernel"]
    patched += ["_attention_bwd_dq_kernel", "_attention_bwd_dq_tma_kernel"] if dq_mode != "dq-pass" else []
    for name in patched:
        monkeypatch.setattr(kernels, name, NotLaunched(name))
    for dtype, atol, rtol in ((torch.bfloat16, 4e-3, 1e-2), (torch.float16, 1e-3, 2e-3)):
        for causal in (False, True):
            attention_gqa_cuda_check(ops.attention, ops.attention_ref, sq, sk, d, dtype, causal, atol, rtol)
