"""Compile every production Triton kernel for a GPU target *without a GPU* and report its resources.

    python kernels/compile_check.py [--arch 90] [--json out.json]

Triton can lower a kernel to PTX and run ptxas (shipped inside the triton wheel) for a chosen target
with no driver present. This catches what the interpreter cannot: type/shape errors of the compiled
path (tl.dot operand dtypes and minimum tile sizes, constexpr branches the tests never took on CPU),
register spills and shared-memory overflows of the block configurations the launchers pick on the
GPU. It does not check numerics or speed: that is `run_device.sh` on a GPU machine.

Signatures are derived from the kernels' argument names (a convention of npedit/ops/triton):
Capitalised names are pointers (except sizes a case lists, like Q, V, D, S); `*scale*` / `eps` are
fp32 scalars, the other names int32 scalars, and the constexprs come from the launchers' own config functions.
Exit status 1 when a kernel fails to compile, spills more than `--max-spill` bytes per thread
(default 256; smaller spills are listed as `warn`: they go to L1-cached local memory), or needs more
shared memory than the target has (227 KiB per block on sm_90).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile for real (must precede the kernels' definition)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from npedit.ops.triton import adaln as adaln_k  # noqa: E402
from npedit.ops.triton import answer_loss as loss_k  # noqa: E402
from npedit.ops.triton import attention as attn_k  # noqa: E402
from npedit.ops.triton import attention_bwd as attn_bwd_k  # noqa: E402
from npedit.ops.triton import attention_ws as attn_ws_k  # noqa: E402
from npedit.ops.triton import attention_ws_bwd as attn_wsb_k  # noqa: E402

from ptx_order import partition_sync  # noqa: E402  (kernels/, this script's folder)

SMEM_LIMIT = {90: 232448, 80: 166912, 100: 232448}
TL_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
FLOAT_SCALARS = ("qk_scale", "sm_scale", "scale", "scale_log2", "eps")
SIZE_SCALARS = "sizes"  # key of `pointers` naming capitalised int32 sizes (Q, V, D, S: named like the math)


def _signature(fn, dtype: str, pointers: dict, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.startswith("desc_") or pointers.get(name, "").startswith("tensordesc"):
            sig[name] = pointers[name]  # a TMA tensor descriptor: the case gives "tensordesc<dtype[block]>"
        elif name[0].isupper() and name not in pointers.get(SIZE_SCALARS, ()):
            sig[name] = "*" + pointers.get(name, dtype)
        elif name in FLOAT_SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_one(fn, dtype: str, pointers: dict, constexprs: dict, num_warps: int, num_stages: int, arch: int) -> dict:
    sig = _signature(fn, dtype, pointers, constexprs)
    source = ASTSource
    if fn.is_gluon():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    src = source(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    res = {"shared": kernel.metadata.shared}
    maxnreg = sorted({int(w) for w in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", kernel.asm["ptx"])})
    if maxnreg:  # warp-specialised: registers per thread of each partition after reallocation
        res["setmaxnreg"] = maxnreg
    ptx = kernel.asm["ptx"]
    res["wgmma"] = ptx.count("wgmma.mma_async")  # Hopper tensor-core instructions issued
    res["global_loads"] = ptx.count("ld.global")  # per-thread loads (TMA loads are cp.async.bulk.tensor)
    res["global_atomics"] = len(re.findall(r"\b(?:atom|red)\.global", ptx))  # per-thread atomic instructions
    res["tma_reductions"] = ptx.count("cp.reduce.async.bulk.tensor")  # TMA reduce-into-global instructions
    res.update(partition_sync(ptx))
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    for line in usage.splitlines():
        if "REG:" in line:
            fields = dict(item.split(":") for item in line.split() if ":" in item)
            res.update(regs=int(fields["REG"]), local=int(fields["LOCAL"]) + int(fields.get("STACK", 0)))
    return res


def cases():
    """(label, kernel, dtype, pointer dtypes, constexprs, num_warps, num_stages) per launcher config."""
    ptr_f32 = {"Lse": "fp32", "Delta": "fp32", "DQAcc": "fp32", "CuQ": "i32", "CuK": "i32"}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        dt = TL_DTYPE[dtype]
        for hd in (64, 128, 256):
            # the launchers' shipped tiles (not the NPEDIT_ATTN_* variant the environment may pick):
            # every variant is compiled below under its own label
            cfg = attn_k._default_fwd_tiles(hd, dtype)
            warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
            kv_cfg, q_cfg = attn_bwd_k._default_bwd_configs(hd, dtype)
            fused_cfg = dict(attn_bwd_k._default_bwd_configs(hd, dtype, fused=True)[0], FUSE_DQ=True)
            for causal in (False, True):
                for varlen in (False, True):
                    common = dict(CAUSAL=causal, IS_VARLEN=varlen, UPCAST=False, PRECISION=attn_k.dot_precision(dtype),
                                  BLOCK_D=hd)
                    tag = f"{dt} hd{hd} {'causal' if causal else 'full'}{' varlen' if varlen else ''}"
                    yield (f"attention fwd {tag}", attn_k._attention_fwd_kernel, dt, ptr_f32, {**common, **cfg},
                           warps, stages)
                    if not varlen and dtype != torch.float32:  # the TMA forward (batch layout only)
                        rows = {"desc_q": cfg["BLOCK_M"], "desc_o": cfg["BLOCK_M"], "desc_k": cfg["BLOCK_N"],
                                "desc_v": cfg["BLOCK_N"]}
                        descs = {name: f"tensordesc<{dt}[1,{r},1,{hd}]>" for name, r in rows.items()}
                        tma = {k: v for k, v in common.items() if k != "IS_VARLEN"}
                        yield (f"attention fwd tma {tag}", attn_k._attention_fwd_tma_kernel, dt, {**ptr_f32, **descs},
                               {**tma, **cfg, "WARP_SPECIALIZE": False}, warps, stages)
                    if not varlen and dtype != torch.float32 and hd in attn_k.WS_TILES:  # the Gluon forward
                        ws = attn_k.WS_TILES[hd]
                        descs = {name: attn_ws_k.descriptor_signature(dtype, rows, hd) for name, rows in
                                 (("desc_q", ws["BLOCK_M"]), ("desc_k", ws["BLOCK_N"]), ("desc_v", ws["BLOCK_N"]))}
                        yield (f"attention fwd ws {tag}", attn_ws_k._attention_fwd_ws_kernel, dt, {**ptr_f32, **descs},
                               dict(CAUSAL=causal, NUM_STAGES=ws["num_stages"], num_warps=ws["num_warps"]),
                               ws["num_warps"], 1)
                    if not varlen and dtype != torch.float32 and hd in attn_bwd_k.WS_BWD_TILES:  # the Gluon backward
                        wsb = attn_bwd_k.WS_BWD_TILES[hd]
                        descs = {name: attn_ws_k.descriptor_signature(dtype, wsb[block], hd) for name, block in
                                 (("desc_q", "BLOCK_M"), ("desc_do", "BLOCK_M"), ("desc_k", "BLOCK_N"),
                                  ("desc_v", "BLOCK_N"))}
                        descs.update({name: attn_ws_k.descriptor_signature(torch.float32, 1, wsb["BLOCK_M"])
                                      for name in ("desc_lse", "desc_delta")})
                        dq_desc = attn_ws_k.descriptor_signature(torch.float32, wsb["BLOCK_M"], hd)
                        # dQ by atomics, by TMA reductions, or by the dQ pass
                        for fuse_dq, dq_tma, name in ((True, False, "ws"), (True, True, "ws-dqtma"),
                                                      (False, False, "ws-dkdv")):
                            yield (f"attention bwd {name} {tag}", attn_wsb_k._attention_bwd_ws_kernel, dt,
                                   {**ptr_f32, "DQ": dq_desc if dq_tma else "fp32", **descs},
                                   dict(CAUSAL=causal, FUSE_DQ=fuse_dq, DQ_TMA=dq_tma, NUM_STAGES=wsb["num_stages"],
                                        num_warps=wsb["num_warps"]), wsb["num_warps"], 1)
                    if not varlen and dtype != torch.float32 and hd <= 128:  # the TMA split backward (its scope)
                        tma = {k: v for k, v in common.items() if k != "IS_VARLEN"}
                        for name, kern, c, rows in (
                                ("dkdv", attn_bwd_k._attention_bwd_dkdv_tma_kernel, kv_cfg,
                                 {"desc_q": "M", "desc_do": "M", "desc_k": "N", "desc_v": "N", "desc_dk": "N",
                                  "desc_dv": "N"}),
                                ("dq", attn_bwd_k._attention_bwd_dq_tma_kernel, q_cfg,
                                 {"desc_q": "M", "desc_do": "M", "desc_dq": "M", "desc_k": "N", "desc_v": "N"})):
                            blocks = {k: v for k, v in c.items() if k.startswith("BLOCK")}
                            descs = {d: f"tensordesc<{dt}[1,{blocks['BLOCK_' + r]},1,{hd}]>" for d, r in rows.items()}
                            yield (f"attention bwd {name} tma {tag}", kern, dt, {**ptr_f32, **descs}, {**tma, **blocks},
                                   c["num_warps"], c["num_stages"])
                    for name, kern, c in (("dkdv", attn_bwd_k._attention_bwd_dkdv_kernel, dict(kv_cfg, FUSE_DQ=False)),
                                          ("dq", attn_bwd_k._attention_bwd_dq_kernel, q_cfg),
                                          ("fused dkdv+dq", attn_bwd_k._attention_bwd_dkdv_kernel, fused_cfg)):
                        c = dict(c)
                        w, s = c.pop("num_warps"), c.pop("num_stages")
                        yield f"attention bwd {name} {tag}", kern, dt, ptr_f32, {**common, **c}, w, s
            yield (f"attention bwd preprocess {dt} hd{hd}", attn_bwd_k._attention_bwd_preprocess_kernel, dt,
                   ptr_f32, dict(IS_VARLEN=False, BLOCK_M=attn_bwd_k.preprocess_block_m(hd), BLOCK_D=hd), 4, 1)
        # answer losses (Q = 8 and 64 questions, vocabulary 152k)
        ids = {"Pos": "i64", "Neg": "i64", "Target": "i64", "Loss": "fp32", "Margin": "fp32", "Coef": "fp32",
               "MaxPart": "fp32", "SumPart": "fp32", "TargetLogit": "fp32", "Lse": "fp32", "Grad": "fp32",
               "DH": "fp32", "DW": "fp32", SIZE_SCALARS: ("Q", "V", "D")}
        yield (f"binary_answer_loss fwd {dt}", loss_k._binary_answer_loss_fwd_kernel, dt, ids, dict(BLOCK_D=1024), 4, 1)
        yield (f"binary_answer_loss bwd {dt}", loss_k._binary_answer_loss_bwd_kernel, dt, {**ids, "DH": dt},
               dict(BLOCK_D=1024), 4, 1)
        for num_q in (8, 64):
            fp32 = dtype == torch.float32
            num = dict(UPCAST=False, PRECISION="ieee" if fp32 else "tf32")
            for backward, wgrad in ((False, False), (True, False), (True, True)):
                cfg = loss_k._vocab_config(num_q, 152064, torch.device("cpu"), fp32=fp32, backward=backward,
                                           weight_grad=wgrad)
                meta = {k: cfg[k] for k in ("BLOCK_Q", "BLOCK_V", "BLOCK_K")}
                if backward:
                    kern, extra = loss_k._vocab_answer_loss_bwd_kernel, dict(WEIGHT_GRAD=wgrad, SPLIT_DS=not fp32)
                else:
                    kern, extra = loss_k._vocab_answer_loss_fwd_kernel, {}
                label = f"vocab_answer_loss {'bwd' if backward else 'fwd'} {dt} Q{num_q}{' +dW' if wgrad else ''}"
                yield label, kern, dt, ids, {**meta, **num, **extra}, cfg["num_warps"], cfg["num_stages"]
        # adaLN (DiT widths)
        for dim in (1152, 3072, 4096):
            block_r, block_d, warps = adaln_k._tiles(dim)
            stats = {"Mean": "fp32", "Rstd": "fp32", SIZE_SCALARS: ("S", "D")}
            for norm in ("layer", "rms"):
                yield (f"adaln fwd {dt} D{dim} {norm}", adaln_k._adaln_fwd_kernel, dt, stats,
                       dict(IS_RMS=norm == "rms", BLOCK_R=block_r, BLOCK_D=block_d), warps, 1)
                for per_sample in (True, False):
                    grads = {**stats, "DShift": "fp32" if per_sample else dt, "DScale": "fp32" if per_sample else dt}
                    yield (f"adaln bwd {dt} D{dim} {norm} {'per-sample' if per_sample else 'per-token'}",
                           adaln_k._adaln_bwd_kernel, dt, grads,
                           dict(IS_RMS=norm == "rms", SHIFT_PER_SAMPLE=per_sample, SCALE_PER_SAMPLE=per_sample,
                                BLOCK_R=block_r, BLOCK_D=block_d), warps, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--only", default="", help="substring filter on the case label (comma-separated: any of them)")
    parser.add_argument("--max-spill", type=int, default=256, help="spill bytes per thread that fail the check")
    args = parser.parse_args()
    results, failed = [], 0
    wanted = args.only.split(",")
    for label, fn, dt, ptrs, consts, warps, stages in cases():
        if not any(part in label for part in wanted):
            continue
        row = {"case": label, "num_warps": warps, "num_stages": stages,
               **{k: v for k, v in consts.items() if k.startswith("BLOCK")}}
        try:
            row.update(compile_one(fn, dt, ptrs, consts, warps, stages, args.arch))
            bad = row.get("local", 0) > args.max_spill or row["shared"] > SMEM_LIMIT.get(args.arch, 232448)
            row["ok"] = not bad
            row["spills"] = row.get("local", 0) > 0
        except Exception as exc:  # noqa: BLE001 - report every failure, then exit non-zero
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        failed += not row["ok"]
        results.append(row)
        tag = "BAD " if not row["ok"] else ("warn" if row.get("spills") else "ok  ")
        print(f"{tag} {label:58s} regs {row.get('regs', '-'):>4} "
              f"spill {row.get('local', '-'):>4} smem {row.get('shared', '-'):>6}  {row.get('error', '')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "triton": triton.__version__, "results": results},
                                              indent=1))
    spilling = sum(bool(r.get("spills")) for r in results)
    print(f"{len(results) - failed}/{len(results)} kernel configs compiled for sm_{args.arch} within budget "
          f"({spilling} with small spills, max-spill {args.max_spill} B)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
