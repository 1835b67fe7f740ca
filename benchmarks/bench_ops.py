"""npedit's ops against their peers, in one run: attention, VLM answer losses, the csrc ops.

Each case is one pytest-benchmark test (forward, backward, or forward + backward); ratios against
the baseline measured in the same run are computed when the results are written (recorder.py).
CPU shapes are small; Triton paths run on CUDA, or on the CPU only under TRITON_INTERPRET=1 (tiny
shape). Answer-loss memory at 1k tokens x 152k vocabulary is counted on the meta device on a CPU
run (exact bytes, no compute) and measured with the CUDA allocator on a GPU run.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from timing import memory_of, timed

MODES = ("fwd", "bwd", "full")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------------- attention


def _attention_cases(device: str, quick: bool):
    if device == "cuda":
        shapes = [(4, 1024, 16, 128), (1, 4096, 16, 128)] + ([] if quick else [(1, 16384, 16, 128)])
        return [(b, s, h, d, torch.bfloat16) for b, s, h, d in shapes]
    shapes = [(1, 256, 4, 64)] + ([] if quick else [(1, 1024, 4, 64)])
    return [(b, s, h, d, torch.float32) for b, s, h, d in shapes]


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):  # [B, S, H, D] in and out
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return run


def _attention_impls(device: str) -> dict:
    from torch.nn.attention import SDPBackend

    from npedit import ops

    impls = {"npedit": ops.attention, "ref": ops.attention_ref}
    backends = {"sdpa-math": SDPBackend.MATH, "sdpa-flash": SDPBackend.FLASH_ATTENTION}
    if device == "cuda":
        backends.update({"sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION})
    impls.update({name: _sdpa(b) for name, b in backends.items()})
    if device == "cuda" and _has("flash_attn"):
        from flash_attn import flash_attn_func
        impls["flash-attn"] = flash_attn_func
    if device == "cuda" and _has("xformers"):
        import xformers.ops as xops
        impls["xformers"] = xops.memory_efficient_attention
    return impls


ATTENTION_IMPLS = ["npedit", "ref", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flash-attn", "xformers"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
@pytest.mark.parametrize("case", range(3))
def test_attention(benchmark, recorder, device, quick, case, impl, mode):
    cases = _attention_cases(device, quick)
    if case >= len(cases):
        pytest.skip("no such shape on this device")
    impls = _attention_impls(device)
    if impl not in impls:
        pytest.skip(f"{impl} is not available on {device}")
    b, s, h, d, dtype = cases[case]
    if impl == "sdpa-math" and device == "cuda" and s > 4096:
        pytest.skip("the math backend materialises [B, H, S, S]")
    if impl == "ref" and s * s * b * h * 4 > (2 << 30):
        pytest.skip("the reference materialises [B, H, S, S] in fp32")
    fn = impls[impl]
    make = lambda: [torch.randn(b, s, h, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    try:
        fn(*[t.detach()[:, :64] for t in make()])                           # the backend can run this dtype / size
    except RuntimeError as exc:
        pytest.skip(f"{impl}: {exc}".splitlines()[0][:200])
    flops = 4 * b * h * s * s * d * {"fwd": 1.0, "bwd": 2.5, "full": 3.5}[mode]
    grad = torch.randn(b, s, h, d, device=device, dtype=dtype)
    if mode == "fwd":
        q, k, v = [t.detach() for t in make()]
        seconds = timed(benchmark, lambda: fn(q, k, v), device)
    elif mode == "bwd":
        def setup():
            out = fn(*make())
            return (out,)
        seconds = timed(benchmark, lambda out: out.backward(grad), device, setup=setup)
    else:
        ins = make()
        seconds = timed(benchmark, lambda: fn(*ins).backward(grad), device)
    recorder.add("attention", case=f"B{b} S{s} H{h} D{d} {str(dtype)[6:]}", impl=impl, mode=mode,
                 median_ms=seconds * 1e3, tflops=flops / seconds / 1e12,
                 note="TFLOP/s: forward 4*B*H*S^2*D, backward 2.5x; vs_baseline = baseline time / time, baseline "
                      "sdpa-flash (sdpa-math where flash is missing)")


# ---------------------------------------------------------------------------------------------------- answer loss


class AnswerInputs:
    """hidden [Q, T, D] (the LM's last hidden states), answer [Q, D] (their answer positions, as the judge
    selects them), the LM head weight [V, D], Yes/No ids [Q]; hidden and answer are leaves with grad."""

    def __init__(self, q: int, t: int, v: int, d: int, device, dtype):
        self.hidden = torch.randn(q, t, d, device=device, dtype=dtype, requires_grad=True)
        self.answer = torch.randn(q, d, device=device, dtype=dtype, requires_grad=True)
        self.weight = torch.randn(v, d, device=device, dtype=dtype) * 0.02
        self.pos = torch.full((q,), t - 1, dtype=torch.long)
        self.yes = torch.full((q,), 9)
        self.no = torch.full((q,), 11)


def _answer_impls(device: str) -> dict:
    """name -> (loss(inputs) -> scalar, the input it differentiates: "hidden" [Q, T, D] or "answer" [Q, D])."""
    from npedit import ops

    def plain_logits(x: AnswerInputs):
        logits = F.linear(x.hidden, x.weight).float()                            # [Q, T, V]
        rows = torch.arange(x.hidden.shape[0], device=x.hidden.device)
        answer = logits[rows, x.pos.to(rows.device)]
        return -F.logsigmoid(answer[rows, x.yes.to(rows.device)] - answer[rows, x.no.to(rows.device)]).sum()

    def plain_ce(x: AnswerInputs):
        logits = F.linear(x.hidden, x.weight).float()
        labels = torch.full(x.hidden.shape[:2], -100, dtype=torch.long, device=x.hidden.device)
        labels[torch.arange(x.hidden.shape[0]), x.pos] = x.yes.to(labels.device)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")

    def dev(t, x):
        return t.to(x.answer.device)

    impls = {
        "plain-logits": (plain_logits, "hidden"),
        "plain-ce": (plain_ce, "hidden"),
        "npedit-binary": (lambda x: ops.binary_answer_loss(x.answer, x.weight, dev(x.yes, x), dev(x.no, x)).sum(),
                          "answer"),
        "npedit-vocab": (lambda x: ops.vocab_answer_loss(x.answer, x.weight, dev(x.yes, x)).sum(), "answer"),
        "ref-binary": (lambda x: ops.binary_answer_loss_ref(x.answer, x.weight, dev(x.yes, x), dev(x.no, x)).sum(),
                       "answer"),
    }
    if device == "cuda" and _has("liger_kernel"):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(reduction="sum")

        def liger(x: AnswerInputs):
            labels = torch.full(x.hidden.shape[:2], -100, dtype=torch.long, device=x.hidden.device)
            labels[torch.arange(x.hidden.shape[0]), x.pos] = x.yes.to(labels.device)
            return flce(x.weight, x.hidden.flatten(0, 1), labels.flatten())
        impls["liger-flce"] = (liger, "hidden")
    return impls


ANSWER_IMPLS = ["plain-logits", "plain-ce", "liger-flce", "npedit-binary", "npedit-vocab", "ref-binary"]
ANSWER_NOTE = ("memory: bytes the loss keeps for backward (saved) and its highest bytes over forward + backward "
               "above its inputs and their gradient (peak): plain paths take the hidden states [Q, T, D], npedit's "
               "the answer positions [Q, D] (the judge selects them; the LM backward needs a [Q, T, D] gradient "
               "in both cases); memory_vs_plain = plain-logits peak / peak")


def _answer_case(device: str, size: str):
    if size == "time":   # timed shape
        return (4, 1024, 152064, 3584, torch.bfloat16) if device == "cuda" else (2, 256, 32000, 256, torch.float32)
    q, t, v = {"1k-152k": (4, 1024, 152064), "4k-152k": (4, 4096, 152064), "1k-32k": (4, 1024, 32000)}[size]
    return (q, t, v, 3584, torch.bfloat16) if device == "cuda" else (q, t, v, 3584, torch.float32)


def _answer_memory(fn, wrt: str, x: AnswerInputs, device: str) -> tuple[int, int]:
    inp = getattr(x, wrt)
    inp.grad = None
    return memory_of(lambda: fn(x), device, [inp], inp.numel() * inp.element_size())


@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("impl", ANSWER_IMPLS)
def test_answer_loss_time(benchmark, recorder, device, impl, mode):
    impls = _answer_impls(device)
    if impl not in impls:
        pytest.skip(f"{impl} is not available on {device}")
    q, t, v, d, dtype = _answer_case(device, "time")
    x = AnswerInputs(q, t, v, d, device, dtype)
    fn, wrt = impls[impl]
    if mode == "fwd":
        with torch.no_grad():
            seconds = timed(benchmark, lambda: fn(x), device)
    else:
        seconds = timed(benchmark, lambda: fn(x).backward(), device)
    saved, peak = _answer_memory(fn, wrt, x, device)
    recorder.add("answer_loss", case=f"Q{q} T{t} V{v} D{d} {str(dtype)[6:]}", impl=impl, mode=mode,
                 median_ms=seconds * 1e3, saved_mib=saved / 2**20, peak_mib=peak / 2**20, note=ANSWER_NOTE)


@pytest.mark.parametrize("size", ["1k-32k", "1k-152k", "4k-152k"])
@pytest.mark.parametrize("impl", ANSWER_IMPLS)
def test_answer_loss_memory(recorder, device, size, impl):
    """Memory only (deterministic): the target is >= 100x less than full-sequence logits at 1k x 152k."""
    impls = _answer_impls(device)
    if impl not in impls:
        pytest.skip(f"{impl} is not available on {device}")
    where = device if device == "cuda" else "meta"
    q, t, v, d, dtype = _answer_case(device, size)
    if where == "cuda" and size == "4k-152k" and impl.startswith("plain"):
        pytest.skip("plain full-sequence logits at 4k x 152k do not fit next to the other cases")
    fn, wrt = impls[impl]
    saved, peak = _answer_memory(fn, wrt, AnswerInputs(q, t, v, d, where, dtype), where)
    recorder.add("answer_loss", case=f"Q{q} T{t} V{v} D{d} {str(dtype)[6:]}", impl=impl, mode="memory",
                 saved_mib=saved / 2**20, peak_mib=peak / 2**20,
                 note="mode memory: counted on the meta device (exact bytes, nothing computed) on a CPU run, "
                      "with the CUDA allocator on a GPU run")


# ---------------------------------------------------------------------------------------------------- csrc ops


def _csrc_case(op: str, device: str, quick: bool):
    n = 4 if quick else 8
    if op == "vlm_patchify":
        return (n, 3, 448, 448)
    return (n, 16, 64, 64) if device == "cpu" else (n * 4, 16, 128, 128)


def _csrc_call(op: str, impl: str, shape, device):
    from npedit import ops

    fn = getattr(ops, op if impl == "npedit" else f"{op}_ref")
    x = torch.rand(*shape, device=device, requires_grad=True)
    if op == "dmd_loss":
        a, b = torch.randn(*shape, device=device), torch.randn(*shape, device=device)
        return lambda: fn(x, a, b), x, (3, 6)
    if op == "flow_noise":
        noise, t = torch.randn(*shape, device=device), torch.rand(shape[0], device=device)
        return (lambda: sum(o.sum() for o in fn(x, noise, t))), x, (4, 8)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    return (lambda: fn(x, mean, std).sum()), x, (3, 6)


@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("impl", ["npedit", "ref"])
@pytest.mark.parametrize("op", ["dmd_loss", "flow_noise", "vlm_patchify"])
def test_csrc(benchmark, recorder, device, quick, op, impl, mode):
    from npedit.ops import _ext

    shape = _csrc_case(op, device, quick)
    call, x, (fwd_passes, full_passes) = _csrc_call(op, impl, shape, device)
    if mode == "fwd":
        with torch.no_grad():
            seconds = timed(benchmark, call, device)
    else:
        seconds = timed(benchmark, lambda: call().backward(), device)
    moved = x.numel() * x.element_size() * (fwd_passes if mode == "fwd" else full_passes)
    backend = _ext.choose(op, x) if impl == "npedit" else "ref"
    recorder.add("csrc", case=f"{op} {list(shape)}", impl=f"{impl} ({backend})", mode=mode, median_ms=seconds * 1e3,
                 gbps=moved / seconds / 1e9,
                 note="GB/s: the minimum bytes each op must move (reads + writes of its tensors) / time; the "
                      "loss reduction (.sum()) adds to the time of every impl alike; vs_ref = ref time / time")


def test_environment_note(recorder):
    recorder.add("environment", triton_interpret=os.environ.get("TRITON_INTERPRET", "0"),
                 npedit_ops=os.environ.get("NPEDIT_OPS", "auto"), threads=torch.get_num_threads(),
                 note=f"torch threads {torch.get_num_threads()}, float32 matmul precision "
                      f"{torch.get_float32_matmul_precision()}")
