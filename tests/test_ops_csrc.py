"""npedit._C (csrc/) against the PyTorch references: values and gradients in every dtype, odd and
non-contiguous shapes, the Qwen2-VL image processor, bad input, torch.compile, NPEDIT_OPS dispatch.

On CPU the C++ kernels repeat the reference's roundings, so flow_noise and vlm_patchify are compared
bit for bit; dmd_loss sums in another order and is held to the STYLE rule (its error against a
float64 truth at most ~2x the reference's own). CUDA runs (marked gpu) use the dtype tolerances.
"""
from __future__ import annotations

import re
import sys

import pytest
import torch

from npedit.ops import _ext
from npedit.ops import flow as flow_mod
from npedit.ops.flow import DMD_EPS, dmd_loss, dmd_loss_ref, flow_noise, flow_noise_ref
from npedit.ops.patchify import vlm_patchify, vlm_patchify_ref

ops = torch.ops.npedit_C if _ext.available() else None
needs_ext = pytest.mark.skipif(not _ext.available(), reason=f"{_ext.unavailable_reason()}")

# (dtype, atol, rtol): what one rounding to the dtype may cost
DTYPES = [(torch.float32, 1e-6, 1e-5), (torch.bfloat16, 1e-2, 1.6e-2), (torch.float16, 1e-3, 2e-3)]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SHAPES = [(1, 47), (3, 5, 7), (2, 4, 17, 13), (4, 3, 9, 33)]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    monkeypatch.delenv("NPEDIT_OPS", raising=False)


def _same(out, ref, device, atol, rtol):
    if device == "cpu":
        assert torch.equal(out, ref), f"max diff {(out.double() - ref.double()).abs().max().item()}"
    else:
        torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


def test_extension_is_built():
    """`pip install -e .` builds npedit._C; without it every op silently runs its reference."""
    assert _ext.available(), _ext.unavailable_reason()
    info = _ext.build_info()
    assert info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]
    assert info["namespace"] == "npedit_C"


# ---- dmd_loss -----------------------------------------------------------------------------------

def _dmd_truth(x0, x_real, x_fake):
    """float64 loss and d loss / d x0 of dmd_loss_ref's formula."""
    x0d, xrd, xfd = x0.double(), x_real.double(), x_fake.double()
    dims = tuple(range(1, x0.ndim))
    norm = (x0d - xrd).abs().mean(dim=dims, keepdim=True).clamp_min(DMD_EPS)
    grad = (xfd - xrd) / norm
    return 0.5 * grad.square().mean(), grad / x0.numel()


