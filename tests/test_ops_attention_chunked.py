"""The memory-efficient "torch" attention (npedit.ops.attention_chunked) against `attention_ref`.

Blocks of 64 query rows, so 300 queries cross four full blocks and a tail; causal with fewer and
with more queries than keys (rows without keys), GQA/MQA, head dim 24, a value head dim that differs,
the lse output and its gradient. fp32 within fp32 tolerance of the reference; fp16/bf16 by the repo's
rule (npedit.ops.testing) against a float64 computation. Memory: only q, k, v, out and lse are saved
for backward, and the forward+backward peak at 2048 tokens is several times below the reference's.
"""
import math

import pytest
import torch

from npedit import ops
from npedit.ops import attention_chunked
from npedit.ops.attention import _impl
from npedit.ops.attention_chunked import attention_chunked as chunked
from npedit.ops.testing import assert_close_to_reference
from npedit.plan.meta_sim import DecomposeCustomOps
from npedit.plan.tracker import MemoryTracker

BLOCK = 64

# (batch, seqlen_q, seqlen_k, q heads, kv heads, head_dim, causal)
CASES = [
    pytest.param(1, 300, 300, 2, 2, 24, False, id="300-blocks-and-tail"),
    pytest.param(2, 300, 300, 4, 2, 24, True, id="300-causal-gqa"),
    pytest.param(1, 47, 300, 4, 1, 24, True, id="causal-fewer-queries-mqa"),
    pytest.param(2, 300, 47, 2, 2, 24, True, id="causal-queries-without-keys"),
    pytest.param(1, 300, 47, 6, 2, 24, False, id="more-queries-gqa"),
    pytest.param(2, 1, 300, 4, 1, 24, False, id="one-query"),
    pytest.param(1, 1, 300, 2, 2, 24, True, id="one-query-causal"),
    pytest.param(1, 300, 1, 2, 2, 24, True, id="one-key-causal"),
    pytest.param(1, 47, 47, 2, 1, 24, True, id="47-single-block"),
]


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    """The custom ops take the "torch" impl (CPU tensors, backend unforced) with 64-row blocks."""
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    monkeypatch.setattr(attention_chunked, "BLOCK", BLOCK)


def _inputs(b, sq, sk, hq, hk, d, dtype, dv=None):
    g = torch.Generator().manual_seed(sq * 1000 + sk)
    q = torch.randn(b, sq, hq, d, generator=g).to(dtype)
    k = torch.randn(b, sk, hk, d, generator=g).to(dtype)
    v = torch.randn(b, sk, hk, dv or d, generator=g).to(dtype)
    return [t.requires_grad_() for t in (q, k, v)]


def _run(fn, inputs, grad_out, grad_lse):
    out, lse = fn(*inputs)
    grads = torch.autograd.grad([out, lse], inputs, [grad_out.to(out.dtype), grad_lse])
    return [out.detach(), lse.detach()] + list(grads)


def _ref64(q, k, v, causal, scale):
    """Attention in float64 throughout (attention_ref computes in fp32)."""
    group = q.shape[-2] // k.shape[-2]
    k, v = k.repeat_interleave(group, dim=-2), v.repeat_interleave(group, dim=-2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        keep = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v), lse


def _grads(inputs):
    q, _, v = inputs
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(q.shape[:-1] + v.shape[-1:], generator=g)
    grad_lse = torch.randn(q.shape[0], q.shape[2], q.shape[1], generator=g)
    return grad_out, grad_lse


NAMES = ["out", "lse", "dq", "dk", "dv"]


def _check_rows_without_keys(causal, sq, sk, res):
    if causal and sq > sk:  # queries 0 .. sq - sk - 1 see no key
        n = sq - sk
        out, lse, dq = res[0], res[1], res[2]
        assert (out[:, :n] == 0).all() and torch.isneginf(lse[:, :, :n]).all() and (dq[:, :n] == 0).all()
        assert torch.isfinite(lse[:, :, n:]).all()


@pytest.mark.parametrize("b,sq,sk,hq,hk,d,causal", CASES)
def test_fp32_matches_reference(b, sq, sk, hq, hk, d, causal):
    inputs = _inputs(b, sq, sk, hq, hk, d, torch.float32)
    grad_out, grad_lse = _grads(inputs)
    scale = 1.0 / math.sqrt(d)
    ref = _run(lambda q, k, v: ops.attention_ref(q, k, v, causal=causal, return_lse=True), inputs, grad_out, grad_lse)
    for fn in (lambda q, k, v: ops.attention(q, k, v, causal=causal, return_lse=True),          # custom op
               lambda q, k, v: chunked(q, k, v, causal=causal, return_lse=True, block=BLOCK)):  # autograd.Function
        res = _run(fn, inputs, grad_out, grad_lse)
        for name, a, r in zip(NAMES, res, ref):
            assert a.dtype == r.dtype and a.shape == r.shape, name
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        _check_rows_without_keys(causal, sq, sk, res)
    assert _impl(*inputs, "attention") == "torch"
    # and the float64 truth, for the record of how close fp32 gets
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    truth = _run(lambda q, k, v: _ref64(q, k, v, causal, scale), inputs64, grad_out.double(), grad_lse.double())
    for name, a, r, r64 in zip(NAMES, res, ref, truth):
        assert_close_to_reference(a, r, r64, atol=1e-5, rtol=1e-6, name=name)


