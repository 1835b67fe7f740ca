"""The warp-specialised Gluon attention kernels, run on the CPU by npedit/ops/triton/gluon_sim.

Gluon has no interpreter, so without a Hopper GPU these kernels could only be compiled. The simulator
runs their Python bodies with the semantics that decide whether they are right (a thread per
partition under a seeded scheduler, mbarrier phases and byte counts, asynchronous TMA copies and
wgmma); the tests below check, for both kernels and every dQ mode of the backward:
- outputs and gradients against float64 with the GPU tests' rule, on odd lengths, GQA, causal with
  Sq > Sk (rows that see no key) and a single query, under every scheduling policy;
- the same through `npedit.ops.attention` (the launchers' glue: lse / delta buffers, dQ accumulator);
- that the simulator fails kernels with the protocol bugs such kernels have: each mutation below
  breaks one wait, arrival, byte count or release, and must be caught.
"""
import functools

import pytest
import torch

from helpers import load_attention_sweep
from npedit import ops
from npedit.ops.testing import NotLaunched, assert_close_to_reference, attention_gqa_cuda_check
from npedit.ops.triton import attention as fwd_kernels
from npedit.ops.triton import attention_bwd as bwd_kernels
from npedit.ops.triton import attention_ws, attention_ws_bwd
from npedit.ops.triton.gluon_sim import POLICIES, Deadlock, SimError, simulated_kernels

LOG2E = 1.4426950408889634
TOL = {torch.bfloat16: (4e-3, 1e-2), torch.float16: (1e-3, 2e-3)}  # (atol, rtol): the GPU tests' values
# (batch, Sq, Sk, Hq, Hk, head dim, causal): odd tails, GQA, Sq > Sk causal (at 300 / 50 a whole
# 128-row query tile sees no key: the forward's programs with no key tile), one query, both head dims
CASES = [(2, 77, 200, 4, 2, 64, False), (1, 200, 77, 2, 1, 128, True), (1, 300, 50, 2, 1, 64, True),
         (1, 1, 300, 2, 2, 64, True), (1, 130, 130, 2, 1, 128, True)]
DQ_MODES = ("atomics", "tma", "pass")


def _inputs(case, dtype):
    batch, sq, sk, hq, hk, d, causal = case
    gen = torch.Generator().manual_seed(0)
    shapes = ((sq, hq), (sk, hk), (sk, hk), (sq, hq))
    q, k, v, do = (torch.randn(batch, s, h, d, generator=gen).to(dtype) for s, h in shapes)
    return q, k, v, do, causal


@functools.lru_cache(maxsize=None)
def _reference(case, dtype):
    """{dtype, float64}: out, lse, dq, dk, dv of the PyTorch reference on the case's rounded inputs
    (computed once per case and dtype: the runs and the checks share it; read only)."""
    q, k, v, do, causal = _inputs(case, dtype)
    results = {}
    for dt in (q.dtype, torch.float64):
        ins = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        out, lse = ops.attention_ref(*ins, causal=causal, return_lse=True)
        results[dt] = [out.detach(), lse.detach(), *torch.autograd.grad(out, ins, do.to(dt))]
    return results


def run_forward(case, dtype, policy, seed=0, mutations=None, tiles=None):
    """-> (out, lse) of the Gluon forward; tiles: BLOCK_M, BLOCK_N, NUM_STAGES (else the launcher's)."""
    q, k, v, _, causal = _inputs(case, dtype)
    out, lse = torch.empty_like(q), torch.empty(q.shape[0], q.shape[2], q.shape[1])
    with simulated_kernels(attention_ws, ["_attention_fwd_ws_kernel"], policy, seed, mutations) as sims:
        attention_ws.attention_fwd_ws(q, k, v, out, lse, causal, q.shape[-1] ** -0.5 * LOG2E, **(tiles or {}))
    assert sims["_attention_fwd_ws_kernel"].launches == 1
    return out, lse