def _dmd_run(fn, x0, x_real, x_fake):
    x0 = x0.detach().requires_grad_(True)
    loss = fn(x0, x_real, x_fake)
    (grad,) = torch.autograd.grad(loss * 1.5, x0)
    return loss.detach(), grad


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dmd_loss_matches_reference(device, dtype, atol, rtol, shape):
    x0, x_real, x_fake = (torch.randn(shape, device=device).to(dtype) for _ in range(3))
    loss, grad = _dmd_run(dmd_loss, x0, x_real, x_fake)
    loss_ref, grad_ref = _dmd_run(dmd_loss_ref, x0, x_real, x_fake)
    loss_true, grad_true = _dmd_truth(x0, x_real, x_fake)
    assert loss.dtype == torch.float32 and loss.shape == () and grad.dtype == dtype
    torch.testing.assert_close(loss, loss_ref, atol=0, rtol=1e-5)  # fp32 math whatever the input dtype
    ref_err = (grad_ref.double() - 1.5 * grad_true).abs().max().item()
    err = (grad.double() - 1.5 * grad_true).abs().max().item()
    assert err <= 2 * ref_err + 1e-6 * grad_true.abs().max().item(), (err, ref_err)
    torch.testing.assert_close(grad, grad_ref, atol=atol * grad_ref.abs().max().item(), rtol=rtol)
    assert abs(loss.double() - loss_true) <= 2e-6 * loss_true


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_dmd_loss_floor_and_large_samples(device):
    x0, x_real, x_fake = (torch.randn(3, 70001, device=device) for _ in range(3))
    x_real[1] = x0[1]  # normaliser 0 -> floored at DMD_EPS
    loss, grad = _dmd_run(dmd_loss, x0, x_real, x_fake)
    loss_ref, grad_ref = _dmd_run(dmd_loss_ref, x0, x_real, x_fake)
    loss_true, grad_true = _dmd_truth(x0, x_real, x_fake)
    torch.testing.assert_close(loss, loss_ref, atol=0, rtol=1e-5)
    # the reference's x0 - (x0 - grad) cancels: the kernel is closer to the float64 truth
    torch.testing.assert_close(grad.double(), 1.5 * grad_true, atol=0, rtol=1e-5)
    assert (grad.double() - 1.5 * grad_true).abs().max() <= (grad_ref.double() - 1.5 * grad_true).abs().max()
    _, norm = ops.dmd_loss(x0, x_real, x_fake, DMD_EPS)
    assert norm[1].item() == pytest.approx(DMD_EPS) and not norm.requires_grad


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_dmd_loss_non_contiguous_inputs(device):
    views = [torch.randn(2, 6, 5, 8, device=device).transpose(1, 3),
             torch.randn(2, 6, 5, 8, device=device).transpose(1, 3),
             torch.randn(2, 6, 5, 16, device=device)[..., ::2].transpose(1, 3)]
    assert not any(v.is_contiguous() for v in views)
    loss, grad = _dmd_run(dmd_loss, *views)
    loss_ref, grad_ref = _dmd_run(dmd_loss_ref, *views)
    torch.testing.assert_close(loss, loss_ref, atol=0, rtol=1e-5)
    torch.testing.assert_close(grad, grad_ref, atol=1e-9, rtol=1e-5)


# ---- flow_noise ---------------------------------------------------------------------------------

def _flow_run(fn, x0, noise, t, use=(True, True)):
    x0 = x0.detach().requires_grad_(True)
    noise = noise.detach().requires_grad_(True)
    x_t, v = fn(x0, noise, t)
    w_xt, w_v = torch.randn_like(x_t), torch.randn_like(v)
    obj = sum((out * w).sum() for out, w, on in ((x_t, w_xt, use[0]), (v, w_v, use[1])) if on)
    g_x0, g_noise = torch.autograd.grad(obj, (x0, noise))
    return x_t.detach(), v.detach(), g_x0, g_noise


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t_kind", ["per_sample", "one", "float64", "scalar"])
def test_flow_noise_matches_reference(device, dtype, atol, rtol, shape, t_kind):
    x0, noise = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
    t = {"per_sample": torch.rand(shape[0], device=device), "one": torch.rand(1, device=device),
         "float64": torch.rand(shape[0], device=device, dtype=torch.float64), "scalar": torch.rand((), device=device)}[t_kind]
    torch.manual_seed(2)
    out = _flow_run(flow_noise, x0, noise, t)
    torch.manual_seed(2)
    ref = _flow_run(flow_noise_ref, x0, noise, t)
    for a, b in zip(out, ref):
        assert a.dtype == dtype and a.shape == x0.shape
        _same(a, b, device, atol, rtol)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use", [(True, False), (False, True)], ids=["x_t_only", "v_only"])
def test_flow_noise_one_output_used(device, use):
    x0, noise = (torch.randn(3, 4, 5, device=device, dtype=torch.bfloat16) for _ in range(2))
    t = torch.rand(3, device=device)
    torch.manual_seed(2)
    out = _flow_run(flow_noise, x0, noise, t, use)
    torch.manual_seed(2)
    ref = _flow_run(flow_noise_ref, x0, noise, t, use)
    for a, b in zip(out, ref):
        _same(a, b, device, 1e-2, 1.6e-2)


