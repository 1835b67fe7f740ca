"""Typed training configuration: nested dataclasses, `--set key=value` overrides, validation.

Every field has a default; presets (npedit/presets.py) return full configs. Unknown keys are
errors that name the key and list the valid ones.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from npedit.data.example import CATEGORIES
from npedit.data.shapes import SHAPES_CATEGORIES


class ConfigError(ValueError):
    """A configuration field is unknown, has the wrong type, or holds an invalid value."""


@dataclass
class StudentConfig:
    """The student DiT; the real score and the fake score start from the same base weights.

    `pretrained` is a built-in FlowDiT folder, or a diffusers pipeline (SD3 / SD3.5, FLUX.1 / Kontext)
    as a local folder or hub id: its family is read from the folder's model_index.json / config.json.
    dim/depth/heads/patch_size only shape a fresh built-in DiT."""
    pretrained: str = ""          # built-in FlowDiT folder | diffusers pipeline folder or hub id ("" = fresh)
    teacher: str = ""             # real-score (and fake-score) base weights ("" = same as `pretrained`)
    guidance: float = 3.5         # embedded guidance of guidance-distilled FLUX (FLUX.1-dev / Kontext-dev)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    patch_size: int = 2
    # none | full | selective: activation checkpointing per block of the student's unroll, the critic's
    # update and the frozen judge in the student loss (`npedit.ops.checkpoint`)
    checkpointing: str = "none"
    attention: str = "npedit"     # diffusers students: npedit (the fused op's processors) | sdpa (diffusers' own)
    reference_skip: bool = False  # built-in DiT only: also feed the reference by a zero-init channel skip (dit.py)

    def __post_init__(self):
        if self.checkpointing not in ("none", "full", "selective"):
            raise ConfigError(f"student.checkpointing must be none|full|selective, got {self.checkpointing!r}")
        if self.attention not in ("npedit", "sdpa"):
            raise ConfigError(f"student.attention must be npedit|sdpa, got {self.attention!r}")


@dataclass
class TextConfig:
    """Frozen text encoder of the student / scores (built-in: word tokenizer + small transformer)."""
    pretrained: str = ""          # folder with a saved TextEncoder + tokenizer.json ("" = fresh)
    dim: int = 64
    depth: int = 2
    max_length: int = 32          # prompt tokens (built-in encoder; T5 sequence length of SD3 / FLUX pipelines)


@dataclass
class VLMConfig:
    """Frozen VLM judge: a built-in TinyVLM, or a transformers VLM (Qwen2-VL, Qwen2.5-VL,
    LLaVA-OneVision, InternVL) as a local folder or hub id, its family read from config.json.
    dim/depth/vision_*/patch_size/max_text_len shape a fresh built-in TinyVLM only."""
    pretrained: str = ""          # TinyVLM folder + tokenizer.json | transformers VLM folder or hub id ("" = fresh)
    image_size: int = 0           # transformers judges: square size images are resized to (0 = the model's own)
    dim: int = 128
    depth: int = 3
    vision_dim: int = 64
    vision_depth: int = 2
    patch_size: int = 4
    max_text_len: int = 32
    answer_loss: str = "binary"   # binary (Yes/No logits, the paper) | vocab (full-vocabulary CE ablation)
    attention: str = "npedit"     # transformers judges: attn_implementation (npedit = the fused op; sdpa; eager)

    def __post_init__(self):
        if self.attention not in ("npedit", "sdpa", "eager"):
            raise ConfigError(f"vlm.attention must be npedit|sdpa|eager, got {self.attention!r}")
        if self.image_size < 0:
            raise ConfigError(f"vlm.image_size must be >= 0 (0 = the judge's own size), got {self.image_size}")
        if self.answer_loss not in ("binary", "vocab"):
            raise ConfigError(f"vlm.answer_loss must be binary|vocab, got {self.answer_loss!r}")


@dataclass
class CodecConfig:
    factor: int = 2               # built-in patch codec: latent = pixel_unshuffle(2x - 1, factor)


@dataclass
class DataConfig:
    kind: str = "shapes"          # shapes | manifest
    manifest: str = ""            # JSONL manifest (kind=manifest)
    image_size: int = 32
    num_examples: int = 100_000   # shapes world size
    batch_size: int = 4           # per rank (= DeepSpeed train_micro_batch_size_per_gpu)
    # shapes world: the edit categories trained on and scored by the oracle (balanced, in this order)
    categories: list[str] = field(default_factory=lambda: list(SHAPES_CATEGORIES))
    # shapes world: the DMD scores' caption of the wanted result names each object and the background
    # with this probability, as captions of natural images name only part of them; the judge's questions
    # keep the full caption. 1 = the full caption. Pair it with a teacher trained on such captions
    # (`npedit pretrain teacher --caption_keep`).
    dmd_caption_keep: float = 1.0

    def __post_init__(self):
        if not 0 <= self.dmd_caption_keep <= 1:
            raise ConfigError(f"data.dmd_caption_keep must be in [0, 1], got {self.dmd_caption_keep}")
        if self.dmd_caption_keep < 1 and self.kind != "shapes":
            raise ConfigError("data.dmd_caption_keep < 1 needs data.kind=shapes (a manifest's captions are "
                              "whatever it holds)")
        if self.kind not in ("shapes", "manifest"):
            raise ConfigError(f"data.kind must be shapes|manifest, got {self.kind!r}")
        if self.kind == "manifest" and not self.manifest:
            raise ConfigError("data.kind=manifest needs data.manifest=<path to a .jsonl manifest>")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        unknown = [c for c in self.categories if c not in SHAPES_CATEGORIES]
        if not self.categories or unknown or len(set(self.categories)) != len(self.categories):
            raise ConfigError(f"data.categories must be distinct shapes-world categories, a non-empty subset of "
                              f"{list(SHAPES_CATEGORIES)}; got {self.categories}")


DMD_CONDITIONS = ("target_caption", "unconditional")


@dataclass
class MethodConfig:
    """NP-Edit defaults from METHOD.md."""
    timesteps: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    time_shift: float = 1.0       # t' = s t / (1 + (s - 1) t)
    vlm_weight: float = 0.02
    dmd_weight: float = 1.0
    nothing_weight: float = 1.0
    nothing_prob: float = 0.01
    # stage 0: the share of samples prompted with the reference's caption (the paper's); the others get
    # the do-nothing instruction. A world whose captions pin the image down (shapes) needs the latter,
    # or the student learns to draw the caption and never to copy the reference.
    warmup_caption_prob: float = 1.0
    tau_start: float = 0.1        # tau(s) = min(1, tau_start + (1 - tau_start) s / tau_ramp_steps), s = NP-Edit stage step
    tau_ramp_steps: int = 2000
    cfg_scale: float = 3.5
    cfg_scale_hard: float = 7.5
    hard_categories: list[str] = field(default_factory=lambda: ["remove", "replace", "style", "action"])
    negative_prompt: str = "low quality, artifacts"
    # what the real and fake scores are prompted with: target_caption (the paper's: the reference's
    # caption for a do-nothing sample) | unconditional (the negative prompt for every sample, so DMD
    # keeps outputs realistic and says nothing about the edit; an ablation for worlds whose captions
    # pin the edited image down)
    dmd_condition: str = "target_caption"
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    fake_updates: int = 5         # N_aux critic updates per student update
    identity_question: bool = True
    question_style: str = "instruction"  # instruction (the paper's) | caption (generic questions; shapes judge)
    # random views shown to the judge (0 = off, the paper's): pixel-noise std, max shift in pixels
    judge_view_noise: float = 0.0
    judge_view_shift: int = 0

    def __post_init__(self):
        if not self.timesteps or any(not 0 < t <= 1 for t in self.timesteps):
            raise ConfigError(f"method.timesteps must be a non-empty list in (0, 1], got {self.timesteps}")
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ConfigError(f"method.timesteps must be strictly decreasing, got {self.timesteps}")
        unknown = [c for c in self.hard_categories if c not in CATEGORIES]
        if unknown:
            raise ConfigError(f"method.hard_categories has unknown categories {unknown}; known: {list(CATEGORIES)}")
        if not 0 <= self.dmd_t_min < self.dmd_t_max <= 1:
            raise ConfigError("method.dmd_t_min/dmd_t_max must satisfy 0 <= min < max <= 1")
        if self.question_style not in ("instruction", "caption"):
            raise ConfigError(f"method.question_style must be instruction|caption, got {self.question_style!r}")
        if self.dmd_condition not in DMD_CONDITIONS:
            raise ConfigError(f"method.dmd_condition must be one of {'|'.join(DMD_CONDITIONS)}, "
                              f"got {self.dmd_condition!r}")
        if self.fake_updates < 0:
            raise ConfigError("method.fake_updates must be >= 0")
        if self.judge_view_noise < 0 or self.judge_view_shift < 0:
            raise ConfigError(f"method.judge_view_noise and judge_view_shift must be >= 0, got "
                              f"{self.judge_view_noise}, {self.judge_view_shift}")
        if not 0 <= self.warmup_caption_prob <= 1:
            raise ConfigError(f"method.warmup_caption_prob must be in [0, 1], got {self.warmup_caption_prob}")


@dataclass
class OptimConfig:
    lr: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip: float = 2.0             # gradient clipping (= DeepSpeed gradient_clipping)
    schedule: str = "constant"    # constant | cosine
    warmup_steps: int = 0

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule must be constant|cosine, got {self.schedule!r}")
        if len(self.betas) != 2:
            raise ConfigError(f"betas must have two values, got {self.betas}")


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 200          # total steps, warm-up stage included
    warmup_stage_steps: int = 0   # reference-copy warm-up steps before the NP-Edit stage
    precision: str = "fp32"       # fp32 | bf16
    zero_stage: int = 3           # of the trainable engines; frozen models are always optimizer-less ZeRO-3
    log_every: int = 1
    sample_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    num_samples: int = 8          # rows of the sample grid
    tensorboard: bool = True
    oracle_eval_examples: int = 0  # shapes world: held-out edits scored by the oracle before and after training

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision must be fp32|bf16, got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 0..3, got {self.zero_stage}")
        if self.keep_checkpoints < 1:
            raise ConfigError("train.keep_checkpoints must be >= 1")


@dataclass
class Config:
    student: StudentConfig = field(default_factory=StudentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    student_optim: OptimConfig = field(default_factory=OptimConfig)
    fake_optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        return _build(cls, data, "")


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys here: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        kwargs[name] = _build(hint, value, f"{prefix}{name}.") if dataclasses.is_dataclass(hint) else value
    return cls(**kwargs)


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parse the text of `--set key=text` to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, list):
            numeric = bool(current) and isinstance(current[0], (int, float))
            if text.startswith("[") and (numeric or text[1:].lstrip().startswith('"')):
                value = json.loads(text)                      # JSON: [1.0, 0.5] or ["a", "b"]
            else:                                             # a,b  or  [a, b]
                value = [s.strip() for s in text.strip("[]").split(",") if s.strip()]
            if numeric:
                value = [type(current[0])(v) for v in value]
            return value
        return text
    except (ValueError, json.JSONDecodeError) as exc:
        expected = ("a list: a,b or [a, b] or JSON" if isinstance(current, list) else f"a {type(current).__name__}")
        raise ConfigError(f"--set {key}={text}: expected {expected}") from exc


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings; returns a new, re-validated Config."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node, cls = data, Config
        for depth, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if part not in fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise ConfigError(f"unknown config key {key!r}: {part!r} is not a field of {where}; "
                                  f"valid: {sorted(fields)}")
            hint = typing.get_type_hints(cls)[part]
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(hint):
                    raise ConfigError(f"--set {key}: {key!r} is a section; set one of its fields, e.g. {key}.<field>")
                node[part] = _parse_value(text, node[part], key)
            else:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"unknown config key {key!r}: {part!r} is a value, not a section")
                node, cls = node[part], hint
    return Config.from_dict(data)
