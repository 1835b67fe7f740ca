"""Reading rows of frozen ZeRO-3 tables without gathering them (`npedit.engine.zero_rows`)."""
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import run
from npedit.engine.distributed import free_port
from npedit import ops
from npedit.engine.zero_rows import binary_answer_loss_rows, gather_rows, is_partitioned


def test_plain_tables_are_an_embedding_lookup_with_gradients():
    weight = torch.randn(37, 8, requires_grad=True)
    ids = torch.tensor([[3, 3, 36], [0, 5, 3]])
    got = gather_rows(weight, ids)
    assert not is_partitioned(weight)
    torch.testing.assert_close(got, F.embedding(ids, weight), rtol=0, atol=0)
    (g,) = torch.autograd.grad(got.square().sum(), weight)
    (want,) = torch.autograd.grad(F.embedding(ids, weight).square().sum(), weight)
    torch.testing.assert_close(g, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_binary_loss_from_the_answer_rows_equals_the_full_head(dtype):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(123, 16, generator=gen).to(dtype).requires_grad_(True)
    hidden = torch.randn(5, 16, generator=gen).to(dtype).requires_grad_(True)
    pos, neg = torch.tensor([4, 4, 100, 7, 122]), torch.tensor([100, 7, 4, 4, 0])
    got = binary_answer_loss_rows(hidden, weight, pos, neg, 1.5)
    want = ops.binary_answer_loss(hidden, weight, pos, neg, 1.5)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(got.sum(), [hidden, weight]), torch.autograd.grad(want.sum(), [hidden, weight])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.multiproc
@pytest.mark.parametrize("world", [2, 3])
def test_partitioned_tables_give_every_rank_its_rows_without_gathering(tmp_path, world):
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
         str(free_port()), "tests/workers/zero_rows_check.py", str(tmp_path)], timeout=600)
    for rank in range(world):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert r["world"] == world and r["partitioned"]          # never gathered whole
        assert r["rows"].shape == (2 + rank, 5, 23)
        torch.testing.assert_close(r["rows"], r["expected_rows"], rtol=0, atol=0)
        torch.testing.assert_close(r["loss"], r["loss_ref"], rtol=0, atol=0)
        torch.testing.assert_close(r["grad"], r["grad_ref"], rtol=0, atol=0)
