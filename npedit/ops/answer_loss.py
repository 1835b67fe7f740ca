"""VLM logit-to-loss: the judge's answer loss from answer-position hidden states.

Only one position per question and (for the Yes/No form) two rows of the LM head are needed;
the fused kernels never materialise [Q, V] logits. The references are the specification.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def binary_answer_loss(hidden, weight, pos_ids, neg_ids, scale: float = 1.0):
    """Fused Yes/No answer loss; see `binary_answer_loss_ref`."""
    return binary_answer_loss_ref(hidden, weight, pos_ids, neg_ids, scale)


def vocab_answer_loss(hidden, weight, target_ids, scale: float = 1.0):
    """Fused full-vocabulary answer loss; see `vocab_answer_loss_ref`."""
    return vocab_answer_loss_ref(hidden, weight, target_ids, scale)
