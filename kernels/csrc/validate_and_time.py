"""Validate, then time, the CUDA kernels of npedit._C (csrc/) on a GPU.

Validation: every op and gradient on CUDA against its PyTorch reference (npedit/ops) in fp32, bf16
and fp16 on odd and realistic shapes, and against the extension's own C++ CPU path. Timing: the
fused op against the plain PyTorch sequence (the reference run eagerly, and under torch.compile
unless --no-compile), as time, effective GB/s over the op's minimum bytes, and the fraction of a
device-to-device copy's bandwidth. Exits 1 when validation fails (then nothing is timed).

    NPEDIT_BUILD_CUDA=1 python setup.py build_ext --inplace     # build npedit._C with CUDA
    python kernels/csrc/validate_and_time.py --out kernels/csrc/results.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from npedit.ops import _ext  # noqa: E402
from npedit.ops.flow import DMD_EPS, dmd_loss_ref, flow_noise_ref  # noqa: E402
from npedit.ops.patchify import vlm_patchify_ref  # noqa: E402

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DTYPES = {"fp32": (torch.float32, 1e-6, 1e-5), "bf16": (torch.bfloat16, 1e-2, 1.6e-2),
          "fp16": (torch.float16, 1e-3, 2e-3)}


# ---- the three ops as (fused, reference) pairs of fwd / fwd+bwd closures ---------------------------

def dmd_case(shape, dtype, device="cuda"):
    x0, xr, xf = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    n, s = x0.numel(), x0.element_size()
    return dict(
        inputs=(x0, xr, xf),
        fused=lambda x0, xr, xf: torch.ops.npedit_C.dmd_loss(x0, xr, xf, DMD_EPS)[0],
        ref=dmd_loss_ref, grads=(0,),
        bytes_fwd=3 * n * s, bytes_bwd=3 * n * s)  # fwd reads 3; bwd reads x_real, x_fake, writes grad


def flow_case(shape, dtype, device="cuda"):
    x0, noise = (torch.randn(shape, device=device, dtype=dtype) for _ in range(2))
    t = torch.rand(shape[0], device=device)
    n, s = x0.numel(), x0.element_size()
    return dict(
        inputs=(x0, noise, t), fused=torch.ops.npedit_C.flow_noise, ref=flow_noise_ref, grads=(0, 1),
        bytes_fwd=4 * n * s, bytes_bwd=4 * n * s)  # 2 in, 2 out each way


def patchify_case(shape, dtype, device="cuda"):
    images = torch.rand(shape, device=device, dtype=dtype)
    n, s = images.numel(), images.element_size()
    return dict(
        inputs=(images,),
        fused=lambda im: torch.ops.npedit_C.vlm_patchify(im, CLIP_MEAN, CLIP_STD, 14, 2, 2),
        ref=lambda im: vlm_patchify_ref(im, CLIP_MEAN, CLIP_STD, 14, 2, 2), grads=(0,),
        bytes_fwd=3 * n * s, bytes_bwd=3 * n * s)  # 1 in, 2 (temporal copies) out; reversed in bwd


CASES = {"dmd_loss": dmd_case, "flow_noise": flow_case, "vlm_patchify": patchify_case}
VALIDATE_SHAPES = {
    "dmd_loss": [(1, 47), (3, 5, 7), (4, 16, 64, 64), (2, 3, 333, 257)],
    "flow_noise": [(1, 47), (3, 5, 7), (4, 16, 64, 64), (2, 3, 333, 257)],
    "vlm_patchify": [(1, 3, 28, 28), (2, 3, 56, 84), (4, 3, 448, 448), (1, 3, 1092, 812)],
}
TIME_SHAPES = {  # a training-size shape, and one far beyond L2 for bandwidth
    "dmd_loss": [(4, 16, 128, 128), (16, 16, 512, 512)],
    "flow_noise": [(4, 16, 128, 128), (16, 16, 512, 512)],
    "vlm_patchify": [(4, 3, 448, 448), (32, 3, 1344, 1344)],
}


def dmd_truth(x0, x_real, x_fake):
    """dmd_loss_ref's formula in the inputs' dtype (float64 here), without fp32 casts."""
    with torch.no_grad():
        dims = tuple(range(1, x0.ndim))
        norm = (x0 - x_real).abs().mean(dim=dims, keepdim=True).clamp_min(DMD_EPS)
        target = x0 - (x_fake - x_real) / norm
    return 0.5 * torch.nn.functional.mse_loss(x0, target)


def run(fn, inputs, grads, seed=0):
    """Outputs and gradients (w.r.t. inputs[grads]) of sum(out * w), w drawn from `seed`."""
    leaves = [x.detach().requires_grad_(i in grads) for i, x in enumerate(inputs)]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator(device=outs[0].device).manual_seed(seed)
    obj = sum((o.double() * torch.randn(o.shape, generator=gen, device=o.device).double()).sum() for o in outs)
    g = torch.autograd.grad(obj, [leaves[i] for i in grads])
    return [o.detach() for o in outs] + list(g)


def validate(args) -> bool:
    """STYLE rule: |fused - truth| <= 2 |ref - truth| (+ a 1e-6 relative floor), truth in float64."""
    ok = True
    for op, make in CASES.items():
        for shape in VALIDATE_SHAPES[op]:
            for name, (dtype, _, _) in DTYPES.items():
                case = make(shape, dtype)
                inputs, grads = case["inputs"], case["grads"]
                fused = run(case["fused"], inputs, grads)
                ref = run(case["ref"], inputs, grads)
                cpu = run(case["fused"], [x.cpu() for x in inputs], grads)
                truth = run(dmd_truth if op == "dmd_loss" else case["ref"], [x.double() for x in inputs], grads)
                for k, (a, b, c, t) in enumerate(zip(fused, ref, cpu, truth)):
                    if not a.numel():
                        continue
                    err = (a.double() - t).abs().max().item()
                    ref_err = (b.double() - t).abs().max().item()
                    scale = t.abs().max().item()
                    good = err <= 2 * ref_err + 1e-6 * scale
                    ok &= good
                    print(f"{'ok  ' if good else 'FAIL'} {op:13s} {name} {str(shape):20s} out{k} err {err:.3g} "
                          f"(ref {ref_err:.3g}, |truth| {scale:.3g})  bit-equal to ref {torch.equal(a, b)}, "
                          f"to cpu path {torch.equal(a.cpu(), c)}")
    return ok


def bench_ms(fn, iters: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def copy_gbps(iters: int) -> float:
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), iters)
    return 2 * src.numel() / ms / 1e6


def time_all(args) -> list[dict]:
    copy = copy_gbps(args.iters)
    print(f"\ncopy bandwidth (device to device, 512 MiB): {copy:.0f} GB/s on {torch.cuda.get_device_name()}")
    rows = []
    for op, make in CASES.items():
        for shape in TIME_SHAPES[op]:
            for name in args.dtypes:
                case = make(shape, DTYPES[name][0])
                impls = {"fused": case["fused"], "eager": case["ref"]}
                if args.compile:
                    impls["compiled"] = torch.compile(case["ref"])
                for impl, fn in impls.items():
                    leaves = [x.detach().requires_grad_(i in case["grads"]) for i, x in enumerate(case["inputs"])]

                    def fwd(fn=fn, leaves=leaves):
                        with torch.no_grad():
                            fn(*leaves)

                    def fwd_bwd(fn=fn, leaves=leaves, grads=case["grads"]):
                        out = fn(*leaves)
                        outs = out if isinstance(out, tuple) else (out,)
                        torch.autograd.grad(outs, [leaves[i] for i in grads], [torch.ones_like(o) for o in outs])

                    for mode, f, nbytes in (("fwd", fwd, case["bytes_fwd"]),
                                            ("fwd+bwd", fwd_bwd, case["bytes_fwd"] + case["bytes_bwd"])):
                        ms = bench_ms(f, args.iters)
                        gbps = nbytes / ms / 1e6
                        rows.append(dict(op=op, shape=list(shape), dtype=name, impl=impl, mode=mode, ms=ms,
                                         gbps=gbps, of_copy=gbps / copy, device=torch.cuda.get_device_name()))
                        print(f"{op:13s} {str(shape):22s} {name} {impl:8s} {mode:7s} {ms * 1e3:9.1f} us "
                              f"{gbps:7.0f} GB/s ({100 * gbps / copy:5.1f}% of copy)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile baseline")
    parser.add_argument("--skip-validate", action="store_true")
    parser.add_argument("--out", type=Path, help="write the timings as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: run this on the GPU machine")
        return 2
    if not _ext.has_cuda():
        print(f"npedit._C has no CUDA kernels ({_ext.unavailable_reason() or _ext.build_info()}); build with "
              "NPEDIT_BUILD_CUDA=1 python setup.py build_ext --inplace")
        return 2
    torch.manual_seed(0)
    if not args.skip_validate and not validate(args):
        print("validation FAILED: not timing")
        return 1
    rows = time_all(args)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
