"""Run presets: Python functions returning a full Config (override any field with --set)."""
from __future__ import annotations

from typing import Callable

from npedit.config import (Config, ConfigError, DataConfig, MethodConfig, OptimConfig, StudentConfig, TextConfig,
                           TrainConfig, VLMConfig)


def shapes() -> Config:
    """The built-in shapes world on a CPU: warm-start from the shipped toy teacher, reference-copy
    warm-up, then NP-Edit with the shipped toy judge asked generic (caption-style) questions; the
    oracle scores held-out edits before and after. About 8 minutes on 2 cores.

    The warm-up prompts the do-nothing instruction, not the caption: a shapes caption pins the whole
    image down, so a student prompted with it learns to draw the caption and never to copy the
    reference (oracle preservation after 1,200 warm-up steps: 35% this way, 17.5% with half captions)."""
    from npedit.assets import asset_path

    return Config(
        student=StudentConfig(pretrained=str(asset_path("shapes/teacher"))),
        text=TextConfig(pretrained=str(asset_path("shapes/text_encoder")), max_length=32),
        # caption questions of 3-object scenes are 36 tokens with <bos>
        vlm=VLMConfig(pretrained=str(asset_path("shapes/judge")), max_text_len=40),
        data=DataConfig(kind="shapes", image_size=32, batch_size=4),
        method=MethodConfig(question_style="caption", tau_ramp_steps=100, fake_updates=1, warmup_caption_prob=0.0),
        student_optim=OptimConfig(lr=5e-4, schedule="cosine", warmup_steps=10),
        fake_optim=OptimConfig(lr=2e-4),
        train=TrainConfig(max_steps=1500, warmup_stage_steps=1200, sample_every=300, checkpoint_every=750,
                          oracle_eval_examples=120),
    )


def shapes_tiny() -> Config:
    """Smallest useful models: tests and smoke runs (seconds per step on a CPU)."""
    return Config(
        student=StudentConfig(dim=32, depth=2, heads=2),
        text=TextConfig(dim=16, depth=1),
        vlm=VLMConfig(dim=32, depth=1, vision_dim=16, vision_depth=1, patch_size=4),
        data=DataConfig(kind="shapes", image_size=16, batch_size=2, num_examples=64),
        method=MethodConfig(tau_ramp_steps=10, fake_updates=1, nothing_prob=0.25),
        student_optim=OptimConfig(lr=1e-3),
        fake_optim=OptimConfig(lr=1e-3),
        train=TrainConfig(max_steps=4, warmup_stage_steps=1, sample_every=2, checkpoint_every=2, num_samples=2,
                          tensorboard=False),
    )


PRESETS: dict[str, Callable[[], Config]] = {"shapes": shapes, "shapes_tiny": shapes_tiny}
PRESETS.update(__import__("npedit.presets_hf", fromlist=["HF_PRESETS"]).HF_PRESETS)  # real models (presets_hf.py)


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name]()
