"""The compiled extension npedit._C (csrc/): loading, its Python half, and backend choice.

Loading npedit._C registers the C++ ops `torch.ops.npedit_C.*` (CPU kernels always, CUDA kernels
when it was built with CUDA). This module adds what torch.compile and autograd need on top of the
schemas: fake (meta) kernels, which give output shapes without running anything, and autograd
formulas that call the ops' `*_backward` kernels. `choose` implements NPEDIT_OPS for the ops of
flow.py and patchify.py: "cuda" means this extension (its C++ CPU path on CPU tensors).
"""
from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any

import torch

from npedit.ops.backend import forced_backend

NAMESPACE = "npedit_C"  # the Triton ops own "npedit"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BUILD_HINT = ("build it from the repository root with `pip install --no-build-isolation -e .` (needs a C++ "
              "compiler; the CUDA kernels also need the CUDA toolkit and a CUDA build of torch)")

_C: Any = None
_REASON: str | None = None  # why the extension is not available
_WITH_CUDA = False  # plain bools, read in traced code (torch.compile cannot step into pybind11 calls)
_warned_fallback = False
_registered = False  # fake kernels and autograd formulas registered (once per process)


def _load() -> None:
    global _C, _REASON, _WITH_CUDA
    _C, _REASON, _WITH_CUDA = None, None, False
    try:
        from npedit import _C as module
    except ModuleNotFoundError as exc:
        if exc.name not in ("npedit._C", "_C"):
            raise
        _REASON = f"npedit._C is not built (no npedit/_C*.so); {BUILD_HINT}"
        return
    except (ImportError, OSError) as exc:
        _REASON = (f"npedit._C failed to load ({exc}); it was probably built against another torch than the "
                   f"installed {torch.__version__}: rebuild it: {BUILD_HINT}")
        return
    built = module.build_info()["torch_version"]
    if built.split(".")[:2] != torch.__version__.split("+")[0].split(".")[:2]:
        _REASON = (f"npedit._C was built against torch {built} but torch {torch.__version__} is installed; "
                   f"rebuild it: {BUILD_HINT}")
        return
    _C, _WITH_CUDA = module, bool(module.build_info()["with_cuda"])
    if not _registered:
        _register_python_half()


def available() -> bool:
    """True when npedit._C is built, loads, and matches the installed torch."""
    return _C is not None


def unavailable_reason() -> str | None:
    """Why the extension cannot be used (None when it can)."""
    return _REASON


def has_cuda() -> bool:
    """True when the extension holds CUDA kernels."""
    return _C is not None and _WITH_CUDA


def build_info() -> dict:
    """What npedit._C was built with (torch version, CUDA, OpenMP); raises when it is not available."""
    _require()
    return dict(_C.build_info())


def _require() -> None:
    if _C is None:
        raise RuntimeError(_REASON)


@functools.lru_cache(maxsize=None)
def triton_impl(op: str):
    """The Triton kernel `npedit.ops.triton.<op>` (same signature as the reference), if one exists."""
    try:
        module = importlib.import_module("npedit.ops.triton")
    except ImportError:
        return None
    return getattr(module, op, None)


def choose(op: str, x: torch.Tensor, ext_ok: bool = True) -> str:
    """Backend for `op` on inputs led by `x`: "ext" (npedit._C), "triton" or "ref".

    NPEDIT_OPS forces: "cuda" = this extension (its C++ path on CPU tensors; unusable -> error),
    "triton" = npedit.ops.triton.<op> (none -> error), "ref" = the PyTorch reference. Unset: the
    extension where it runs x (dtype float32/float16/bfloat16, CPU, or CUDA when built with CUDA,
    and `ext_ok`), else a Triton kernel on CUDA tensors when one exists, else the reference.
    """
    forced = forced_backend()
    if forced == "ref":
        return "ref"
    if forced == "cuda":
        if _C is None:
            raise RuntimeError(f"NPEDIT_OPS=cuda but {_REASON}")
        if x.is_cuda and not has_cuda():
            raise RuntimeError(f"NPEDIT_OPS=cuda: {op} got CUDA tensors but npedit._C was built without CUDA "
                               "kernels; rebuild it with a CUDA build of torch (NPEDIT_BUILD_CUDA=1)")
        return "ext"
    if forced == "triton":
        if triton_impl(op) is None:
            raise RuntimeError(f"NPEDIT_OPS=triton but there is no Triton kernel for {op} (npedit.ops.triton.{op}); "
                               "use NPEDIT_OPS=cuda (the compiled extension) or ref, or unset NPEDIT_OPS")
        return "triton"
    if (ext_ok and _C is not None and x.dtype in SUPPORTED_DTYPES
            and (x.device.type == "cpu" or (x.is_cuda and has_cuda()))):
        return "ext"
    if x.is_cuda and triton_impl(op) is not None:
        return "triton"
    global _warned_fallback
    if _C is None and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"{_REASON}. Using the PyTorch references of the fused ops.", RuntimeWarning, stacklevel=3)
    return "ref"


