"""Fused adaLN modulation + norm against the reference (Triton interpreter on CPU).

47 tokens cross several row tiles and backward chunks (the per-sample shift/scale gradients are
reduced over chunk partials); D = 40 is padded to 64 and masked.
"""
import pytest
import torch

from npedit import ops
from npedit.ops.memory import saved_tensor_bytes
from npedit.ops.testing import assert_close_to_reference
from npedit.ops.triton import interpreting

# GPU tests time the compiled kernels: the interpreter on CUDA tensors would take hours
compiled_kernels = pytest.mark.skipif(interpreting(), reason="set TRITON_INTERPRET=0 to run the compiled kernels")

DTYPES = [  # (dtype, atol, rtol)
    pytest.param(torch.float32, 1e-5, 1e-6, id="fp32"),
    pytest.param(torch.float16, 1e-4, 1e-4, id="fp16"),
    pytest.param(torch.bfloat16, 1e-3, 1e-3, id="bf16"),
]


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("NPEDIT_OPS", "triton")


def _compare(x, shift, scale, norm, atol, rtol, eps=1e-6):
    inputs = [x, shift, scale]
    grad = torch.randn(x.shape, device=x.device)

    def run(fn, ins):
        y = fn(*ins, norm=norm, eps=eps)
        return [y.detach()] + list(torch.autograd.grad(y, ins, grad.to(y.dtype)))

    fast = run(ops.adaln_modulate, inputs)
    ref_d = run(ops.adaln_modulate_ref, inputs)
    ref64 = run(ops.adaln_modulate_ref, [t.detach().double().requires_grad_() for t in inputs])
    for name, a, r, r64 in zip(["y", "dx", "dshift", "dscale"], fast, ref_d, ref64):
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert_close_to_reference(a, r, r64, atol, rtol, name=name)


def _inputs(b, s, d, per_sample, dtype, mod_dtype=None):
    mod_dtype = mod_dtype or dtype
    ms = 1 if per_sample else s
    x = (1.5 * torch.randn(b, s, d) + 0.3).to(dtype).requires_grad_()
    shift = torch.randn(b, ms, d).to(mod_dtype).requires_grad_()
    scale = (0.5 * torch.randn(b, ms, d)).to(mod_dtype).requires_grad_()
    return x, shift, scale


@pytest.mark.parametrize("per_sample", [True, False], ids=["per-sample", "per-token"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_adaln_matches_reference(triton_backend, dtype, atol, rtol, norm, per_sample):
    _compare(*_inputs(2, 47, 40, per_sample, dtype), norm, atol, rtol)


def test_adaln_strided_modulation_and_one_token(triton_backend):
    """shift/scale as chunks of one modulation projection (how DiT blocks call it); S = 1."""
    mod = torch.randn(2, 1, 6 * 32, requires_grad=True)
    shift, scale = mod.chunk(6, dim=-1)[:2]
    _compare(torch.randn(2, 47, 32, requires_grad=True), shift, scale, "layer", 1e-5, 1e-6)
    _compare(*_inputs(3, 1, 32, True, torch.float32), "rms", 1e-5, 1e-6, eps=1e-3)


def test_adaln_mixed_dtypes(triton_backend):
    """bf16 activations modulated by fp32 shift/scale: grads come back in each input's dtype."""
    _compare(*_inputs(1, 47, 32, True, torch.bfloat16, mod_dtype=torch.float32), "layer", 1e-3, 1e-3)


def test_adaln_saves_two_floats_per_token(triton_backend):
    x, shift, scale = _inputs(2, 47, 32, True, torch.float32)
    fused = saved_tensor_bytes(lambda: ops.adaln_modulate(x * 1.0, shift, scale))
    assert fused == 2 * 47 * 32 * 4 + 2 * 2 * 47 * 4  # the x copy made inside + mean, rstd


@pytest.mark.parametrize("per_sample", [True, False])
def test_custom_op_passes_opcheck(per_sample):
    x, shift, scale = _inputs(2, 5, 16, per_sample, torch.float32)
    torch.library.opcheck(torch.ops.npedit.adaln_modulate_fwd.default, (x, shift, scale, "rms", 1e-6))


def test_adaln_bad_inputs(triton_backend):
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="norm must be"):
        ops.adaln_modulate(x, x, x, norm="batch")
    with pytest.raises(ValueError, match=r"shift/scale must be \[B, S, D\] or \[B, 1, D\]"):
        ops.adaln_modulate(x, x[:, :2], x)


@pytest.mark.gpu
@compiled_kernels
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("per_sample", [True, False])
def test_adaln_cuda(monkeypatch, dtype, atol, rtol, per_sample):
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    x, shift, scale = (t.detach().cuda().requires_grad_() for t in _inputs(4, 1031, 1152, per_sample, dtype))
    _compare(x, shift, scale, "layer", atol, rtol)
    _compare(x, shift, scale, "rms", atol, rtol)
