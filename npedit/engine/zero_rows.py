"""Rows of a frozen, ZeRO-3 partitioned [V, D] table without gathering the table.

A token embedding or an LM head with a 152k-word vocabulary is the largest weight of a VLM or a
text encoder, yet a step reads a few hundred of its rows (the tokens of its prompts; the Yes/No rows
for the answer loss). ZeRO-3 gathers a module's whole weight when the module runs, so every rank
would hold the full table for a moment (and gloo's all-gather a second copy). Here each rank reads
the requested rows from its own partition and one all-reduce assembles them:

1. every rank may ask for different rows (its own batch): the ranks exchange their row ids
   (an all-reduce of the longest list, then an all-gather) and work on the sorted union U;
2. rank r holds the flat elements [r * P, (r + 1) * P) of the row-major table (P = the partition
   size, the last partition padded); it copies the elements of U's rows that fall in that range into
   a zero [|U|, D] buffer, and an all-reduce (sum) completes every row on every rank;
3. each rank picks its own rows out of U.

Without ZeRO-3 (plain tensors, weights already gathered, meta tensors) it is `F.embedding`, with
gradients to the table. The partitioned path is for frozen tables only: nothing flows back to them.
Callers read the table through its parameter (`module.token.weight`), never by calling the module
that owns it: that call would make ZeRO-3 gather the whole table first.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["binary_answer_loss_rows", "gather_rows", "is_partitioned"]


def is_partitioned(weight: torch.Tensor) -> bool:
    """A ZeRO-3 parameter whose full value is not gathered on this rank right now."""
    if not hasattr(weight, "ds_tensor") or weight.ds_tensor is None:
        return False
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return weight.ds_status != ZeroParamStatus.AVAILABLE


def _resident(part: torch.Tensor) -> bool:
    """This rank's partition is in memory (CPU or GPU), not swapped out to NVMe."""
    from deepspeed.runtime.zero.partition_parameters import PartitionedParamStatus

    return getattr(part, "status", PartitionedParamStatus.AVAILABLE) == PartitionedParamStatus.AVAILABLE \
        and part.numel() > 0


def _union_of_ranks(rows: torch.Tensor, group) -> torch.Tensor:
    """Sorted union [U] of every rank's row ids (1-D int64, may differ in length across ranks)."""
    n = torch.tensor([rows.numel()], dtype=torch.int64, device=rows.device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX, group=group)
    padded = torch.full((int(n),), -1, dtype=torch.int64, device=rows.device)
    padded[:rows.numel()] = rows
    everyone = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, padded, group=group)
    union = torch.unique(torch.cat(everyone))
    return union[union >= 0]


def gather_rows(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """weight [V, D] (any tensor, or a frozen ZeRO-3 parameter), rows int [...] -> weight[rows] [..., D].

    A collective on a partitioned weight: every rank of its process group must call it (each with its
    own rows)."""
    if not is_partitioned(weight):
        return F.embedding(rows, weight)
    if weight.requires_grad:
        raise ValueError("gather_rows reads a ZeRO-3 partitioned table row by row and gives it no gradient; "
                         "it is for frozen tables (requires_grad=False)")
    vocab, dim = weight.ds_shape
    group = weight.ds_process_group
    part = weight.ds_tensor                                              # [P] this rank's flat slice
    device = rows.device
    union = _union_of_ranks(rows.reshape(-1).to(torch.int64), group)    # [U]
    if union.numel() and (int(union.min()) < 0 or int(union.max()) >= vocab):
        raise IndexError(f"gather_rows: row ids must be in [0, {vocab}), got {int(union.min())}..{int(union.max())}")
    if not _resident(part):   # partition swapped out (NVMe offload): gather it the usual way
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight]):
            return F.embedding(rows, weight.detach()).clone()
    size = part.ds_numel if hasattr(part, "ds_numel") else part.numel()
    start = size * dist.get_rank(group)
    flat = union[:, None] * dim + torch.arange(dim, device=device)       # [U, D] flat element ids
    mine = (flat >= start) & (flat < start + size)
    out = torch.zeros(union.numel(), dim, dtype=part.dtype, device=device)
    out[mine] = part[(flat[mine] - start).to(part.device)].to(device)   # only these elements move (CPU offload)
    dist.all_reduce(out, group=group)
    return out[torch.searchsorted(union, rows.to(torch.int64))]          # [..., D]


def binary_answer_loss_rows(hidden: torch.Tensor, weight: torch.Tensor, pos_ids: torch.Tensor,
                            neg_ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """`ops.binary_answer_loss` reading only the answer rows of the LM head `weight` [V, D] (hidden
    [Q, D], pos_ids / neg_ids [Q] -> [Q] fp32). Call it with the weight, not through the head module,
    whose call would make ZeRO-3 gather the whole head."""
    from npedit import ops

    ids = torch.unique(torch.cat([pos_ids, neg_ids]))                   # [U], sorted
    rows = gather_rows(weight, ids)                                      # [U, D]
    return ops.binary_answer_loss(hidden, rows, torch.searchsorted(ids, pos_ids),
                                  torch.searchsorted(ids, neg_ids), scale)