@pytest.mark.parametrize("dtype,atol,rtol", [
    pytest.param(torch.float16, 1e-4, 2e-4, id="fp16"),
    pytest.param(torch.bfloat16, 1e-3, 2e-3, id="bf16"),
])
@pytest.mark.parametrize("b,sq,sk,hq,hk,d,causal", CASES[1:4] + CASES[-2:])
def test_half_precision_against_float64(b, sq, sk, hq, hk, d, causal, dtype, atol, rtol):
    inputs = _inputs(b, sq, sk, hq, hk, d, dtype)
    grad_out, grad_lse = _grads(inputs)
    scale = 1.0 / math.sqrt(d)
    res = _run(lambda q, k, v: ops.attention(q, k, v, causal=causal, return_lse=True), inputs, grad_out, grad_lse)
    ref = _run(lambda q, k, v: ops.attention_ref(q, k, v, causal=causal, return_lse=True), inputs, grad_out, grad_lse)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    truth = _run(lambda q, k, v: _ref64(q, k, v, causal, scale), inputs64, grad_out.double(), grad_lse.double())
    for name, a, r, r64 in zip(NAMES, res, ref, truth):
        assert a.dtype == r.dtype, f"{name}: dtype {a.dtype} != reference {r.dtype}"
        assert_close_to_reference(a, r, r64, atol, rtol, name=name)
    _check_rows_without_keys(causal, sq, sk, res)


def test_value_head_dim_may_differ_and_scale():
    inputs = _inputs(1, 130, 90, 4, 2, 24, torch.float32, dv=40)
    grad_out, grad_lse = _grads(inputs)
    fast = _run(lambda q, k, v: ops.attention(q, k, v, causal=True, softmax_scale=0.3, return_lse=True),
                inputs, grad_out, grad_lse)
    ref = _run(lambda q, k, v: ops.attention_ref(q, k, v, causal=True, softmax_scale=0.3, return_lse=True),
               inputs, grad_out, grad_lse)
    for name, a, r in zip(NAMES, fast, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_reference(causal):
    lens_q, lens_k = [5, 130, 1, 70], [7, 100, 9, 70]  # uneven; segment 2 has more queries than keys
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(lens_q), 4, 24, requires_grad=True)
    k = torch.randn(sum(lens_k), 2, 24, requires_grad=True)
    v = torch.randn(sum(lens_k), 2, 24, requires_grad=True)
    args = (cu_q, cu_k, max(lens_q), max(lens_k))
    grad = torch.randn(q.shape)
    outs = []
    for fn in (ops.attention_varlen, ops.attention_varlen_ref):
        out = fn(q, k, v, *args, causal=causal)
        outs.append([out.detach(), *torch.autograd.grad(out, (q, k, v), grad)])
    for a, r in zip(*outs):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_custom_op_passes_opcheck():
    q, k, v = _inputs(1, 150, 100, 2, 1, 16, torch.float32)
    torch.library.opcheck(torch.ops.npedit.attention_fwd.default, (q, k, v, True, 0.25, "torch"))


# ---------------------------------------------------------------------------------------------------
# memory


def _saved_bytes(fn, *inputs) -> int:
    """Bytes autograd packs for backward while fn runs (each storage once)."""
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(seen.values())


@pytest.mark.parametrize("causal", [False, True])
def test_only_q_k_v_out_lse_are_saved(causal):
    """Saved bytes are exactly q + k + v + out + lse, linear in the sequence length."""
    for s in (256, 1024):
        q, k, v = _inputs(1, s, s, 4, 2, 32, torch.float32)
        expected = (q.nbytes + k.nbytes + v.nbytes) + q.nbytes + 4 * 1 * 4 * s  # + out + lse (fp32)
        assert _saved_bytes(lambda q, k, v: ops.attention(q, k, v, causal=causal), q, k, v) == expected
        ref = _saved_bytes(lambda q, k, v: ops.attention_ref(q, k, v, causal=causal), q, k, v)
        assert ref > 4 * s * s * 4  # the reference saves at least one [B, H, Sq, Sk] fp32 matrix
    q, k, v = _inputs(1, 1024, 1024, 4, 2, 32, torch.float16)
    assert _saved_bytes(lambda q, k, v: ops.attention(q, k, v), q, k, v) == 2 * q.nbytes + k.nbytes + v.nbytes + 4 * 4 * 1024


def _peak(fn, inputs) -> int:
    """Peak bytes of storages created during forward + backward (custom ops run op by op)."""
    grad = torch.ones(inputs[0].shape)
    with MemoryTracker() as mem, DecomposeCustomOps():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, grad)
        del out
    return mem.peak


def test_peak_temporaries_at_2048_tokens(monkeypatch):
    """Forward + backward at S = 2048 (2 heads): the reference holds several [H, S, S] fp32 matrices
    (32 MiB each), the blocked path [H, 256, S] ones (4 MiB each). NPEDIT_OPS=ref (the "plain" stack)
    keeps the reference's forward and its unblocked analytic backward."""
    monkeypatch.setattr(attention_chunked, "BLOCK", 256)  # the default
    inputs = _inputs(1, 2048, 2048, 2, 2, 16, torch.float32)
    ours = _peak(lambda q, k, v: ops.attention(q, k, v, causal=True), inputs)
    ref = _peak(lambda q, k, v: ops.attention_ref(q, k, v, causal=True), inputs)
    matrix = 2 * 2048 * 2048 * 4
    assert ref >= 3 * matrix
    assert ours < matrix / 2
    assert ours * 6 < ref, (ours, ref)
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    assert _impl(*inputs, "attention") == "torch"
    assert _peak(lambda q, k, v: ops.attention(q, k, v, causal=True), inputs) >= 3 * matrix