@needs_ext
def test_flow_noise_non_contiguous_and_empty():
    x0 = torch.randn(4, 6, 10).transpose(1, 2)
    noise = torch.randn(4, 20, 6)[:, ::2]
    t = torch.rand(8)[::2]
    for a, b in zip(flow_noise(x0, noise, t), flow_noise_ref(x0, noise, t)):
        assert torch.equal(a, b)
    empty = torch.randn(2, 0, 3)
    x_t, v = flow_noise(empty, empty, torch.rand(2))
    assert x_t.shape == v.shape == empty.shape


@needs_ext
def test_flow_noise_gradient_to_t(monkeypatch):
    """The kernel has no gradient for t: auto mode takes the reference, forcing the kernel errors."""
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.rand(2, requires_grad=True)
    x_t, _ = flow_noise(x0, noise, t)
    (g,) = torch.autograd.grad(x_t.sum(), t)
    torch.testing.assert_close(g, (noise - x0).sum(1))
    monkeypatch.setenv("NPEDIT_OPS", "cuda")
    x_t, _ = flow_noise(x0, noise, t)
    with pytest.raises(RuntimeError, match="gradient with respect to t is not implemented"):
        x_t.sum().backward()


# ---- vlm_patchify -------------------------------------------------------------------------------

PATCH_CASES = [  # (B, C, H, W, patch, temporal, merge)
    (2, 3, 28, 56, 14, 2, 2),
    (1, 3, 84, 28, 14, 2, 2),
    (3, 1, 12, 18, 3, 1, 2),
    (2, 4, 18, 9, 3, 3, 3),
    (1, 5, 10, 20, 5, 2, 1),
]


def _patchify_run(fn, images, mean, std, sizes):
    images = images.detach().requires_grad_(True)
    out = fn(images, mean, std, *sizes)
    torch.manual_seed(3)
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), images)
    return out.detach(), grad


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", PATCH_CASES, ids=lambda c: "x".join(map(str, c)))
def test_vlm_patchify_matches_reference(device, dtype, atol, rtol, case):
    b, c, h, w, *sizes = case
    images = torch.rand(b, c, h, w, device=device).to(dtype)
    mean = [0.3 + 0.05 * i for i in range(c)]
    std = [0.2 + 0.03 * i for i in range(c)]
    out, grad = _patchify_run(vlm_patchify, images, mean, std, sizes)
    out_ref, grad_ref = _patchify_run(vlm_patchify_ref, images, mean, std, sizes)
    assert out.shape == out_ref.shape and out.dtype == dtype and grad.dtype == dtype
    _same(out, out_ref, device, atol, rtol)
    _same(grad, grad_ref, device, atol, rtol)


@needs_ext
def test_vlm_patchify_non_contiguous_and_tensor_constants():
    images = torch.rand(2, 3, 28, 56).to(memory_format=torch.channels_last)
    flipped = torch.rand(2, 3, 56, 28).transpose(2, 3)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    for x in (images, flipped):
        assert torch.equal(vlm_patchify(x, mean, std), vlm_patchify_ref(x, mean, std))


def _qwen2vl_processor():
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None)
    if cls is None:
        pytest.skip("this transformers has no Qwen2VLImageProcessorPil")
    return cls()  # defaults: CLIP mean/std, patch 14, temporal 2, merge 2; nothing downloaded


