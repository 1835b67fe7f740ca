"""Run under torchrun (gloo): frozen tables partitioned by a ZeRO-3 engine, read row by row.

usage: zero_rows_check.py OUTPUT_DIR
Each rank asks for different rows (different counts too) of a frozen [V, D] embedding and computes the
Yes/No answer loss from two rows of a frozen LM head; it writes OUTPUT_DIR/rank<r>.pt with the rows,
the expected rows (the same table built on the CPU from the seed), the losses and their gradients to
the hidden states, and whether the tables stayed partitioned throughout.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from npedit import ops  # noqa: E402
from npedit.engine.distributed import init_distributed, shutdown_distributed  # noqa: E402
from npedit.engine.zero_rows import binary_answer_loss_rows, gather_rows, is_partitioned  # noqa: E402

V, D = 1001, 23   # V * D = 23023, divisible by neither 2 nor 3: the last partition is padded


class Tables(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.head = nn.Linear(D, V, bias=False)


def main() -> None:
    out = Path(sys.argv[1])
    rank, world, device = init_distributed()
    torch.manual_seed(0)
    model = Tables()
    expected_embed, expected_head = model.embed.weight.detach().clone(), model.head.weight.detach().clone()
    model.requires_grad_(False)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3,
              "stage3_param_persistence_threshold": 0}}
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    embed, head = engine.module.embed.weight, engine.module.head.weight
    partitioned_before = is_partitioned(embed) and is_partitioned(head)

    gen = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, V, (2 + rank, 5), generator=gen)          # a different batch per rank
    rows = gather_rows(embed, ids)                                    # [2 + rank, 5, D]
    hidden = torch.randn(3, D, generator=gen, requires_grad=True)
    pos, neg = torch.tensor([7, 7, 990]), torch.tensor([990, 990, 7])
    loss = binary_answer_loss_rows(hidden, head, pos, neg, 2.0)
    (grad,) = torch.autograd.grad(loss.sum(), hidden)
    hidden_ref = hidden.detach().clone().requires_grad_(True)
    loss_ref = ops.binary_answer_loss(hidden_ref, expected_head, pos, neg, 2.0)
    (grad_ref,) = torch.autograd.grad(loss_ref.sum(), hidden_ref)
    torch.save({"world": world, "rows": rows, "expected_rows": expected_embed[ids], "loss": loss.detach(),
                "loss_ref": loss_ref.detach(), "grad": grad, "grad_ref": grad_ref,
                "partitioned": partitioned_before and is_partitioned(embed) and is_partitioned(head)},
               out / f"rank{rank}.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main()