def run_backward(case, dtype, dq_mode, policy, seed=0, mutations=None, tiles=None):
    """-> (dq or None, dk, dv) of the Gluon backward, fed the float64 reference's lse and delta."""
    q, k, v, do, causal = _inputs(case, dtype)
    ref64 = _reference(case, dtype)[torch.float64]
    lse, delta = attention_ws_bwd.row_stats_buffers(ref64[1].float().contiguous())
    delta.copy_((do.double() * ref64[0]).sum(-1).transpose(1, 2))
    dq = None if dq_mode == "pass" else torch.zeros(q.shape)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    scale = q.shape[-1] ** -0.5
    with simulated_kernels(attention_ws_bwd, ["_attention_bwd_ws_kernel"], policy, seed, mutations):
        attention_ws_bwd.attention_bwd_ws(q, k, v, do, lse, delta, dq, dk, dv, causal, scale * LOG2E, scale,
                                          **(tiles or bwd_kernels.WS_BWD_TILES[q.shape[-1]]), dq_tma=dq_mode == "tma")
    return dq, dk, dv


def check_forward(case, dtype, out, lse):
    ref = _reference(case, dtype)
    atol, rtol = TOL[dtype]
    assert_close_to_reference(out, ref[dtype][0], ref[torch.float64][0], atol, rtol, name="out")
    assert_close_to_reference(lse, ref[dtype][1], ref[torch.float64][1], atol, rtol, name="lse")


def check_backward(case, dtype, grads):
    ref = _reference(case, dtype)
    atol, rtol = TOL[dtype]
    for name, got, i in zip(("dq", "dk", "dv"), grads, (2, 3, 4)):
        if got is not None:
            assert_close_to_reference(got, ref[dtype][i], ref[torch.float64][i], atol, rtol, name=name)


# ----------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_simulated_ws_forward_matches_float64(case, dtype, policy):
    out, lse = run_forward(case, dtype, policy)
    check_forward(case, dtype, out, lse)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dq_mode", DQ_MODES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_simulated_ws_backward_matches_float64(case, dq_mode, policy):
    check_backward(case, torch.bfloat16, run_backward(case, torch.bfloat16, dq_mode, policy))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 9))
def test_simulated_ws_kernels_under_more_random_schedules(seed):
    """More seeded interleavings (the eager and lazy schedules are the adversarial ones; random ones
    reach orders between them)."""
    case = (1, 300, 277, 4, 2, 64, True)
    check_forward(case, torch.bfloat16, *run_forward(case, torch.bfloat16, "random", seed=seed))
    for dq_mode in DQ_MODES:
        check_backward(case, torch.bfloat16, run_backward(case, torch.bfloat16, dq_mode, "random", seed=seed))


@pytest.mark.parametrize("dq_mode", DQ_MODES)
def test_simulated_ws_backward_fp16(dq_mode):
    case = CASES[0]
    check_backward(case, torch.float16, run_backward(case, torch.float16, dq_mode, "random", seed=3))


def _swept_ws_tiles():
    """(head dim, kernel, tile, dQ mode of a backward tile) of every Gluon candidate the GPU session's tile
    sweep will time (the mode from the sweep's own variant flags)."""
    sweep = load_attention_sweep()

    def dq_mode(variant):
        flags = sweep.VARIANTS[variant]
        return "tma" if flags.get("DQ_TMA") else "atomics" if flags.get("FUSE_DQ") else "pass"

    return [(hd, kernel, tile, dq_mode(tile[4]) if kernel != "fwd" else None) for hd, kernels in sweep.TILES.items()
            for kernel, tiles in kernels.items() for tile in tiles if len(tile) == 5 and tile[4].startswith("ws")]


@pytest.mark.parametrize("head_dim,kernel,tile,dq_mode", _swept_ws_tiles(), ids=str)
def test_every_swept_ws_tile_runs_in_the_simulator(head_dim, kernel, tile, dq_mode):
    """The sweep's Gluon candidates (ring depths of 2-4 stages, 64- and 128-row tiles, each dQ mode) on
    a causal GQA case long enough to wrap every ring several times."""
    block_m, block_n, warps, stages, _ = tile
    case = (1, 600, 533, 4, 2, head_dim, True)
    if kernel == "fwd":
        tiles = dict(BLOCK_M=block_m, BLOCK_N=block_n, NUM_STAGES=stages)
        check_forward(case, torch.bfloat16, *run_forward(case, torch.bfloat16, "random", seed=5, tiles=tiles))
    else:
        tiles = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
        check_backward(case, torch.bfloat16, run_backward(case, torch.bfloat16, dq_mode, "random", seed=5, tiles=tiles))


