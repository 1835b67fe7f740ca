"""Validate, then time, npedit's Triton attention against PyTorch SDPA backends (GPU machine).

    python kernels/attention/validate_and_time.py --out results/attention.json [--quick]

0. Tiles: `--sweep-out tiles.json [--head_dim 64|128|256] [--causal]` times forward, dK/dV and dQ
   candidates (`TILES`, with the TMA forward, the fused backward and the TMA backward among them) at
   N = 4096, bf16, hd128 and non-causal unless told, writes the fastest of each and exits (run it in
   its own process: a tile that breaks the CUDA context then costs nothing else). Before timing, each
   candidate runs once in a pool of `--warm-workers` spawned processes, so their kernels compile side
   by side into Triton's cache instead of one after another on the device budget; a candidate still
   running after `--warm-s` is reported hung and not timed. `--tiles tiles.json` uses the fastest,
   after validating them (step 1) on every case; if any check fails the shipped tiles are used instead.
1. Validate: ours vs `attention_ref` in float64 on odd shapes (N = 1000 and 777, GQA, causal and not),
   outputs and all three gradients, with the tests' rule (error <= 2x the reference-in-bf16 error +
   atol). Timing only runs when validation passes (a fast wrong kernel is not a result).
2. Time forward and forward+backward with `triton.testing.do_bench` (median ms) for
   bf16, head_dim 128, 16 heads, B·N = 16k tokens, N in 1k..16k, causal and not; baselines are SDPA
   with the flash, cuDNN and memory-efficient backends (each skipped where unavailable).
   TFLOP/s: forward 4·B·H·N²·D (half when causal), backward 2.5x forward (PEERS.md convention);
   backward time = (fwd+bwd) - fwd.
Writes one JSON with the device, versions, validation errors and one row per (impl, N, causal).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("TRITON_INTERPRET", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from npedit.ops.attention import _impl, attention, attention_ref  # noqa: E402
from npedit.ops.testing import max_err  # noqa: E402
from npedit.ops.triton import attention as attention_kernels  # noqa: E402
from npedit.ops.triton.attention import TILE_OVERRIDES  # noqa: E402
from npedit.ops.triton.attention_bwd import WS_BWD_TILES  # noqa: E402

# (BLOCK_M, BLOCK_N, num_warps, num_stages[, variant]); the first of each list is the shipped default at
# that head dim. Variants (kernels/NOTES.md v5; at hd128 all compile for sm_90 without spills, or
# nearly): "tma" runs the tensor-descriptor forward, "tma-ws" the same with Triton's automatic warp
# specialisation of its key loop, "ws" the hand-written warp-specialised Gluon kernel (attention_ws.py:
# num_warps must be 8, num_stages is the depth of its K/V ring); a dK/dV tile marked "fused" runs the
# fused backward (dQ by atomics in the dK/dV pass, no dQ launch), so its fwd+bwd time compares
# directly with the split tiles'; a dK/dV or dQ tile marked "tma" runs that pass's tensor-descriptor
# kernel (NOTES.md v7); a dK/dV tile marked "ws-fused" runs the warp-specialised Gluon backward
# (attention_ws_bwd.py, BLOCK_N = 16 x num_warps, num_stages the depth of its Q / dO ring) with dQ by
# atomics, "ws-split" the same kernel with dQ left to the dQ pass (NOTES.md v8), "ws-dqtma" the same
# kernel with dQ added by one TMA reduction per step (NOTES.md v9; its fp32 dQ tile takes 32 KB of
# shared memory at hd128, so 3 stages do not fit there). Every candidate's output (forward) or
# gradients (backward) are checked before it is timed.
VARIANTS = {"tma": {"TMA": True}, "tma-ws": {"TMA": True, "WARP_SPECIALIZE": True}, "ws": {"WS": True},
            "fused": {"FUSE_DQ": True}, "ws-fused": {"WS": True, "FUSE_DQ": True}, "ws-split": {"WS": True},
            "ws-dqtma": {"WS": True, "FUSE_DQ": True, "DQ_TMA": True}}
# At hd128 the pointer-kernel tiles that v2 timed at 1.4-1.9x the best (NOTES.md v2: fwd (128, 64, 4, 3),
# (64, 128, 4, 3); dK/dV (16, 64, 8, 3), (32, 64, 8, 3), (32, 128, 4, 3); dQ (64, 32, 8, 3)) are no
# longer swept, to leave the device budget to the candidates never timed.
TILES = {  # head dim -> {kernel: candidates}
    128: {"fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 32, 4, 4),
                  (64, 64, 4, 3, "tma"), (128, 64, 8, 3, "tma"), (128, 128, 8, 2, "tma"), (128, 64, 8, 3, "tma-ws"),
                  (128, 128, 8, 2, "ws"), (128, 64, 8, 3, "ws"), (128, 64, 8, 4, "ws")],
          "dkdv": [(32, 64, 4, 3), (32, 128, 8, 2), (64, 64, 8, 2), (64, 128, 8, 2), (16, 128, 8, 3),
                   (32, 64, 8, 3, "fused"), (64, 64, 8, 2, "fused"), (64, 64, 8, 3, "fused"), (32, 64, 4, 3, "fused"),
                   (32, 64, 4, 3, "tma"), (32, 64, 8, 3, "tma"), (64, 64, 8, 2, "tma"),
                   (64, 128, 8, 2, "ws-fused"), (64, 128, 8, 3, "ws-fused"), (64, 128, 8, 2, "ws-split"),
                   (64, 128, 8, 3, "ws-split"), (64, 128, 8, 2, "ws-dqtma")],
          "dq": [(64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 8, 3), (128, 64, 8, 2), (128, 32, 4, 3),
                 (64, 32, 4, 3, "tma"), (64, 64, 4, 3, "tma"), (128, 64, 8, 2, "tma")]},
    64: {"fwd": [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 4),
                 (128, 64, 4, 3, "tma"), (128, 128, 8, 2, "tma"), (128, 128, 8, 2, "ws"), (128, 128, 8, 3, "ws")],
         "dkdv": [(32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 3),
                  (32, 128, 8, 2, "fused"), (64, 128, 8, 2, "fused"), (32, 64, 4, 3, "fused"),
                  (32, 128, 8, 2, "tma"), (64, 128, 8, 2, "tma"),
                  (64, 128, 8, 2, "ws-fused"), (64, 128, 8, 3, "ws-fused"), (64, 128, 8, 2, "ws-split"),
                  (128, 128, 8, 2, "ws-split"), (64, 128, 8, 2, "ws-dqtma"), (64, 128, 8, 3, "ws-dqtma")],
         "dq": [(128, 32, 8, 2), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3),
                (128, 32, 8, 2, "tma"), (128, 64, 8, 2, "tma")]},
    256: {"fwd": [(64, 32, 8, 2), (128, 32, 8, 2), (64, 32, 8, 2, "tma"), (64, 64, 8, 2, "tma"),
                  (128, 32, 8, 2, "tma")],
          "dkdv": [(16, 32, 8, 1), (32, 32, 8, 2), (16, 32, 4, 2), (16, 32, 8, 1, "fused"), (32, 32, 8, 2, "fused")],
          "dq": [(32, 32, 8, 1), (32, 64, 8, 2), (32, 32, 4, 2), (32, 32, 8, 2)]},
}
# (hd64 / hd256 lists: the candidates that spill at most ~100 bytes per thread on sm_90, NOTES.md v5)


def drop_variants(names) -> None:
    """Leave the candidates of these variants out of every TILES list (the shipped tiles stay first)."""
    names = set(names)
    unknown = names - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown tile variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    for lists in TILES.values():
        for kind, tiles in lists.items():
            lists[kind] = [t for t in tiles if len(t) < 5 or t[4] not in names]


def _tile(t: tuple) -> dict:
    return dict(BLOCK_M=t[0], BLOCK_N=t[1], num_warps=t[2], num_stages=t[3], **VARIANTS.get(t[4] if len(t) > 4 else "", {}))


SWEEP_SHAPE = dict(n=4096, heads=16, tokens=16384)  # the sweep's problem: B = tokens / n sequences of n


def _sweep_inputs(head_dim: int) -> tuple[torch.Tensor, ...]:
    """q, k, v (requiring grad) [B, N, H, D] bf16 on the GPU and an upstream gradient like q."""
    n, heads, tokens = SWEEP_SHAPE["n"], SWEEP_SHAPE["heads"], SWEEP_SHAPE["tokens"]
    q, k, v = (torch.randn(max(1, tokens // n), n, heads, head_dim, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn_like(q)


def run_with_deadline(fn, jobs: list, workers: int, deadline_s: float) -> list:
    """fn(job) for every job in `workers` spawned processes -> results in job order; a job unfinished after
    deadline_s (a hung GPU kernel: mbarrier code that never ran can deadlock) gets the string "hung", and
    the pool is terminated, which kills the processes and with them their kernels. fn must be importable
    by a spawned process (a module-level function of an importable module, or of the script run)."""
    results = ["hung"] * len(jobs)
    pool = multiprocessing.get_context("spawn").Pool(max(1, min(workers, len(jobs))))
    try:
        pending = [pool.apply_async(fn, (job, )) for job in jobs]
        end = time.monotonic() + deadline_s
        for i, res in enumerate(pending):
            try:
                results[i] = res.get(timeout=max(0.0, end - time.monotonic()))
            except multiprocessing.TimeoutError:
                pass
    finally:
        pool.terminate()
        pool.join()
    return results


def _compile_candidate(job: tuple) -> dict:
    """One warm-up job of `precompile_sweep`, in a spawned process: (head_dim, causal, kind, tile) runs the
    candidate once on the sweep's inputs, so its kernels (and the other passes' at their defaults) land
    in Triton's on-disk cache, where the sweep's compile of the same kernel finds them."""
    head_dim, causal, kind, tile = job
    attention_kernels.TILE_OVERRIDE_HEAD_DIM = head_dim
    TILE_OVERRIDES.clear()
    TILE_OVERRIDES[kind] = _tile(tile)
    start = time.perf_counter()
    try:
        q, k, v, grad = _sweep_inputs(head_dim)
        out = attention(q, k, v, causal=causal)
        if kind != "fwd":
            torch.autograd.grad(out, (q, k, v), grad)
        torch.cuda.synchronize()
        return dict(kernel=kind, tile=list(tile), s=round(time.perf_counter() - start, 2))
    except Exception as exc:  # noqa: BLE001 - the sweep meets (and records) the same error itself
        return dict(kernel=kind, tile=list(tile), error=f"{type(exc).__name__}: {str(exc)[:120]}")


def precompile_sweep(head_dim: int, causal: bool, workers: int, deadline_s: float) -> list[dict]:
    """Compile every candidate of TILES[head_dim] in parallel before the sweep times them one by one (the
    GPU machine's CPU cores compile side by side what the sweep would compile in turn, on the device
    budget) -> one row per candidate: seconds, an error, or hung (the sweep then skips it)."""
    jobs = [(head_dim, causal, kind, tile) for kind, tiles in TILES[head_dim].items() for tile in tiles]
    results = run_with_deadline(_compile_candidate, jobs, workers, deadline_s)
    return [res if res != "hung" else dict(kernel=job[2], tile=list(job[3]), hung=True)
            for job, res in zip(jobs, results)]


def sweep_tiles(head_dim: int = 128, causal: bool = False, warm_workers: int = 0, warm_s: float = 120.0) -> dict:
    """Median ms of each candidate tile of TILES[head_dim] (forward alone; backward = fwd+bwd - fwd with
    the other backward kernel at its current choice; a "fused" dK/dV tile has no dQ launch, so its time
    is the whole backward), non-causal (DiT) or causal (the VLM's language model), on SWEEP_SHAPE.
    warm_workers > 0: `precompile_sweep` first, and candidates that hung there are not run.
    -> {"head_dim": .., "causal": .., "rows": [...], "best": {"fwd": .., "dkdv": .., "dq": ..}}."""
    from triton.testing import do_bench
    warm = precompile_sweep(head_dim, causal, warm_workers, warm_s) if warm_workers > 0 else []
    hung = {(row["kernel"], tuple(row["tile"])) for row in warm if row.get("hung")}
    attention_kernels.TILE_OVERRIDE_HEAD_DIM = head_dim
    candidates = TILES[head_dim]
    q, k, v, grad = _sweep_inputs(head_dim)
    rows, best = [], {}

    def fwd():
        return attention(q, k, v, causal=causal)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), (q, k, v), grad)

    # truth in fp32 math (output and gradients) and the shipped tiles' errors against it
    exact = [t.detach().float().requires_grad_() for t in (q, k, v)]
    truth = attention_ref(*exact, causal=causal)
    truth_grads = torch.autograd.grad(truth, exact, grad.float())
    truth = truth.detach()
    del exact
    TILE_OVERRIDES.clear()
    with torch.no_grad():
        shipped_err = max_err(fwd(), truth)
    shipped_grad_errs = [max_err(g, t) for g, t in zip(fwd_bwd(), truth_grads)]

    def check_gradients():  # a fast wrong backward must not win either
        for name, g, t, shipped in zip(("dq", "dk", "dv"), fwd_bwd(), truth_grads, shipped_grad_errs):
            err = max_err(g, t)
            if not err <= 2 * shipped + 1e-2 * float(t.abs().max()):
                raise ValueError(f"{name} error {err:.3g} vs the shipped tiles' {shipped:.3g}")

    for kind, tiles in candidates.items():
        if kind == "dq" and TILE_OVERRIDES["dkdv"].get("FUSE_DQ"):
            best[kind] = tiles[0]  # a fused backward won: it launches no dQ pass to tune
            continue
        timed = []
        for tile in tiles:
            if (kind, tuple(tile)) in hung:
                rows.append(dict(kernel=kind, tile=list(tile), error=f"hung in the warm-up (> {warm_s:.0f} s)"))
                print(rows[-1], flush=True)
                continue
            TILE_OVERRIDES[kind] = _tile(tile)
            try:
                if kind == "fwd":  # a fast wrong forward must not win (nor then fail every swept tile)
                    with torch.no_grad():
                        err = max_err(fwd(), truth)
                    if not err <= 2 * shipped_err + 1e-3:
                        raise ValueError(f"output error {err:.3g} vs the shipped tile's {shipped_err:.3g}")
                else:
                    check_gradients()
                fwd_bwd()
                torch.cuda.synchronize()
                ms = do_bench(fwd, warmup=10, rep=40) if kind == "fwd" else do_bench(fwd_bwd, warmup=10, rep=40)
                timed.append((ms, tile))
                rows.append(dict(kernel=kind, tile=list(tile), ms=ms))
            except Exception as exc:  # noqa: BLE001 - a tile that does not compile/fit is recorded and skipped
                rows.append(dict(kernel=kind, tile=list(tile), error=f"{type(exc).__name__}: {str(exc)[:120]}"))
            print(rows[-1], flush=True)
        best[kind] = min(timed)[1] if timed else tiles[0]
        TILE_OVERRIDES[kind] = _tile(best[kind])
    TILE_OVERRIDES.clear()
    return {"head_dim": head_dim, "causal": causal, "rows": rows, "best": {k: list(v) for k, v in best.items()},
            "defaults": {k: list(v[0]) for k, v in candidates.items()}, "warm_up": warm}


VALIDATION_CASES = [  # (B, Sq, Sk, Hq, Hk, D, causal)
    (2, 1000, 1000, 16, 4, 128, False), (2, 1000, 1000, 16, 4, 128, True), (1, 777, 1001, 8, 8, 64, True),
    (1, 1001, 777, 8, 1, 96, True), (1, 1000, 1000, 4, 4, 256, False)]


def validate(atol: float = 4e-3, rtol: float = 1e-2, head_dims=(64, 96, 128, 256)) -> list[dict]:
    """Ours vs float64 reference on VALIDATION_CASES of these head dims; returns one row per
    (case, tensor) with errors and pass flags."""
    rows = []
    for b, sq, sk, hq, hk, d, causal in (case for case in VALIDATION_CASES if case[5] in head_dims):
        torch.manual_seed(0)
        q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16)
        do = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16)
        results = {}
        for name, fn, dtype in (("ours", attention, torch.bfloat16), ("ref_bf16", attention_ref, torch.bfloat16),
                                ("ref64", attention_ref, torch.float64)):
            ins = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
            out = fn(*ins, causal=causal)
            grads = torch.autograd.grad(out, ins, do.to(dtype))
            results[name] = [out.detach(), *grads]
        for i, tensor in enumerate(("out", "dq", "dk", "dv")):
            err = max_err(results["ours"][i], results["ref64"][i])
            ref_err = max_err(results["ref_bf16"][i], results["ref64"][i])
            scale = float(results["ref64"][i].abs().max())
            bound = 2 * ref_err + atol + rtol * scale
            rows.append(dict(case=f"B{b} Sq{sq} Sk{sk} Hq{hq} Hk{hk} D{d} {'causal' if causal else 'full'}",
                             tensor=tensor, err=err, ref_bf16_err=ref_err, bound=bound, ok=err <= bound))
            print(f"{'ok ' if err <= bound else 'BAD'} {rows[-1]['case']:40s} {tensor:3s} err {err:.2e} "
                  f"ref-bf16 {ref_err:.2e} bound {bound:.2e}", flush=True)
    return rows


# the Gluon kernels (never run on a GPU before, only in the CPU simulator; a wrong mbarrier protocol
# hangs rather than fails):
# each alone, the other kernels at their defaults. name -> (environment, dK/dV tile override at hd128)
SMOKE = {"ws-fwd": ({"NPEDIT_ATTN_FWD": "ws"}, None),
         "ws-bwd": ({"NPEDIT_ATTN_BWD": "ws"}, None),
         "ws-bwd-dkdv": ({}, dict(WS_BWD_TILES[128], WS=True)),  # dQ by the Triton dQ pass
         "ws-bwd-dqtma": ({}, dict(WS_BWD_TILES[128], WS=True, FUSE_DQ=True, DQ_TMA=True))}  # dQ by TMA reductions


def smoke_ws(names=tuple(SMOKE)) -> dict:
    """validate() at hd64 / hd128 with each of these SMOKE settings -> {name: rows}."""
    results = {}
    for name in names:
        env, dkdv = SMOKE[name]
        print(f"== {name}", flush=True)
        attention_kernels.TILE_OVERRIDE_HEAD_DIM = 128
        with mock.patch.dict(os.environ, env), mock.patch.dict(TILE_OVERRIDES, {"dkdv": dkdv} if dkdv else {}):
            results[name] = validate(head_dims=(64, 128))
    return results


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, causal):  # q, k, v [B, H, N, D] contiguous (SDPA's native layout)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def _bench(fn, shape: tuple, causal: bool) -> tuple[float, float]:
    """Median ms of forward and of backward (= fwd+bwd - fwd). fn None = npedit ([B, N, H, D] inputs),
    else an SDPA runner ([B, H, N, D] inputs, its native layout)."""
    from triton.testing import do_bench
    b, n, h, d = shape
    layout = (b, n, h, d) if fn is None else (b, h, n, d)
    q, k, v = (torch.randn(layout, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(layout, device="cuda", dtype=torch.bfloat16)
    if fn is None:
        assert _impl(q, k, v, "attention") == "triton"

        def fwd():
            return attention(q, k, v, causal=causal)
    else:
        def fwd():
            return fn(q, k, v, causal)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), (q, k, v), grad)

    fwd_bwd()
    t_fwd = do_bench(fwd, warmup=25, rep=100)
    t_all = do_bench(fwd_bwd, warmup=25, rep=100)
    return t_fwd, max(t_all - t_fwd, 1e-6)


def time_all(seqlens, heads=16, head_dim=128, tokens=16384) -> list[dict]:
    from torch.nn.attention import SDPBackend
    impls = {"npedit_triton": None}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        if hasattr(SDPBackend, name):
            impls[f"sdpa_{name.lower().replace('_attention', '')}"] = _sdpa(getattr(SDPBackend, name))
    rows = []
    for n in seqlens:
        b = max(1, tokens // n)
        for causal in (False, True):
            flops_fwd = 4 * b * heads * n * n * head_dim / (2 if causal else 1)
            for name, fn in impls.items():
                row = dict(impl=name, N=n, B=b, H=heads, D=head_dim, causal=causal)
                try:
                    t_fwd, t_bwd = _bench(fn, (b, n, heads, head_dim), causal)
                    row.update(fwd_ms=t_fwd, bwd_ms=t_bwd, fwd_tflops=flops_fwd / t_fwd / 1e9,
                               bwd_tflops=2.5 * flops_fwd / t_bwd / 1e9)
                except Exception as exc:  # noqa: BLE001 - a backend refusing a shape is recorded, not fatal
                    row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                rows.append(row)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="attention.json")
    parser.add_argument("--quick", action="store_true", help="N in {1k, 4k} only")
    parser.add_argument("--sweep-out", help="sweep tiles, write the fastest to this JSON and exit")
    parser.add_argument("--tiles", help="JSON from --sweep-out: validate these tiles and use them if they pass")
    parser.add_argument("--head_dim", type=int, default=128, choices=sorted(TILES),
                        help="head dim of the tile sweep (--sweep-out; the timing table is hd128)")
    parser.add_argument("--causal", action="store_true",
                        help="sweep causal attention (--sweep-out; the launchers ship one tile per head dim, so a "
                             "causal sweep is a record for NOTES.md, not a --tiles input)")
    parser.add_argument("--smoke", nargs="*", choices=sorted(SMOKE),
                        help="only validate these Gluon kernels (SMOKE; none named: all), write --out and exit "
                             "(1: one failed)")
    parser.add_argument("--warm-workers", type=int, default=min(12, max(0, (os.cpu_count() or 1) - 2)),
                        help="--sweep-out: compile the candidates in this many processes first (0: no warm-up)")
    parser.add_argument("--warm-s", type=float, default=120.0,
                        help="--sweep-out: seconds the warm-up may take; candidates unfinished by then hung "
                             "and are left out")
    parser.add_argument("--skip-variants", default="",
                        help="comma-separated tile variants to leave out of the sweep (e.g. ws,ws-fused,ws-split "
                             "after a failed --smoke)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    import triton
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    if args.smoke is not None:
        report["smoke"] = smoke_ws(args.smoke or tuple(SMOKE))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        failed = [name for name, rows in report["smoke"].items() if not all(r["ok"] for r in rows)]
        print("failed:" if failed else "all passed", *failed)
        return 1 if failed else 0
    drop_variants(filter(None, args.skip_variants.split(",")))
    if args.sweep_out:
        sweep = dict(report, **sweep_tiles(head_dim=args.head_dim, causal=args.causal, warm_workers=args.warm_workers,
                                           warm_s=args.warm_s))
        Path(args.sweep_out).write_text(json.dumps(sweep, indent=1))
        print("fastest tiles:", sweep["best"])
        return 0
    if args.tiles and Path(args.tiles).is_file():
        report["sweep"] = json.loads(Path(args.tiles).read_text())
        attention_kernels.TILE_OVERRIDE_HEAD_DIM = report["sweep"].get("head_dim", 128)
        TILE_OVERRIDES.update({k: _tile(v) for k, v in report["sweep"]["best"].items()})
        print("swept tiles, validating:", TILE_OVERRIDES, flush=True)
        report["validation_swept"] = validate()
        if not all(r["ok"] for r in report["validation_swept"]):
            print("swept tiles fail validation: back to the shipped tiles", flush=True)
            TILE_OVERRIDES.clear()
        report["tiles_used"] = dict(TILE_OVERRIDES)
    report["validation"] = report["validation_swept"] if TILE_OVERRIDES else validate()
    ok = all(r["ok"] for r in report["validation"])
    if ok:
        report["timings"] = time_all([1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384])
    else:
        print("validation failed: not timing")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
