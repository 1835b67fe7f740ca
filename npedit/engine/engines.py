"""One DeepSpeed engine per network.

Trainable: student and fake score, each with its optimizer (AdamW from the config), LR schedule and
clipping, at the configured ZeRO stage. Frozen: real score, text encoder(s), VAE and VLM as
optimizer-less ZeRO-3 engines; the method calls their `.module` (calling a frozen engine object
inside a graph that is backpropagated raises in recent DeepSpeed; ZeRO-3's gather hooks live on the
sub-modules). The parameter-free built-in codec needs no engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from npedit.build import Models, RunModels
from npedit.config import Config, OptimConfig
from npedit.engine.ds_config import frozen_ds_config, trainable_ds_config


@dataclass
class Engines:
    student: Any            # DeepSpeedEngine: call it, .backward(loss), .step()
    fake: Any               # DeepSpeedEngine
    real: nn.Module         # frozen engine's .module
    modules: dict           # name -> frozen engine's .module (text encoder(s), VAE, VLM) or plain module (codec)
    frozen: list            # the frozen engine objects (kept alive: they own the ZeRO-3 hooks)

    def destroy(self) -> None:
        """End of a run: every engine releases its ZeRO-3 hooks and partitioned state, and a decoupled
        checkpoint engine finishes its writes, while the interpreter and the process groups are alive."""
        for engine in (self.student, self.fake, *self.frozen):
            engine.destroy()
        self.frozen.clear()

    @property
    def text_encoder(self) -> nn.Module | None:
        return self.modules.get("text_encoder")

    @property
    def vlm(self) -> nn.Module | None:
        return self.modules.get("vlm")

    @property
    def codec(self) -> nn.Module | None:
        return self.modules.get("codec")


def lr_lambda(optim: OptimConfig, total_steps: int, restart_at: int = 0) -> Callable[[int], float]:
    """Multiplier of the base LR at a scheduler step: linear warm-up, then constant or cosine to 0.
    With 0 < restart_at < total_steps the schedule runs twice, over [0, restart_at) and over
    [restart_at, total_steps): the student's two stages (reference-copy warm-up, NP-Edit) each get
    their own, as the two separate trainings of the paper do."""
    def stage_factor(step: int, total: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "cosine":
            span = max(1, total - optim.warmup_steps)
            progress = min(1.0, (step - optim.warmup_steps) / span)
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    def factor(step: int) -> float:
        if 0 < restart_at < total_steps:
            if step < restart_at:
                return stage_factor(step, restart_at)
            return stage_factor(step - restart_at, total_steps - restart_at)
        return stage_factor(step, total_steps)
    return factor


def _trainable(model: nn.Module, optim: OptimConfig, base_ds: dict, total_steps: int, restart_at: int = 0):
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    numel = sum(getattr(p, "ds_numel", p.numel()) for p in params)   # ds_numel: already ZeRO-3 partitioned
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, config=trainable_ds_config(base_ds, optim, numel),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, total_steps, restart_at)))
    return engine


def _frozen(model: nn.Module, base_ds: dict):
    import deepspeed

    model.requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, config=frozen_ds_config(base_ds))
    engine.eval()
    return engine


def build_engines(models: Models | RunModels, cfg: Config, base_ds: dict, device: torch.device) -> Engines:
    """Wrap every network; the student trains for cfg.train.max_steps scheduler steps, its LR schedule
    restarting at the NP-Edit stage, the fake score for method.fake_updates steps per NP-Edit step.
    Frozen engines are created in a fixed order (real score, then the frozen modules in their dict
    order), the same on every rank."""
    if isinstance(models, Models):  # the built-in networks
        models = RunModels(models.student, models.real, models.fake,
                           {"text_encoder": models.text_encoder, "vlm": models.vlm}, {"codec": models.codec})
    total = cfg.train.max_steps
    student = _trainable(models.student, cfg.student_optim, base_ds, total, restart_at=cfg.train.warmup_stage_steps)
    fake_total = max(1, (total - cfg.train.warmup_stage_steps) * max(1, cfg.method.fake_updates))
    fake = _trainable(models.fake, cfg.fake_optim, base_ds, fake_total)
    real = _frozen(models.real, base_ds)
    frozen = {name: _frozen(m, base_ds) for name, m in models.frozen.items()}
    modules = {name: engine.module for name, engine in frozen.items()}
    modules.update({name: m.to(device) for name, m in models.plain.items()})
    return Engines(student, fake, real.module, modules, [real, *frozen.values()])


def grad_norm(engine) -> float:
    """Global gradient norm of the last step (before clipping); NaN when DeepSpeed does not report it."""
    value = engine.get_global_grad_norm()
    if value is None:
        return float("nan")
    return float(value)
