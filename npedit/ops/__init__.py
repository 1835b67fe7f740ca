"""Fused ops for diffusion training. Each op has a `<op>_ref` PyTorch reference of the same signature.

`NPEDIT_OPS=ref|triton|cuda` forces a backend (see `npedit.ops.backend`).
"""
from npedit.ops.adaln import adaln_modulate, adaln_modulate_ref
from npedit.ops.answer_loss import (binary_answer_loss, binary_answer_loss_ref, vocab_answer_loss,
                                    vocab_answer_loss_ref)
from npedit.ops.attention import attention, attention_ref, attention_varlen, attention_varlen_ref
from npedit.ops.flow import dmd_loss, dmd_loss_ref, flow_noise, flow_noise_ref
from npedit.ops.patchify import vlm_patchify, vlm_patchify_ref

__all__ = [
    "adaln_modulate", "adaln_modulate_ref", "attention", "attention_ref", "attention_varlen",
    "attention_varlen_ref", "binary_answer_loss", "binary_answer_loss_ref", "dmd_loss", "dmd_loss_ref",
    "flow_noise", "flow_noise_ref", "vlm_patchify", "vlm_patchify_ref", "vocab_answer_loss",
    "vocab_answer_loss_ref",
]
