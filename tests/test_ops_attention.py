"""Fused attention (Triton, FlashAttention-2 style) against the PyTorch reference.

CPU runs go through the Triton interpreter (TRITON_INTERPRET=1 from conftest, NPEDIT_OPS=triton), so
shapes are tiny; the interpreter's tiles are 16x16, so 47 tokens cross three tiles with a tail and
head_dim 40 is padded to 64. Tolerance rule (npedit.ops.testing): error vs the float64 reference
<= 2x the reference-in-dtype error + atol (+ rtol x max|ref|), with (dtype, atol, rtol) declared below.
"""
import pytest
import torch

from npedit import ops
from npedit.ops.attention import _impl
from npedit.ops.testing import NotLaunched, assert_close_to_reference
from npedit.ops.triton import interpreting

# GPU tests time the compiled kernels: the interpreter on CUDA tensors would take hours
compiled_kernels = pytest.mark.skipif(interpreting(), reason="set TRITON_INTERPRET=0 to run the compiled kernels")

DTYPES = [  # (dtype, atol, rtol)
    pytest.param(torch.float32, 1e-5, 1e-6, id="fp32"),
    pytest.param(torch.float16, 1e-4, 2e-4, id="fp16"),
    pytest.param(torch.bfloat16, 1e-3, 2e-3, id="bf16"),
]

# (batch, seqlen_q, seqlen_k, q heads, kv heads, head_dim, causal)
CASES = [
    pytest.param(1, 47, 47, 2, 2, 32, False, id="odd-seq"),
    pytest.param(2, 47, 47, 4, 2, 40, True, id="gqa-causal-hd40"),
    pytest.param(1, 20, 47, 2, 1, 32, True, id="causal-fewer-queries-mqa"),
    pytest.param(1, 47, 20, 2, 2, 24, True, id="causal-queries-without-keys"),
    pytest.param(2, 1, 47, 4, 1, 32, False, id="one-query"),
    pytest.param(1, 47, 1, 2, 2, 32, True, id="one-key-causal"),
]


@pytest.fixture(params=[("pointer", "split"), ("tma", "fused"), ("pointer", "tma")],
                ids=["pointer-split", "tma-fused", "pointer-tmabwd"])
def triton_backend(monkeypatch, request):
    """The Triton kernels in three variants: pointer-load forward with the split backward (dK/dV and
    dQ passes), the tensor-descriptor (TMA) forward with the fused backward (dQ atomics), and the
    pointer forward with the split backward's TMA kernels (varlen inputs keep the pointer ones)."""
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    monkeypatch.setenv("NPEDIT_ATTN_FWD", request.param[0])
    monkeypatch.setenv("NPEDIT_ATTN_BWD", request.param[1])
    return request.param


