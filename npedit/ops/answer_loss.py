"""VLM logit-to-loss: the judge's answer loss from answer-position hidden states.

Only one position per question and (for the Yes/No form) two rows of the LM head are needed;
the fused kernels never materialise [Q, V] logits. The references are the specification.

Op stack: `*_ref` (specification, also the CPU path) -> Triton kernels in
`npedit/ops/triton/answer_loss.py` -> custom ops `npedit::binary_answer_loss_fwd|bwd` and
`npedit::vocab_answer_loss_fwd|bwd` -> the functional API below. Saved for backward: the fused ops
keep hidden, weight and the ids (inputs) plus one fp32 number per question (margin or lse), so the
memory they add is independent of vocabulary size and sequence length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from npedit.ops.backend import forced_backend
from npedit.ops.triton import use_triton


def binary_answer_loss_ref(hidden: torch.Tensor, weight: torch.Tensor, pos_ids: torch.Tensor,
                           neg_ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """hidden [Q, D], weight [V, D], pos_ids/neg_ids [Q] -> [Q] fp32.

    loss_q = -log sigmoid(scale * (h_q . W[pos_q] - h_q . W[neg_q])).
    """
    h = hidden.float()
    margin = (h * weight[pos_ids].float()).sum(-1) - (h * weight[neg_ids].float()).sum(-1)
    return -F.logsigmoid(scale * margin)


def vocab_answer_loss_ref(hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor,
                          scale: float = 1.0) -> torch.Tensor:
    """hidden [Q, D], weight [V, D], target_ids [Q] -> [Q] fp32: -log softmax(scale h W^T)[target]."""
    logits = scale * (hidden.float() @ weight.float().t())  # [Q, V]
    return F.cross_entropy(logits, target_ids, reduction="none")


# ---------------------------------------------------------------------------------------------------
# autograd boundary (Triton implementation; the reference path is plain autograd)


def _no_tensor(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)  # custom ops cannot return None: an empty tensor stands for "no gradient"


@torch.library.custom_op("npedit::binary_answer_loss_fwd", mutates_args=())
def _binary_fwd_op(hidden: torch.Tensor, weight: torch.Tensor, pos_ids: torch.Tensor, neg_ids: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> loss [Q] fp32, margin [Q] fp32."""
    from npedit.ops.triton.answer_loss import binary_answer_loss_fwd
    return binary_answer_loss_fwd(hidden, weight, pos_ids, neg_ids, scale)


@_binary_fwd_op.register_fake
def _(hidden, weight, pos_ids, neg_ids, scale):
    q = hidden.shape[0]
    return hidden.new_empty(q, dtype=torch.float32), hidden.new_empty(q, dtype=torch.float32)


