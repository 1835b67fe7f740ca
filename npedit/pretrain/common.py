"""Pieces shared by the pretraining loops: vocabulary, weight EMA, LR schedule, threads, device and
the worker-made batch stream (GPU runs)."""
from __future__ import annotations

import copy
import itertools
import math
import random
import time

import torch
from torch import nn

from npedit.build import default_words
from npedit.models.tokenizer import WordTokenizer


def shapes_tokenizer(extra_texts: list[str] = ()) -> WordTokenizer:
    """Word tokenizer of the shapes world: the trainer's default vocabulary plus `extra_texts`' words."""
    return WordTokenizer.from_words(default_words(list(extra_texts)))


def check_vocabulary(folder, tokenizer: WordTokenizer, what: str) -> None:
    """ValueError unless the tokenizer saved in `folder` has `tokenizer`'s vocabulary (the shapes world's)."""
    if WordTokenizer.from_pretrained(folder).vocab != tokenizer.vocab:
        raise ValueError(f"{what}: its tokenizer differs from the shapes world's")


class RunningMean:
    """0.98 x mean + 0.02 x value over per-step scalar tensors, kept on their device in float64: the
    training loop never waits for the GPU to log; `float(m)` reads it (a sync) when it is shown.
    start None: the first value starts the mean."""

    def __init__(self, start: float | None = None):
        self.value = start

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.value = x if self.value is None else 0.98 * self.value + 0.02 * x

    def __float__(self) -> float:
        return float("nan") if self.value is None else float(self.value)


class EMA:
    """Exponential moving average of a model's parameters (buffers copied): the weights that ship."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))   # short memory at the start
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1 - decay)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


# ---- running on a GPU with CPU workers making the data --------------------------------------------------

def pick_device(name: str) -> torch.device:
    """"cpu", "cuda" or "auto" (cuda when available) -> torch.device; clear error for cuda without a GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but torch sees no CUDA GPU (use --device cpu)")
    if name.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


class _BatchStream(torch.utils.data.IterableDataset):
    """Endless batches from make_batch(rng, step) in `workers` processes. Worker w makes the global
    steps w, w + W, w + 2W, ... (the DataLoader takes batches from its workers round-robin), each
    from its own random.Random(f"{seed}/worker{w}"), so the stream is fixed for a given W."""

    def __init__(self, make_batch, seed: str, workers: int):
        self.make_batch, self.seed, self.workers = make_batch, seed, max(1, workers)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        torch.set_num_threads(1)
        rng = random.Random(f"{self.seed}/worker{wid}")
        step = wid
        while True:
            yield self.make_batch(rng, step)
            step += self.workers


def batch_stream(make_batch, seed: str, workers: int):
    """Iterator of make_batch(rng, step) for step = 0, 1, 2, ...: in this process from
    random.Random(seed) when workers == 0 (bit-reproducible on a CPU), else from `workers` processes."""
    if workers <= 0:
        rng = random.Random(seed)
        return (make_batch(rng, step) for step in itertools.count())
    loader = torch.utils.data.DataLoader(_BatchStream(make_batch, seed, workers), batch_size=None,
                                         num_workers=workers, prefetch_factor=4, persistent_workers=True)
    return iter(loader)


class Schedule:
    """Progress of a run bounded by `steps` and optionally by `max_seconds` of training (whichever comes
    first): the LR warm-up/cosine and the stopping rule both read it, so a time-bounded run still
    decays its learning rate to the floor."""

    def __init__(self, steps: int, warmup: int, max_seconds: float = 0.0):
        self.steps, self.warmup, self.max_seconds = steps, warmup, max_seconds
        self.start = time.time()

    def progress(self, step: int) -> float:
        by_time = (time.time() - self.start) / self.max_seconds if self.max_seconds > 0 else 0.0
        return min(1.0, max(step / max(1, self.steps), by_time))

    def lr_scale(self, step: int, floor: float = 0.05) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * self.progress(step)))

    def done(self, step: int) -> bool:
        return step >= self.steps or self.progress(step) >= 1.0

    def set_lr(self, opt: torch.optim.Optimizer, base_lr: float, step: int) -> None:
        for group in opt.param_groups:
            group["lr"] = base_lr * self.lr_scale(step)