def _inputs(b, sq, sk, hq, hk, d, dtype, requires_grad=True):
    q = torch.randn(b, sq, hq, d, dtype=dtype)
    k = torch.randn(b, sk, hk, d, dtype=dtype)
    v = torch.randn(b, sk, hk, d, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _run(fn, inputs, grad_out, grad_lse=None):
    """fn(*inputs) -> out or (out, lse); returns [out, (lse,) dq, dk, dv]."""
    res = fn(*inputs)
    outs = list(res) if isinstance(res, tuple) else [res]
    grads_out = [grad_out.to(outs[0].dtype)] + ([grad_lse] if grad_lse is not None else [])
    grads = torch.autograd.grad(outs, inputs, grads_out)
    return [o.detach() for o in outs] + list(grads)


def _compare(fast_fn, ref_fn, inputs, atol, rtol, with_lse=False):
    grad_out = torch.randn(inputs[0].shape[:-1] + (inputs[2].shape[-1],), device=inputs[0].device)
    grad_lse = None
    if with_lse:
        with torch.no_grad():
            grad_lse = torch.randn_like(fast_fn(*inputs)[1])
    fast = _run(fast_fn, inputs, grad_out, grad_lse)
    ref_d = _run(ref_fn, inputs, grad_out, grad_lse)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref64 = _run(ref_fn, inputs64, grad_out.double(), None if grad_lse is None else grad_lse.double())
    names = ["out"] + (["lse"] if with_lse else []) + ["dq", "dk", "dv"]
    for name, a, r, r64 in zip(names, fast, ref_d, ref64):
        assert a.dtype == r.dtype, f"{name}: dtype {a.dtype} != reference {r.dtype}"
        assert torch.isfinite(a).all() or name == "lse", f"{name}: non-finite values"
        assert_close_to_reference(a, r, r64, atol, rtol, name=name)


def _cases_by_dtype():
    """Every case in fp32; the first four (odd lengths, GQA, causal, padded head dim) in fp16 and bf16."""
    for dt in DTYPES:
        for case in (CASES if dt.id == "fp32" else CASES[:4]):
            yield pytest.param(*case.values, *dt.values, id=f"{case.id}-{dt.id}")


@pytest.mark.parametrize("b,sq,sk,hq,hk,d,causal,dtype,atol,rtol", list(_cases_by_dtype()))
def test_attention_matches_reference(triton_backend, b, sq, sk, hq, hk, d, causal, dtype, atol, rtol):
    inputs = _inputs(b, sq, sk, hq, hk, d, dtype)
    assert _impl(*inputs, "attention") == "triton"
    _compare(lambda q, k, v: ops.attention(q, k, v, causal=causal),
             lambda q, k, v: ops.attention_ref(q, k, v, causal=causal), inputs, atol, rtol)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_lse_and_its_gradient(triton_backend, causal):
    inputs = _inputs(1, 33, 47, 2, 1, 32, torch.float32)
    scale = 0.3
    _compare(lambda q, k, v: ops.attention(q, k, v, causal=causal, softmax_scale=scale, return_lse=True),
             lambda q, k, v: ops.attention_ref(q, k, v, causal=causal, softmax_scale=scale, return_lse=True),
             inputs, 1e-5, 1e-6, with_lse=True)


def test_attention_rows_without_keys_give_zero_and_minus_inf(triton_backend):
    q, k, v = _inputs(1, 9, 4, 2, 2, 16, torch.float32)
    out, lse = ops.attention(q, k, v, causal=True, return_lse=True)  # queries 0..4 see no key
    assert (out[:, :5] == 0).all() and torch.isneginf(lse[:, :, :5]).all()
    assert torch.isfinite(lse[:, :, 5:]).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert (dq[:, :5] == 0).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_attention_strided_inputs(triton_backend):
    """q, k, v as views of one packed qkv projection (how the models call it)."""
    qkv = torch.randn(2, 47, 3, 2, 32, requires_grad=True)
    q, k, v = qkv.unbind(2)
    _compare(lambda q, k, v: ops.attention(q, k, v), lambda q, k, v: ops.attention_ref(q, k, v),
             [q, k, v], 1e-5, 1e-6)


VARLEN_DTYPES = [DTYPES[0], DTYPES[2]]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,atol,rtol", VARLEN_DTYPES)
def test_attention_varlen_matches_reference(triton_backend, causal, dtype, atol, rtol):
    lens_q, lens_k = [5, 33, 1, 20], [7, 20, 9, 20]  # uneven; segment 2 has more queries than keys
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(lens_q), 4, 24, dtype=dtype, requires_grad=True)
    k = torch.randn(sum(lens_k), 2, 24, dtype=dtype, requires_grad=True)
    v = torch.randn(sum(lens_k), 2, 24, dtype=dtype, requires_grad=True)
    args = (cu_q, cu_k, max(lens_q), max(lens_k))
    _compare(lambda q, k, v: ops.attention_varlen(q, k, v, *args, causal=causal),
             lambda q, k, v: ops.attention_varlen_ref(q, k, v, *args, causal=causal), [q, k, v], atol, rtol)


def test_attention_varlen_equals_batched(triton_backend):
    """Equal-length segments packed must give exactly the batched kernel's result."""
    q, k, v = _inputs(3, 17, 17, 2, 2, 32, torch.float32, requires_grad=False)
    cu = torch.arange(0, 52, 17, dtype=torch.int32)
    packed = ops.attention_varlen(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, 17, 17, causal=True)
    torch.testing.assert_close(packed.view_as(q), ops.attention(q, k, v, causal=True), rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["fused", "tma"])
def test_backward_variants_give_the_split_backward_gradients(monkeypatch, variant):
    """Same gradients from every backward variant (fp32; fused: only the summation order of dQ differs)."""
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    inputs = _inputs(2, 47, 33, 4, 2, 32, torch.float32)
    grad_out = torch.randn(2, 47, 4, 32)
    grads = {}
    for name in ("split", variant):
        monkeypatch.setenv("NPEDIT_ATTN_BWD", name)
        grads[name] = _run(lambda q, k, v: ops.attention(q, k, v, causal=True), inputs, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), grads["split"], grads[variant]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert grads[variant][1].abs().sum() > 0


def test_unknown_kernel_variants_are_named(monkeypatch):
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    q, k, v = _inputs(1, 5, 5, 2, 2, 16, torch.float32)
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "atomic")
    with pytest.raises(ValueError, match="NPEDIT_ATTN_BWD='atomic'"):
        ops.attention(q, k, v).sum().backward()
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "wgmma")
    with pytest.raises(ValueError, match="NPEDIT_ATTN_FWD='wgmma'"):
        ops.attention(q, k, v)