@torch.library.custom_op("npedit::binary_answer_loss_bwd", mutates_args=())
def _binary_bwd_op(grad: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, pos_ids: torch.Tensor,
                   neg_ids: torch.Tensor, margin: torch.Tensor, scale: float,
                   weight_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from npedit.ops.triton.answer_loss import binary_answer_loss_bwd
    dh, dw = binary_answer_loss_bwd(grad, hidden, weight, pos_ids, neg_ids, margin, scale, weight_grad)
    return dh, (dw if dw is not None else _no_tensor(weight))


@_binary_bwd_op.register_fake
def _(grad, hidden, weight, pos_ids, neg_ids, margin, scale, weight_grad):
    return hidden.new_empty(hidden.shape), (weight.new_empty(weight.shape) if weight_grad else weight.new_empty(0))


def _binary_setup(ctx, inputs, output):
    hidden, weight, pos_ids, neg_ids, scale = inputs
    ctx.save_for_backward(hidden, weight, pos_ids, neg_ids, output[1])
    ctx.scale = scale


def _binary_backward(ctx, grad, _grad_margin):
    hidden, weight, pos_ids, neg_ids, margin = ctx.saved_tensors
    weight_grad = ctx.needs_input_grad[1]
    dh, dw = torch.ops.npedit.binary_answer_loss_bwd(grad, hidden, weight, pos_ids, neg_ids, margin, ctx.scale,
                                                     weight_grad)
    return dh, (dw if weight_grad else None), None, None, None


_binary_fwd_op.register_autograd(_binary_backward, setup_context=_binary_setup)


@torch.library.custom_op("npedit::vocab_answer_loss_fwd", mutates_args=())
def _vocab_fwd_op(hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> loss [Q] fp32, lse [Q] fp32."""
    from npedit.ops.triton.answer_loss import vocab_answer_loss_fwd
    return vocab_answer_loss_fwd(hidden, weight, target_ids, scale)


@_vocab_fwd_op.register_fake
def _(hidden, weight, target_ids, scale):
    q = hidden.shape[0]
    return hidden.new_empty(q, dtype=torch.float32), hidden.new_empty(q, dtype=torch.float32)


@torch.library.custom_op("npedit::vocab_answer_loss_bwd", mutates_args=())
def _vocab_bwd_op(grad: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor,
                  lse: torch.Tensor, scale: float, weight_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from npedit.ops.triton.answer_loss import vocab_answer_loss_bwd
    dh, dw = vocab_answer_loss_bwd(grad, hidden, weight, target_ids, lse, scale, weight_grad)
    return dh, (dw if dw is not None else _no_tensor(weight))


@_vocab_bwd_op.register_fake
def _(grad, hidden, weight, target_ids, lse, scale, weight_grad):
    return hidden.new_empty(hidden.shape), (weight.new_empty(weight.shape) if weight_grad else weight.new_empty(0))


def _vocab_setup(ctx, inputs, output):
    hidden, weight, target_ids, scale = inputs
    ctx.save_for_backward(hidden, weight, target_ids, output[1])
    ctx.scale = scale


def _vocab_backward(ctx, grad, _grad_lse):
    hidden, weight, target_ids, lse = ctx.saved_tensors
    weight_grad = ctx.needs_input_grad[1]
    dh, dw = torch.ops.npedit.vocab_answer_loss_bwd(grad, hidden, weight, target_ids, lse, ctx.scale, weight_grad)
    return dh, (dw if weight_grad else None), None, None


_vocab_fwd_op.register_autograd(_vocab_backward, setup_context=_vocab_setup)


# ---------------------------------------------------------------------------------------------------
# functional API


def _check(what: str, hidden: torch.Tensor, weight: torch.Tensor, **ids: torch.Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"{what}: hidden must be [Q, D] and weight [V, D] with the same D, got hidden "
                         f"{tuple(hidden.shape)}, weight {tuple(weight.shape)}")
    for name, t in ids.items():
        if t.shape != (hidden.shape[0],) or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{what}: {name} must be an integer tensor of shape [{hidden.shape[0]}], got "
                             f"{t.dtype} {tuple(t.shape)}")
        if not t.is_cuda and t.numel() and not torch.compiler.is_compiling():  # a GPU check would synchronise
            bad = (t < 0) | (t >= weight.shape[0])
            if name == "target_ids":
                bad &= t != -100  # cross_entropy's ignore_index: loss 0
            if bool(bad.any()):
                raise ValueError(f"{what}: {name} out of range for a vocabulary of {weight.shape[0]}: "
                                 f"{t[bad][:4].tolist()}")


def _triton_ok(what: str, hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    if not use_triton(hidden, weight, op=what):
        return False
    ok = {torch.float16, torch.bfloat16, torch.float32}
    if hidden.dtype in ok and weight.dtype in ok:
        return True
    if forced_backend() == "triton":
        raise ValueError(f"{what}: NPEDIT_OPS=triton cannot run dtypes {hidden.dtype}/{weight.dtype}")
    return False


def binary_answer_loss(hidden, weight, pos_ids, neg_ids, scale: float = 1.0):
    """Fused Yes/No answer loss; see `binary_answer_loss_ref`.

    hidden [Q, D], weight [V, D] (the LM head), pos_ids/neg_ids [Q] -> loss [Q] fp32; reads two rows of
    weight per question. Gradients to hidden, and to weight when it requires grad (two rows per question).
    """
    _check("binary_answer_loss", hidden, weight, pos_ids=pos_ids, neg_ids=neg_ids)
    if _triton_ok("binary_answer_loss", hidden, weight):
        return torch.ops.npedit.binary_answer_loss_fwd(hidden, weight, pos_ids, neg_ids, float(scale))[0]
    return binary_answer_loss_ref(hidden, weight, pos_ids, neg_ids, scale)


def vocab_answer_loss(hidden, weight, target_ids, scale: float = 1.0):
    """Fused full-vocabulary answer loss; see `vocab_answer_loss_ref`.

    hidden [Q, D], weight [V, D], target_ids [Q] (-100 = ignored, loss 0) -> loss [Q] fp32, computed in
    vocabulary tiles with an online log-sum-exp; backward recomputes the tiles.
    """
    _check("vocab_answer_loss", hidden, weight, target_ids=target_ids)
    if _triton_ok("vocab_answer_loss", hidden, weight):
        return torch.ops.npedit.vocab_answer_loss_fwd(hidden, weight, target_ids, float(scale))[0]
    return vocab_answer_loss_ref(hidden, weight, target_ids, scale)