@needs_ext
@pytest.mark.parametrize("size", [(56, 84), (112, 56), (28 * 5, 28 * 3)])
def test_vlm_patchify_equals_qwen2vl_image_processor(size):
    """On images that need no resize, pixel_values match Hugging Face's processor."""
    np = pytest.importorskip("numpy")
    from PIL import Image

    proc = _qwen2vl_processor()
    h, w = size
    rng = np.random.default_rng(h * 1000 + w)
    pixels = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2)]
    hf = proc(images=[Image.fromarray(p) for p in pixels], return_tensors="pt")
    assert hf["image_grid_thw"].tolist() == [[1, h // 14, w // 14]] * 2  # really no resize
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    ours = vlm_patchify(images, proc.image_mean, proc.image_std, proc.patch_size, proc.temporal_patch_size,
                        proc.merge_size)
    torch.testing.assert_close(ours, hf["pixel_values"].float(), atol=2e-6, rtol=1e-6)


# ---- bad input ----------------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("call, match", [
    (lambda: dmd_loss(*(torch.ones(2, 3, dtype=torch.int32),) * 3), "float32, float16 or bfloat16"),
    (lambda: dmd_loss(torch.randn(2, 3), torch.randn(2, 3).half(), torch.randn(2, 3)), "cast them to one dtype"),
    (lambda: dmd_loss(torch.randn(2, 3), torch.randn(3, 2), torch.randn(2, 3)), "they must match"),
    (lambda: dmd_loss(torch.randn(4), torch.randn(4), torch.randn(4)), "at least one dimension per sample"),
    (lambda: dmd_loss(torch.randn(2, 0), torch.randn(2, 0), torch.randn(2, 0)), "inputs are empty"),
    (lambda: dmd_loss(torch.randn(2, 3, dtype=torch.float64), *(torch.randn(2, 3, dtype=torch.float64),) * 2),
     "float32, float16 or bfloat16"),
    (lambda: flow_noise(torch.randn(3, 4), torch.randn(3, 4), torch.rand(2)), "one t per sample"),
    (lambda: flow_noise(torch.randn(3, 4), torch.randn(3, 4), torch.ones(3, dtype=torch.int64)),
     "must be a floating tensor"),
    (lambda: flow_noise(torch.randn(3, 4), torch.randn(3, 4).bfloat16(), torch.rand(3)), "cast them to one dtype"),
    (lambda: vlm_patchify(torch.rand(1, 3, 28, 42), CLIP_MEAN, CLIP_STD), "not a multiple of patch_size*merge_size=28"),
    (lambda: vlm_patchify(torch.rand(1, 3, 28, 28), CLIP_MEAN[:2], CLIP_STD), "one value per channel"),
    (lambda: vlm_patchify(torch.rand(3, 28, 28), CLIP_MEAN, CLIP_STD), "[B, C, H, W]"),
    (lambda: vlm_patchify(torch.rand(1, 17, 28, 28), [0.5] * 17, [0.5] * 17), "1 to 16"),
    (lambda: vlm_patchify(torch.rand(1, 3, 28, 28), CLIP_MEAN, CLIP_STD, 14, 0, 2), "must be positive"),
])
def test_bad_input_gets_a_clear_error(monkeypatch, call, match):
    monkeypatch.setenv("NPEDIT_OPS", "cuda")  # the compiled kernels, not the reference
    with pytest.raises(RuntimeError, match=re.escape(match)):
        call()


@needs_ext
def test_device_mix_is_rejected():
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="put all inputs on one device"):  # fake kernel (meta)
        ops.dmd_loss(x, x.to("meta"), x, DMD_EPS)
    with pytest.raises(RuntimeError, match="put all inputs on one device"):
        ops.flow_noise(x, x, torch.rand(2, device="meta"))


@needs_ext
@pytest.mark.gpu
def test_device_mix_is_rejected_on_cuda():
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="put all inputs on one device"):
        ops.dmd_loss(x.cuda(), x, x.cuda(), DMD_EPS)
    with pytest.raises(RuntimeError, match="put all inputs on one device"):
        ops.flow_noise(x.cuda(), x.cuda(), torch.rand(2))


# ---- torch.compile, op registration ---------------------------------------------------------------

def _op_cases():
    x = torch.randn(3, 4, 5)
    return {
        "dmd_loss": (x.clone().requires_grad_(), torch.randn(3, 4, 5), torch.randn(3, 4, 5), DMD_EPS),
        "dmd_loss_backward": (torch.tensor(1.5), torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.rand(3) + 0.1),
        "flow_noise": (x.clone().requires_grad_(), torch.randn(3, 4, 5, requires_grad=True), torch.rand(3)),
        "flow_noise_backward": (torch.randn(3, 4, 5), None, torch.rand(3)),
        "vlm_patchify": (torch.rand(2, 3, 28, 56, requires_grad=True), list(CLIP_MEAN), list(CLIP_STD), 14, 2, 2),
        "vlm_patchify_backward": (torch.randn(16, 1176), list(CLIP_STD), [2, 3, 28, 56], 14, 2, 2),
    }