def test_tma_forward_runs_its_own_kernel_and_falls_back_where_it_cannot(monkeypatch):
    """NPEDIT_ATTN_FWD=tma must not fall back silently for inputs TMA can address (batch layout,
    16-byte strides); varlen inputs and odd strides do take the pointer kernel."""
    from npedit.ops.triton import attention as kernels
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    monkeypatch.setenv("NPEDIT_ATTN_FWD", "tma")
    q, k, v = _inputs(2, 47, 33, 4, 2, 40, torch.bfloat16, requires_grad=False)
    expected = ops.attention_ref(q, k, v, causal=True)
    pointer_kernel = kernels._attention_fwd_kernel
    monkeypatch.setattr(kernels, "_attention_fwd_kernel", NotLaunched("a pointer-load kernel"))
    torch.testing.assert_close(ops.attention(q, k, v, causal=True), expected, atol=2e-2, rtol=2e-2)
    odd = torch.randn(1, 9, 3, 5)  # stride 15 fp32 elements = 60 bytes: not 16-byte aligned
    assert not kernels.tma_loads_fit(odd) and kernels.tma_loads_fit(q, k, v)
    with pytest.raises(AssertionError, match="pointer-load kernel"):
        ops.attention(odd, odd, odd)
    monkeypatch.setattr(kernels, "_attention_fwd_kernel", pointer_kernel)
    torch.testing.assert_close(ops.attention(odd, odd, odd), ops.attention_ref(odd, odd, odd), atol=1e-5, rtol=1e-5)


