"""One NP-Edit training step outside DeepSpeed, with named phases, on any device.

It makes the trainer's calls in the trainer's order (`Trainer.npedit_step`): the student loss
(text encoders, k unrolled student passes, decode, judge, real / fake scores, DMD), its backward and
optimizer step, then `method.fake_updates` critic updates (student samples without gradient, fake
score flow matching, backward, step). Torch AdamW stands in for the DeepSpeed engines; with
`optimizers=None` gradients are dropped as soon as they are accumulated (what ZeRO's bucketed
reduce-scatter does with them) and no optimizer runs (the planner accounts for both).

Phases (see `MemoryTracker.phase`): "text encoders", "student pass 1..k", "encode", "decode",
"judge", "scores", "student backward", "student step", "critic sample", "critic forward",
"critic backward", "critic step".
"""
from __future__ import annotations

import contextlib

import torch

from npedit.config import Config
from npedit.data.example import EditBatch, collate
from npedit.method.schedule import sample_unroll_depth, student_timesteps
from npedit.method.step import fake_score_loss, npedit_student_loss, student_samples

__all__ = ["Probe", "drop_grads", "make_optimizers", "probe_batch", "step_with_passes", "training_step"]


class Probe:
    """Named phases on a tracker (or nothing when the tracker is None)."""

    def __init__(self, tracker=None):
        self.tracker = tracker
        self.passes = 0

    def __call__(self, name: str):
        return self.tracker.phase(name) if self.tracker is not None else contextlib.nullcontext()


class _DiffusionProbe:
    """The diffusion adapter with its calls marked as phases."""

    def __init__(self, inner, probe: Probe, student):
        self.inner, self.probe, self.student = inner, probe, student

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def cat_text(self, conds):
        return self.inner.cat_text(conds)

    def encode_text(self, prompts):
        with self.probe("text encoders"):
            return self.inner.encode_text(prompts)

    def encode_images(self, images):
        with self.probe("encode"):
            return self.inner.encode_images(images)

    def decode_latents(self, latents):
        with self.probe("decode"):
            return self.inner.decode_latents(latents)

    def velocity(self, model, x_t, t, text, ref=None):
        if model is self.student and torch.is_grad_enabled():
            self.probe.passes += 1
            name = f"student pass {self.probe.passes}"
        elif model is self.student:
            name = "critic sample"
        else:
            name = "scores" if not torch.is_grad_enabled() else "critic forward"
        with self.probe(name):
            return self.inner.velocity(model, x_t, t, text, ref)


class _JudgeProbe:
    def __init__(self, inner, probe: Probe):
        self.inner, self.probe = inner, probe

    def answer_losses(self, questions, edited, refs, scale):
        with self.probe("judge"):
            return self.inner.answer_losses(questions, edited, refs, scale)


def make_optimizers(sn, cfg: Config, foreach: bool | None = None) -> dict[str, torch.optim.Optimizer]:
    """torch AdamW per trainable network with the config's hyper-parameters."""
    def adamw(model, o):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas),
                                 eps=o.eps, weight_decay=o.weight_decay, foreach=foreach)
    return {"student": adamw(sn.student, cfg.student_optim), "fake": adamw(sn.fake, cfg.fake_optim)}


@contextlib.contextmanager
def drop_grads(*models):
    """Gradients vanish as soon as they are accumulated (ZeRO reduces them into its buckets)."""
    handles = [p.register_post_accumulate_grad_hook(_clear) for m in models for p in m.parameters()
               if p.requires_grad]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _clear(p: torch.Tensor) -> None:
    p.grad = None


def step_with_passes(cfg: Config, passes: int, start: int = 0) -> int:
    """A step number whose unroll makes `passes` student passes with gradient (1, or 2 for any k > 1)."""
    n = len(student_timesteps(cfg.method))
    if passes > 1 and n < 2:
        raise ValueError(f"method.timesteps has one step: the unroll always makes 1 pass, not {passes}")
    for step in range(start, start + 10_000):
        k = sample_unroll_depth(cfg.train.seed, step, n)
        if (k > 1) == (passes > 1):
            return step
    raise RuntimeError("no step found with the wanted unroll depth")


def training_step(sn, cfg: Config, batch: EditBatch, step: int, optimizers: dict | None = None,
                  tracker=None, critic: bool = True) -> dict:
    """One NP-Edit step of `sn` (StepNetworks); -> {"loss": loss tensor (detached), "passes": k passes}."""
    probe = Probe(tracker)
    nets = sn.nets
    diffusion, judge = nets.diffusion, nets.judge
    nets.diffusion = _DiffusionProbe(diffusion, probe, sn.student)
    nets.judge = _JudgeProbe(judge, probe)
    context = drop_grads(sn.student, sn.fake) if optimizers is None else contextlib.nullcontext()
    try:
        with context:
            with probe("student loss"):
                loss, _, _ = npedit_student_loss(nets, batch, step, cfg, rank=0)
            with probe("student backward"):
                loss.backward()
            _step(optimizers, "student", probe)
            if critic:
                for j in range(cfg.method.fake_updates):
                    stream = step * (1 + cfg.method.fake_updates) + 1 + j
                    x0, cap = student_samples(nets, batch, step, cfg, 0, stream_step=stream)
                    loss_fake = fake_score_loss(nets, x0, cap, cfg, 0, stream_step=stream)
                    del x0, cap
                    with probe("critic backward"):
                        loss_fake.backward()
                    del loss_fake
                    _step(optimizers, "fake", probe)
    finally:
        nets.diffusion, nets.judge = diffusion, judge
    return {"loss": loss.detach(), "passes": probe.passes}


def _step(optimizers: dict | None, name: str, probe: Probe) -> None:
    if optimizers is None:
        return
    with probe(f"{'student' if name == 'student' else 'critic'} step"):
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)


def probe_batch(cfg: Config, dataset=None, device: str | torch.device = "cpu") -> EditBatch:
    """data.batch_size requests for a step: the first examples of the configured world (or manifest), the
    images moved to `device`. Without a dataset: replace-edits of a uniform gray image (two-image
    questions, the most judge tokens)."""
    b = cfg.data.batch_size
    if dataset is not None:
        batch = collate([dataset[i % len(dataset)] for i in range(b)])
    else:
        s = cfg.data.image_size
        batch = EditBatch(images=torch.full((b, 3, s, s), 0.5), captions=["a photo of a red car on a street"] * b,
                          instructions=["replace the red car with a blue bicycle"] * b, categories=["replace"] * b,
                          objects=["red car"] * b, target_captions=["a photo of a blue bicycle on a street"] * b)
    return batch.to(device)