@pytest.mark.parametrize("dq_mode", DQ_MODES)
@pytest.mark.parametrize("sq,sk", [(200, 77), (1, 130)])  # (the kernel tests above cover more shapes)
@pytest.mark.parametrize("d", [64, 128])
def test_simulated_ws_attention_through_ops(monkeypatch, d, sq, sk, dq_mode):
    """`npedit.ops.attention` with NPEDIT_ATTN_FWD=ws and NPEDIT_ATTN_BWD=ws picks the Gluon kernels
    (patched in as simulated; the Triton forward, dK/dV and, where the kernel adds dQ, dQ kernels raise
    if launched): out, lse and the three gradients against float64, fp16 and bf16, causal or not."""
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "ws")
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "ws")
    for module, name in ((fwd_kernels, "fwd_config"), (bwd_kernels, "bwd_configs")):
        monkeypatch.setattr(module, name, _as_compiled(getattr(module, name)))
    fits = attention_ws.strides_fit  # the layout rules without the sm_90 check
    monkeypatch.setattr(attention_ws, "ws_fits", lambda q4, k4, v4, interp: all(map(fits, (q4, k4, v4))))
    monkeypatch.setattr(attention_ws_bwd, "ws_bwd_fits",
                        lambda q4, k4, v4, do4, interp: all(map(fits, (q4, k4, v4, do4))))
    if dq_mode != "atomics":  # the other dQ modes through a sweep-style dK/dV override, as on the GPU
        fuse = dict(FUSE_DQ=True, DQ_TMA=True) if dq_mode == "tma" else {}
        monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDE_HEAD_DIM", d)
        monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDES", {"dkdv": dict(bwd_kernels.WS_BWD_TILES[d], WS=True, **fuse)})
    monkeypatch.setattr(fwd_kernels, "_attention_fwd_kernel", NotLaunched("the pointer-load forward kernel"))
    patched = ["_attention_bwd_dkdv_kernel", "_attention_bwd_dkdv_tma_kernel"]
    patched += ["_attention_bwd_dq_kernel", "_attention_bwd_dq_tma_kernel"] if dq_mode != "pass" else []
    for name in patched:
        monkeypatch.setattr(bwd_kernels, name, NotLaunched(name))
    with simulated_kernels(attention_ws, ["_attention_fwd_ws_kernel"], "random", seed=1) as fwd, \
            simulated_kernels(attention_ws_bwd, ["_attention_bwd_ws_kernel"], "random", seed=2) as bwd:
        for dtype, (atol, rtol) in TOL.items():
            for causal in (False, True):
                attention_gqa_cuda_check(ops.attention, ops.attention_ref, sq, sk, d, dtype, causal, atol, rtol,
                                         device="cpu")
    assert fwd["_attention_fwd_ws_kernel"].launches == bwd["_attention_bwd_ws_kernel"].launches == 4


def _as_compiled(config_fn):
    """A tile-config function answering as it would for compiled kernels (the Gluon variants are never
    chosen under the interpreter); the kernels themselves keep seeing the interpreter."""
    def config(*args, **kwargs):
        saved = fwd_kernels.interpreting, bwd_kernels.interpreting
        fwd_kernels.interpreting = bwd_kernels.interpreting = lambda: False  # (tile overrides: forward module)
        try:
            return config_fn(*args, **kwargs)
        finally:
            fwd_kernels.interpreting, bwd_kernels.interpreting = saved
    return config


# ----------------------------------------------------------------------------------------------- the simulator catches