def test_tma_backward_runs_its_own_kernels_and_falls_back_where_it_cannot(monkeypatch):
    """NPEDIT_ATTN_BWD=tma launches neither pointer-load backward pass for batch inputs TMA can
    address; varlen inputs, head dims above 128 and broadcast (zero-stride) gradients take the
    pointer kernels."""
    from npedit.ops.triton import attention_bwd as kernels
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "tma")
    inputs = _inputs(2, 47, 33, 4, 2, 40, torch.bfloat16)
    pointer = {name: getattr(kernels, name) for name in ("_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel")}
    for name in pointer:
        monkeypatch.setattr(kernels, name, NotLaunched("a pointer-load kernel"))
    _compare(lambda q, k, v: ops.attention(q, k, v, causal=True),
             lambda q, k, v: ops.attention_ref(q, k, v, causal=True), inputs, 1e-3, 2e-3)
    q, k, v = inputs
    broadcast = torch.randn(1, 1, 4, 40, dtype=torch.bfloat16).expand(2, 47, 4, 40)  # stride 0 over B and S
    assert not kernels.tma_loads_fit(broadcast)
    with pytest.raises(AssertionError, match="was launched"):
        torch.autograd.grad(ops.attention(q, k, v), (q, k, v), broadcast)
    wide = _inputs(1, 5, 5, 1, 1, 136, torch.float32)  # padded to 256
    with pytest.raises(AssertionError, match="was launched"):
        ops.attention(*wide).sum().backward()
    cu = torch.tensor([0, 20, 47], dtype=torch.int32)
    packed = [torch.randn(47, h, 40, dtype=torch.bfloat16, requires_grad=True) for h in (4, 2, 2)]
    with pytest.raises(AssertionError, match="was launched"):
        ops.attention_varlen(*packed, cu, cu, 27, 27).sum().backward()
    for name, kernel in pointer.items():
        monkeypatch.setattr(kernels, name, kernel)
    grads = torch.autograd.grad(ops.attention(q, k, v), (q, k, v), broadcast)
    ref = torch.autograd.grad(ops.attention_ref(q, k, v), (q, k, v), broadcast)
    for a, r in zip(grads, ref):
        torch.testing.assert_close(a, r, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("varlen", [False, True])
def test_reference_backend_matches_reference_autograd(monkeypatch, varlen):
    """NPEDIT_OPS=ref runs the same custom op with the reference forward and an analytic backward."""
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    if varlen:
        cu = torch.tensor([0, 7, 30, 31], dtype=torch.int32)
        inputs = [torch.randn(31, 4, 16, requires_grad=True)] + [torch.randn(31, 2, 16, requires_grad=True)
                                                                   for _ in range(2)]
        fast = lambda q, k, v: ops.attention_varlen(q, k, v, cu, cu, 23, 23, causal=True)  # noqa: E731
        ref = lambda q, k, v: ops.attention_varlen_ref(q, k, v, cu, cu, 23, 23, causal=True)  # noqa: E731
    else:
        inputs = _inputs(2, 19, 23, 4, 2, 16, torch.float32)
        fast = lambda q, k, v: ops.attention(q, k, v, causal=True)  # noqa: E731
        ref = lambda q, k, v: ops.attention_ref(q, k, v, causal=True)  # noqa: E731
    assert _impl(*inputs, "attention") == "torch"
    grad = torch.randn(inputs[0].shape)
    for a, b in zip(_run(fast, inputs, grad), _run(ref, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_value_head_dim_may_differ_on_the_reference_backend(monkeypatch):
    q, k = torch.randn(1, 9, 2, 16, requires_grad=True), torch.randn(1, 11, 1, 16, requires_grad=True)
    v = torch.randn(1, 11, 1, 24, requires_grad=True)
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    grad = torch.randn(1, 9, 2, 24)
    for a, b in zip(_run(lambda q, k, v: ops.attention(q, k, v, causal=True), [q, k, v], grad),
                    _run(lambda q, k, v: ops.attention_ref(q, k, v, causal=True), [q, k, v], grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    with pytest.raises(ValueError, match="head dims differ"):
        ops.attention(q, k, v)


def test_dispatch_rules(monkeypatch):
    q, k, v = _inputs(1, 4, 4, 2, 2, 16, torch.float32, requires_grad=False)
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    assert _impl(q, k, v, "attention") == "torch"  # auto: reference on CPU tensors
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    assert _impl(q, k, v, "attention") == "triton"  # interpreter on CPU
    big = torch.randn(1, 4, 2, 512)
    with pytest.raises(ValueError, match="head dim 512"):
        ops.attention(big, big, big)
    monkeypatch.setenv("NPEDIT_OPS", "bogus")
    with pytest.raises(ValueError, match="NPEDIT_OPS"):
        ops.attention(q, k, v)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_custom_ops_pass_opcheck(impl):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of the custom ops."""
    q, k, v = _inputs(1, 17, 17, 2, 1, 16, torch.float32)
    torch.library.opcheck(torch.ops.npedit.attention_fwd.default, (q, k, v, True, 0.25, impl))
    cu = torch.tensor([0, 5, 17], dtype=torch.int32)
    torch.library.opcheck(torch.ops.npedit.attention_varlen_fwd.default,
                          (q[0], k[0], v[0], cu, cu, 12, 12, False, 0.25, impl))


def test_bad_shapes_are_named():
    q = torch.randn(1, 4, 3, 16)
    k = torch.randn(1, 4, 2, 16)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        ops.attention(q, k, k)
    with pytest.raises(ValueError, match=r"q must be \[batch, seqlen, heads, head_dim\]"):
        ops.attention(q[0], k, k)


# ----------------------------------------------------------------------------------------------- GPU


GPU_DTYPES = [  # (dtype, atol, rtol): fp16/bf16 P and dS enter the tensor-core dots (FlashAttention numerics)
    pytest.param(torch.float16, 1e-3, 2e-3, id="fp16"),
    pytest.param(torch.bfloat16, 4e-3, 1e-2, id="bf16"),
]


# (forward, backward variant, head dim): the default kernels at every head dim; the variants where they
# run their own kernels (elsewhere they fall back to the defaults' kernels, tested on the first lines)
GPU_VARIANTS = [("pointer", "split", d) for d in (64, 128, 96, 256)] + [
    (fwd, bwd, d) for fwd, bwd in (("tma", "fused"), ("ws", "ws"), ("pointer", "tma")) for d in (64, 128)] + [
    ("tma", "fused", 256)]


@pytest.mark.gpu
@compiled_kernels
@pytest.mark.parametrize("fwd,bwd,d", GPU_VARIANTS)
@pytest.mark.parametrize("dtype,atol,rtol", GPU_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_cuda(monkeypatch, dtype, atol, rtol, causal, d, fwd, bwd):
    monkeypatch.delenv("NPEDIT_OPS", raising=False)  # auto must pick Triton on CUDA
    monkeypatch.setenv("NPEDIT_ATTN_FWD", fwd)
    monkeypatch.setenv("NPEDIT_ATTN_BWD", bwd)
    torch.manual_seed(0)
    inputs = [t.cuda().requires_grad_() for t in _inputs(2, 1000, 1000, 8, 2, d, dtype, requires_grad=False)]
    assert _impl(*inputs, "attention") == "triton"
    _compare(lambda q, k, v: ops.attention(q, k, v, causal=causal),
             lambda q, k, v: ops.attention_ref(q, k, v, causal=causal), inputs, atol, rtol)


@pytest.mark.gpu
@compiled_kernels
@pytest.mark.parametrize("bwd", ["split", "fused"])
def test_attention_varlen_cuda(monkeypatch, bwd):
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    monkeypatch.setenv("NPEDIT_ATTN_BWD", bwd)
    lens = [1, 300, 777, 64, 129]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(sum(lens), h, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for h in (8, 2, 2))
    args = (cu, cu, max(lens), max(lens))
    _compare(lambda q, k, v: ops.attention_varlen(q, k, v, *args, causal=True),
             lambda q, k, v: ops.attention_varlen_ref(q, k, v, *args, causal=True), [q, k, v], 4e-3, 1e-2)
