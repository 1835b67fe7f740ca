"""Deterministic, resumable batching: the data position IS the step number.

Each epoch is a permutation of the dataset seeded by (seed, epoch). With G = batch_size * world_size
<= N examples, an epoch has N // G steps (the last N % G entries of its permutation are dropped,
different ones every epoch), step s takes entries [(s mod steps) * G, +G) of epoch s // steps, and
rank r keeps [r * batch_size, +batch_size) of that global batch: ranks see distinct examples within a
step, and every step is a pure function of (N, batch_size, world_size, seed, step).

When G > N (a dataset smaller than one global batch) repeats are unavoidable: the global batch is
then entries [s * G, +G) of the concatenation of epoch permutations 0, 1, 2, ...
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from npedit.data.example import EditBatch, collate


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of range(num_examples) for (seed, epoch); read-only, cached."""
    seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)])
    perm = np.random.Generator(np.random.PCG64(seq)).permutation(num_examples)
    perm.setflags(write=False)
    return perm


def _check(num_examples: int, batch_size: int, step: int, rank: int, world_size: int) -> None:
    if num_examples < 1:
        raise ValueError(f"the dataset is empty (num_examples={num_examples})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def steps_per_epoch(num_examples: int, batch_size: int, world_size: int = 1) -> int:
    """Steps that make one pass over the data (0 < ...; 1-batch 'epochs' when G > N)."""
    return max(1, num_examples // (batch_size * world_size))


def global_batch_indices(num_examples: int, batch_size: int, step: int, world_size: int, seed: int) -> list[int]:
    """All ranks' indices of `step`, rank 0's first ([batch_size * world_size])."""
    _check(num_examples, batch_size, step, 0, world_size)
    g = batch_size * world_size
    if g <= num_examples:
        per_epoch = num_examples // g
        epoch, offset = divmod(step, per_epoch)
        return epoch_permutation(num_examples, seed, epoch)[offset * g:(offset + 1) * g].tolist()
    start = step * g
    out = []
    while len(out) < g:
        epoch, offset = divmod(start + len(out), num_examples)
        take = min(g - len(out), num_examples - offset)
        out += epoch_permutation(num_examples, seed, epoch)[offset:offset + take].tolist()
    return out


def batch_indices(num_examples: int, batch_size: int, step: int, rank: int, world_size: int,
                  seed: int) -> list[int]:
    """This rank's dataset indices for `step` (see the module docstring)."""
    _check(num_examples, batch_size, step, rank, world_size)
    full = global_batch_indices(num_examples, batch_size, step, world_size, seed)
    return full[rank * batch_size:(rank + 1) * batch_size]


class StepLoader:
    """batch(step) -> this rank's EditBatch of that step; same step -> same batch on any run.

    num_threads > 0 loads the examples of a batch in a thread pool (worthwhile for image files).
    """

    def __init__(self, dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_threads: int = 0):
        _check(len(dataset), batch_size, 0, rank, world_size)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self._pool = ThreadPoolExecutor(num_threads) if num_threads > 0 else None

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.dataset), self.batch_size, self.world_size)

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        return batch_indices(len(self.dataset), self.batch_size, step, self.rank, self.world_size, self.seed)

    def batch(self, step: int) -> EditBatch:
        idx = self.indices(step)
        if self._pool is None:
            examples = [self.dataset[i] for i in idx]
        else:
            examples = list(self._pool.map(self.dataset.__getitem__, idx))
        return collate(examples)

    def __iter__(self):
        """Batches from step 0 on, forever (the caller counts steps; prefer batch(step) to resume)."""
        step = 0
        while True:
            yield self.batch(step)
            step += 1