FWD, LOAD = "_ws_softmax_partition", "_ws_load_partition"
BWD, BLOAD = "_wsb_compute_partition", "_wsb_load_partition"
FWD_MUTATIONS = {
    "K waited on the wrong parity": {FWD: [("mbarrier.wait(k_ready.index(nxt), ((j + 1) // NUM_STAGES) & 1)",
                                            "mbarrier.wait(k_ready.index(nxt), (((j + 1) // NUM_STAGES) & 1) ^ 1)")]},
    "V used without its wait": {FWD: [("mbarrier.wait(v_ready.index(stage), (j // NUM_STAGES) & 1)\n", "\n")]},
    "V stage released before P V retired": {FWD: [(
        "                acc = warpgroup_mma_wait(0, deps=(acc, ))\n"
        "                mbarrier.arrive(kv_empty.index(stage), count=1)\n",
        "                mbarrier.arrive(kv_empty.index(stage), count=1)\n"
        "                acc = warpgroup_mma_wait(0, deps=(acc, ))\n")]},
    "S read while in flight": {FWD: [("s = warpgroup_mma_wait(1, deps=(s, ))",
                                      "s = warpgroup_mma_wait(1, deps=(s, acc))[0]")]},
    "V bytes not expected": {LOAD: [("mbarrier.expect(v_ready.index(stage), desc_v.block_type.nbytes)\n", "\n")]},
    "producer ignores the empty barrier": {LOAD: [("mbarrier.wait(kv_empty.index(stage), phase ^ 1)", "pass")]},
}
BWD_MUTATIONS = {
    "dO used without its wait": ("atomics", {BWD: [("            mbarrier.wait(do_ready.index(stage), phase)\n", "")]}),
    "K, V used without their wait": ("atomics", {BWD: [("        mbarrier.wait(kv_bar, 0)\n", "")]}),
    "lse bytes not expected": ("atomics", {BLOAD: [("desc_q.block_type.nbytes + desc_lse.block_type.nbytes",
                                                    "desc_q.block_type.nbytes")]}),
    "Q / dO stage released before the matmuls retired": ("pass", {BWD: [(
        "                dv, dk = warpgroup_mma_wait(0, deps=(dv, dk))\n"
        "                mbarrier.arrive(qdo_empty.index(stage), count=1)\n",
        "                mbarrier.arrive(qdo_empty.index(stage), count=1)\n"
        "                dv, dk = warpgroup_mma_wait(0, deps=(dv, dk))\n")]}),
    "dQ tile overwritten before its reduction read it": ("tma", {BWD: [(
        "                    tma.store_wait(0)\n                    dq_smem", "                    dq_smem")]}),
    "program ends with a reduction in flight": ("tma", {BWD: [("            tma.store_wait(0)  # the last",
                                                               "            pass  # the last")]}),
}


def _caught(run, check) -> bool:
    try:
        result = run()
    except (SimError, Deadlock):
        return True
    try:
        check(result)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("name", list(FWD_MUTATIONS))
def test_simulator_catches_a_broken_forward(name):
    """Each mutation fails the forward under the eager or the lazy policy (a stage refilled early
    shows under eager, data read before it landed under lazy); the unmutated kernel passes both."""
    case, dtype = (1, 300, 300, 1, 1, 64, False), torch.bfloat16
    caught = [_caught(lambda: run_forward(case, dtype, policy, mutations=FWD_MUTATIONS[name]),
                      lambda res: check_forward(case, dtype, *res)) for policy in ("eager", "lazy")]
    assert any(caught), f"{name}: not caught under eager or lazy"
    for policy in ("eager", "lazy"):
        check_forward(case, dtype, *run_forward(case, dtype, policy))


@pytest.mark.parametrize("name", list(BWD_MUTATIONS))
def test_simulator_catches_a_broken_backward(name):
    dq_mode, mutations = BWD_MUTATIONS[name]
    case, dtype = (1, 300, 200, 4, 2, 64, True), torch.bfloat16
    caught = [_caught(lambda: run_backward(case, dtype, dq_mode, policy, mutations=mutations),
                      lambda res: check_backward(case, dtype, res)) for policy in ("eager", "lazy")]
    assert any(caught), f"{name}: not caught under eager or lazy"
    for policy in ("eager", "lazy"):
        check_backward(case, dtype, run_backward(case, dtype, dq_mode, policy))


def test_simulator_reports_a_deadlock_with_the_barriers_state():
    with pytest.raises(Deadlock, match=r"v_ready\[0\]: 0 phases completed; current phase needs 1 of 1 arrivals"):
        run_forward(CASES[0], torch.bfloat16, "lazy", mutations=FWD_MUTATIONS["V bytes not expected"])


def test_simulator_checks_tma_descriptor_rules():
    from npedit.ops.triton.gluon_sim import SimDescriptor
    t = torch.zeros(2, 40, 3 * 64, dtype=torch.bfloat16)
    SimDescriptor(t, [1, 64, 64])
    with pytest.raises(SimError, match="not multiples of 16 bytes"):
        SimDescriptor(torch.zeros(2, 37, 3, dtype=torch.float32)[..., :1], [1, 16, 1])
    with pytest.raises(SimError, match="outside 1..256"):
        SimDescriptor(t, [1, 512, 64])
    with pytest.raises(SimError, match="inner dimension"):
        SimDescriptor(t, [1, 64, 4])
