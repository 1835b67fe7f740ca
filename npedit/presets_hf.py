"""Presets for training on real, published models (fetched from the Hugging Face hub on first use).

- `sd35_qwen25vl`: Stable Diffusion 3.5 medium (2.5B MMDiT, the closest public analogue of the
  paper's 2B DiT) as student, real score and fake score; Qwen2.5-VL-7B-Instruct as the judge.
- `flux_llava_ov`: FLUX.1-dev (12B) as student and scores; LLaVA-OneVision-7B (the paper's judge).
Both train at 512 px in bf16 under ZeRO-3 with selective activation checkpointing, the NP-Edit
defaults of METHOD.md (4-step student, DMD + VLM loss, 5 critic updates, AdamW 2e-5 with betas
(0, 0.9), clip 2) and a 5k-step reference-copy warm-up. Data is a JSONL manifest: set data.manifest.
Commands are in README.md ("Training on real models"); any field can be changed with --set.
"""
from __future__ import annotations

from collections.abc import Callable

from npedit.config import (
    Config,
    DataConfig,
    MethodConfig,
    OptimConfig,
    StudentConfig,
    TextConfig,
    TrainConfig,
    VLMConfig,
)

MANIFEST = "data/edits.jsonl"  # placeholder: --set data.manifest=<your manifest>


def _optim() -> OptimConfig:
    return OptimConfig(lr=2e-5, betas=[0.0, 0.9], weight_decay=0.0, clip=2.0)


def _train() -> TrainConfig:
    return TrainConfig(max_steps=15_000, warmup_stage_steps=5_000, precision="bf16", zero_stage=3, log_every=10,
                       sample_every=500, checkpoint_every=500, keep_checkpoints=2, num_samples=8)


def sd35_qwen25vl() -> Config:
    """SD3.5-medium student + Qwen2.5-VL-7B judge; 8 GPUs x 2 images per step."""
    return Config(
        student=StudentConfig(pretrained="stabilityai/stable-diffusion-3.5-medium", checkpointing="selective"),
        text=TextConfig(max_length=256),                       # T5 tokens, as StableDiffusion3Pipeline
        vlm=VLMConfig(pretrained="Qwen/Qwen2.5-VL-7B-Instruct", image_size=448),  # 256 image tokens
        data=DataConfig(kind="manifest", manifest=MANIFEST, image_size=512, batch_size=2),
        method=MethodConfig(time_shift=3.0),                   # the SD3.5 scheduler's shift
        student_optim=_optim(), fake_optim=_optim(), train=_train())


def flux_llava_ov() -> Config:
    """FLUX.1-dev student + LLaVA-OneVision-7B judge (the paper's); 8 GPUs x 1 image per step.

    FLUX.1-dev is guidance-distilled: the scores use its embedded guidance (student.guidance=3.5) and
    no extra classifier-free guidance (cfg_scale 1)."""
    return Config(
        student=StudentConfig(pretrained="black-forest-labs/FLUX.1-dev", checkpointing="selective", guidance=3.5),
        text=TextConfig(max_length=512),                       # T5 tokens, as FluxPipeline
        vlm=VLMConfig(pretrained="llava-hf/llava-onevision-qwen2-7b-ov-hf"),  # 384 px tiles (its own size)
        data=DataConfig(kind="manifest", manifest=MANIFEST, image_size=512, batch_size=1),
        method=MethodConfig(time_shift=1.88, cfg_scale=1.0, cfg_scale_hard=1.0),  # FLUX's shift at 512 px
        student_optim=_optim(), fake_optim=_optim(), train=_train())


HF_PRESETS: dict[str, Callable[[], Config]] = {"sd35_qwen25vl": sd35_qwen25vl, "flux_llava_ov": flux_llava_ov}
