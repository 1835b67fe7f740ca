"""Step-indexed batching: determinism, rank disjointness, epoch coverage, and the loader."""
import pytest
import torch

from npedit.data import EditBatch, EditExample, ShapesEditDataset, StepLoader, batch_indices, collate
from npedit.data.loader import steps_per_epoch


@pytest.mark.parametrize("n,bs,world", [(60, 5, 3), (64, 4, 4), (10, 10, 1), (7, 2, 2)])
def test_ranks_distinct_and_epoch_covered_once(n, bs, world):
    per_epoch = steps_per_epoch(n, bs, world)
    assert per_epoch == n // (bs * world)
    for epoch in range(3):
        seen = []
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            parts = [batch_indices(n, bs, step, r, world, seed=11) for r in range(world)]
            flat = [i for p in parts for i in p]
            assert all(len(p) == bs for p in parts)
            assert len(set(flat)) == len(flat)        # distinct across ranks within a step
            seen += flat
        assert len(set(seen)) == len(seen) == per_epoch * bs * world
        assert all(0 <= i < n for i in seen)
        if n % (bs * world) == 0:
            assert sorted(seen) == list(range(n))     # exactly once per epoch


def test_deterministic_seeded_and_epochs_differ():
    a = [batch_indices(100, 8, s, 1, 2, seed=3) for s in range(30)]
    assert a == [batch_indices(100, 8, s, 1, 2, seed=3) for s in range(30)]
    assert a != [batch_indices(100, 8, s, 1, 2, seed=4) for s in range(30)]
    spe = steps_per_epoch(100, 8, 2)
    assert batch_indices(100, 8, 0, 0, 2, 3) != batch_indices(100, 8, spe, 0, 2, 3)


def test_global_batch_larger_than_dataset():
    idx = [batch_indices(3, 4, s, r, 2, seed=0) for s in range(6) for r in range(2)]
    assert all(len(i) == 4 and all(0 <= j < 3 for j in i) for i in idx)
    stream = [j for i in idx for j in i]
    for k in range(0, 48, 3):                           # the stream is consecutive epoch permutations
        assert sorted(stream[k:k + 3]) == [0, 1, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        batch_indices(10, 2, 0, 2, 2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 0, 0, 0, 1, 0)
    with pytest.raises(ValueError, match="empty"):
        batch_indices(0, 2, 0, 0, 1, 0)
    with pytest.raises(ValueError, match="step"):
        batch_indices(10, 2, -1, 0, 1, 0)


def test_step_loader_reproducible_and_resumable():
    ds = ShapesEditDataset(num_examples=50, image_size=16, seed=0)
    loader = StepLoader(ds, batch_size=4, rank=1, world_size=2, seed=5)
    b = loader.batch(7)
    assert isinstance(b, EditBatch) and len(b) == 4 and b.images.shape == (4, 3, 16, 16)
    again = StepLoader(ShapesEditDataset(num_examples=50, image_size=16, seed=0), 4, 1, 2, seed=5).batch(7)
    assert torch.equal(b.images, again.images) and b.instructions == again.instructions
    assert b.target_captions == again.target_captions and b.categories == again.categories
    other_rank = StepLoader(ds, 4, 0, 2, seed=5).batch(7)
    assert set(b.instructions) != set(other_rank.instructions) or not torch.equal(b.images, other_rank.images)
    threaded = StepLoader(ds, 4, 1, 2, seed=5, num_threads=2).batch(7)
    assert torch.equal(threaded.images, b.images) and threaded.captions == b.captions
    it = iter(loader)
    assert next(it).instructions == loader.batch(0).instructions
    assert loader.epoch(loader.steps_per_epoch) == 1


def test_collate_and_to():
    exs = [EditExample(torch.rand(3, 8, 8), f"c{i}", f"i{i}", "add", f"o{i}", f"t{i}") for i in range(3)]
    b = collate(exs)
    assert b.images.shape == (3, 3, 8, 8) and b.instructions == ["i0", "i1", "i2"] and b.objects == ["o0", "o1", "o2"]
    h = b.to(dtype=torch.float16)
    assert h.images.dtype == torch.float16 and b.images.dtype == torch.float32 and h.captions == b.captions
    assert b.to("cpu").images.device.type == "cpu"
    assert b[1].instruction == "i1"
    with pytest.raises(ValueError, match="shape"):
        collate([exs[0], EditExample(torch.rand(3, 16, 16), "", "x", "add", "", "t")])
    with pytest.raises(ValueError):
        collate([])
    with pytest.raises(ValueError, match="category"):
        EditExample(torch.rand(3, 8, 8), "", "x", "Add", "", "t")
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        EditExample(torch.rand(8, 8), "", "x", "add", "", "t")