# ---- fake kernels and autograd of the npedit_C ops ----------------------------------------------

def _same_device(op: str, ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but the first input is on {ref.device}; "
                               "put all inputs on one device")


def _register_python_half() -> None:
    global _registered
    _registered = True
    lib = f"{NAMESPACE}::"
    ops = getattr(torch.ops, NAMESPACE)

    @torch.library.register_fake(lib + "dmd_loss")
    def _dmd_loss_fake(x0, x_real, x_fake, eps):
        _same_device("dmd_loss", x0, x_real=x_real, x_fake=x_fake)
        return x0.new_empty((), dtype=torch.float32), x0.new_empty((x0.shape[0],), dtype=torch.float32)

    @torch.library.register_fake(lib + "dmd_loss_backward")
    def _dmd_loss_backward_fake(grad_loss, x_real, x_fake, norm):
        _same_device("dmd_loss_backward", x_real, x_fake=x_fake, grad_loss=grad_loss, norm=norm)
        return torch.empty_like(x_real, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "flow_noise")
    def _flow_noise_fake(x0, noise, t):
        _same_device("flow_noise", x0, noise=noise, t=t)
        return (torch.empty_like(x0, memory_format=torch.contiguous_format),
                torch.empty_like(x0, memory_format=torch.contiguous_format))

    @torch.library.register_fake(lib + "flow_noise_backward")
    def _flow_noise_backward_fake(grad_x_t, grad_v, t):
        ref = grad_x_t if grad_x_t is not None else grad_v
        _same_device("flow_noise_backward", ref, grad_v=grad_v, t=t)
        return (torch.empty_like(ref, memory_format=torch.contiguous_format),
                torch.empty_like(ref, memory_format=torch.contiguous_format))

    @torch.library.register_fake(lib + "vlm_patchify")
    def _vlm_patchify_fake(images, mean, std, patch_size, temporal_patch_size, merge_size):
        if images.dim() != 4:
            raise RuntimeError(f"vlm_patchify: images must be [B, C, H, W], got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        unit = patch_size * merge_size
        if h % unit or w % unit:
            raise RuntimeError(f"vlm_patchify: image size {h}x{w} is not a multiple of patch_size*merge_size={unit}")
        rows = b * (h // patch_size) * (w // patch_size)
        return images.new_empty((rows, c * temporal_patch_size * patch_size * patch_size))

    @torch.library.register_fake(lib + "vlm_patchify_backward")
    def _vlm_patchify_backward_fake(grad, std, image_size, patch_size, temporal_patch_size, merge_size):
        return grad.new_empty(tuple(image_size))

    # dmd_loss: gradient to x0 only; norm is a statistic, not differentiable.
    def _dmd_setup(ctx, inputs, output):
        _, x_real, x_fake, _ = inputs
        ctx.save_for_backward(x_real, x_fake, output[1])
        ctx.mark_non_differentiable(output[1])

    def _dmd_backward(ctx, grad_loss, grad_norm):
        x_real, x_fake, norm = ctx.saved_tensors
        grad_x0 = ops.dmd_loss_backward(grad_loss, x_real, x_fake, norm) if ctx.needs_input_grad[0] else None
        return grad_x0, None, None, None

    torch.library.register_autograd(lib + "dmd_loss", _dmd_backward, setup_context=_dmd_setup)

    def _flow_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])

    def _flow_backward(ctx, grad_x_t, grad_v):
        (t,) = ctx.saved_tensors
        if ctx.needs_input_grad[2]:
            raise RuntimeError("flow_noise (npedit._C): the gradient with respect to t is not implemented; "
                               "detach t or use flow_noise_ref")
        grad_x0, grad_noise = ops.flow_noise_backward(grad_x_t, grad_v, t)
        return (grad_x0 if ctx.needs_input_grad[0] else None,
                grad_noise if ctx.needs_input_grad[1] else None, None)

    torch.library.register_autograd(lib + "flow_noise", _flow_backward, setup_context=_flow_setup)

    def _patchify_setup(ctx, inputs, output):
        images, _, std, patch_size, temporal_patch_size, merge_size = inputs
        ctx.image_size = tuple(images.shape)
        ctx.std = std
        ctx.sizes = (patch_size, temporal_patch_size, merge_size)

    def _patchify_backward(ctx, grad):
        grad_images = ops.vlm_patchify_backward(grad, ctx.std, list(ctx.image_size), *ctx.sizes)
        return grad_images, None, None, None, None, None

    torch.library.register_autograd(lib + "vlm_patchify", _patchify_backward, setup_context=_patchify_setup)


_load()