@needs_ext
@pytest.mark.parametrize("name", list(_op_cases()))
def test_opcheck(name):
    """Schema, fake kernel, autograd registration and AOT dispatch (what torch.compile relies on)."""
    torch.library.opcheck(getattr(ops, name).default, _op_cases()[name])


@needs_ext
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    def step(x0, x_real, x_fake, noise, t, images):
        loss = dmd_loss(x0, x_real, x_fake)
        x_t, v = flow_noise(x0, noise, t)
        rows = vlm_patchify(images, CLIP_MEAN, CLIP_STD)
        return loss + (x_t * v).mean() + rows.square().mean()

    args = [torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6),
            torch.rand(3), torch.rand(2, 3, 28, 56)]
    leaves = (0, 3, 5)
    grads = []
    for fn in (step, torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=dynamic)):
        inputs = [a.clone().requires_grad_(i in leaves) for i, a in enumerate(args)]
        out = fn(*inputs)
        grads.append((out.detach(), *torch.autograd.grad(out, [inputs[i] for i in leaves])))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ---- NPEDIT_OPS dispatch ----------------------------------------------------------------------------

@needs_ext
def test_dispatch_auto_forced_and_spied(monkeypatch):
    x = torch.randn(2, 3)
    assert _ext.choose("dmd_loss", x) == "ext"
    assert _ext.choose("dmd_loss", x.double()) == "ref"  # the kernels take fp32/fp16/bf16
    assert _ext.choose("dmd_loss", x, ext_ok=False) == "ref"
    calls = []
    monkeypatch.setattr(flow_mod, "dmd_loss_ref", lambda *a: calls.append(a) or torch.zeros(()))
    dmd_loss(x, x, x)
    assert not calls
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    dmd_loss(x, x, x)
    assert len(calls) == 1
    monkeypatch.setenv("NPEDIT_OPS", "cuda")
    assert _ext.choose("dmd_loss", x.double()) == "ext"  # forced: the kernel's own error explains
    monkeypatch.setenv("NPEDIT_OPS", "triton")
    with pytest.raises(RuntimeError, match="no Triton kernel for dmd_loss"):
        dmd_loss(x, x, x)


def test_without_the_extension_auto_uses_the_reference_and_cuda_explains(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_REASON", "npedit._C is not built (simulated)")
    monkeypatch.setattr(_ext, "_warned_fallback", False)
    x0, x_real, x_fake = (torch.randn(2, 3) for _ in range(3))
    with pytest.warns(RuntimeWarning, match="not built"):
        assert torch.equal(dmd_loss(x0, x_real, x_fake), dmd_loss_ref(x0, x_real, x_fake))
    assert not _ext.available() and "simulated" in _ext.unavailable_reason()
    monkeypatch.setenv("NPEDIT_OPS", "cuda")
    with pytest.raises(RuntimeError, match=r"NPEDIT_OPS=cuda but npedit._C is not built \(simulated\)"):
        flow_noise(x0, x_real, torch.rand(2))


def test_load_message_when_not_built(monkeypatch):
    import npedit

    monkeypatch.setattr(_ext, "_C", _ext._C)
    monkeypatch.setattr(_ext, "_REASON", _ext._REASON)
    monkeypatch.setattr(_ext, "_WITH_CUDA", _ext._WITH_CUDA)
    monkeypatch.delattr(npedit, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "npedit._C", None)
    _ext._load()
    assert not _ext.available()
    assert "npedit._C is not built" in _ext.unavailable_reason()
    assert "pip install --no-build-isolation -e ." in _ext.unavailable_reason()
