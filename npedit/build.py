"""Build every network of a run from the config.

Student, real score and fake score start from the same base weights (`student.pretrained`, the
real score from `student.teacher` when given). The family of each side is read from the folder's
config (npedit/adapters/select.py): the built-in models, a diffusers student pipeline (SD3, FLUX),
a transformers VLM judge (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL).

`ModelPlan(cfg, ...)` does every check that needs no weights (folders, architectures, sizes,
tokenizers, prompt lengths) and builds the cheap built-in models; this happens before distributed
initialisation, so bad input fails fast. `ModelPlan.build(base_ds)` then loads the published models,
created under `deepspeed.zero.Init` / `HfDeepSpeedConfig` when sharded (which needs torch.distributed).
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npedit.config import Config, ConfigError
from npedit.data.example import EditBatch, EditExample, collate
from npedit.data.shapes import vocabulary as shapes_vocabulary
from npedit.method.questions import question_vocabulary
from npedit.models.codec import CodecConfig as PatchCodecConfig, PatchCodec
from npedit.models.dit import DiTConfig, FlowDiT
from npedit.models.text_encoder import TextEncoder, TextEncoderConfig
from npedit.models.tokenizer import WordTokenizer
from npedit.models.vlm import TinyVLM, VLMConfig as TinyVLMConfig


@dataclass
class Models:
    """The built-in networks. A side loaded from a published model instead is None here."""
    student: nn.Module | None
    real: nn.Module | None
    fake: nn.Module | None
    text_encoder: nn.Module | None
    text_tokenizer: WordTokenizer | None
    vlm: nn.Module | None
    vlm_tokenizer: WordTokenizer | None
    codec: nn.Module | None


def _folder(path: str, field: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{field}={path!r}: no such folder")
    return folder


def split_words(text: str) -> list[str]:
    """Word-level split used by the built-in tokenizers (lower-case words and punctuation marks)."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def default_words(manifest_texts: list[str] | None = None) -> list[str]:
    """Vocabulary of fresh word-level tokenizers: the shapes world, the question templates, the
    negative prompt, plus the texts of a manifest when training on one."""
    words = set(shapes_vocabulary()) | set(question_vocabulary())
    words |= set(split_words("low quality, artifacts do nothing"))
    for text in manifest_texts or []:
        words |= set(split_words(text))
    return sorted(words)


def _tokenizer(pretrained: str, field: str, words: list[str]) -> WordTokenizer:
    if pretrained:
        return WordTokenizer.from_pretrained(_folder(pretrained, field))
    return WordTokenizer.from_words(words)


def build_models(cfg: Config, words: list[str] | None = None, student_side: bool = True,
                 judge_side: bool = True) -> Models:
    """Create or load the built-in networks on the CPU in fp32 (engines move and cast them).

    student_side / judge_side False: that side comes from a published model (left None here)."""
    torch.manual_seed(cfg.train.seed)  # fresh inits are identical on every rank
    words = words or default_words()
    if not student_side:
        vlm, vlm_tokenizer = _builtin_judge(cfg, words) if judge_side else (None, None)
        return Models(None, None, None, None, None, vlm, vlm_tokenizer, None)
    codec = PatchCodec(PatchCodecConfig(factor=cfg.codec.factor))
    if cfg.data.image_size % cfg.codec.factor:
        raise ConfigError(f"data.image_size={cfg.data.image_size} is not a multiple of codec.factor={cfg.codec.factor}")
    latent_size = cfg.data.image_size // cfg.codec.factor

    text_tokenizer = _tokenizer(cfg.text.pretrained, "text.pretrained", words)
    if cfg.text.pretrained:
        text_encoder = TextEncoder.from_pretrained(_folder(cfg.text.pretrained, "text.pretrained"))
    else:
        text_encoder = TextEncoder(TextEncoderConfig(vocab_size=text_tokenizer.vocab_size, dim=cfg.text.dim,
                                                     depth=cfg.text.depth, max_length=cfg.text.max_length))

    if cfg.student.pretrained:
        student = FlowDiT.from_pretrained(_folder(cfg.student.pretrained, "student.pretrained"))
    else:
        student = FlowDiT(DiTConfig(in_channels=codec.latent_channels, sample_size=latent_size,
                                    patch_size=cfg.student.patch_size, dim=cfg.student.dim, depth=cfg.student.depth,
                                    heads=cfg.student.heads, text_dim=text_encoder.config.dim))
    check_student_fits(student, codec, latent_size, text_encoder.config.dim, "student.pretrained")
    if cfg.student.teacher:
        real = FlowDiT.from_pretrained(_folder(cfg.student.teacher, "student.teacher"))
        check_student_fits(real, codec, latent_size, text_encoder.config.dim, "student.teacher")
    else:
        real = copy.deepcopy(student)
    fake = copy.deepcopy(real)
    if cfg.student.reference_skip:   # after the copies: the scores are text-only and never see a reference
        student = student.with_reference_skip()
    vlm, vlm_tokenizer = _builtin_judge(cfg, words) if judge_side else (None, None)
    set_run_checkpointing(student, fake, vlm, cfg.student.checkpointing)
    for model in (real, fake, text_encoder, vlm):
        if model is not None:
            model.requires_grad_(False)
    fake.requires_grad_(True)
    return Models(student, real, fake, text_encoder, text_tokenizer, vlm, vlm_tokenizer, codec)


def set_checkpointing(model: nn.Module, mode: str) -> None:
    """Activation checkpointing (none|full|selective), per block, of a student or critic (a built-in
    FlowDiT or a diffusers editor: `DiffusersEditor.set_checkpointing`) or a judge (the built-in TinyVLM
    or a transformers `JudgeModule`)."""
    if hasattr(model, "set_checkpointing"):
        model.set_checkpointing(mode)
    else:
        model.checkpointing = mode


def set_run_checkpointing(student: nn.Module, fake: nn.Module, vlm: nn.Module | None, mode: str) -> None:
    """One mode for the trained networks (the student's unroll, the critic's update) and the frozen
    judge `vlm` the student loss backpropagates through (None: set later): it changes what backward
    keeps, never a value or a gradient (npedit plan models the same)."""
    for model in (student, fake, vlm):
        if model is not None:
            set_checkpointing(model, mode)


def _builtin_judge(cfg: Config, words: list[str]) -> tuple[nn.Module, WordTokenizer]:
    vlm_tokenizer = _tokenizer(cfg.vlm.pretrained, "vlm.pretrained", words)
    if cfg.vlm.pretrained:
        vlm = TinyVLM.from_pretrained(_folder(cfg.vlm.pretrained, "vlm.pretrained"))
    else:
        vlm = TinyVLM(TinyVLMConfig(vocab_size=vlm_tokenizer.vocab_size, image_size=cfg.data.image_size,
                                    patch_size=cfg.vlm.patch_size, vision_dim=cfg.vlm.vision_dim,
                                    vision_depth=cfg.vlm.vision_depth, dim=cfg.vlm.dim, depth=cfg.vlm.depth,
                                    max_text_len=cfg.vlm.max_text_len))
    if vlm.config.vocab_size != vlm_tokenizer.vocab_size:
        raise ConfigError(f"vlm.pretrained: the VLM's vocab_size {vlm.config.vocab_size} does not match its "
                          f"tokenizer ({vlm_tokenizer.vocab_size} words)")
    return vlm, vlm_tokenizer


def check_student_fits(model: FlowDiT, codec: PatchCodec, latent_size: int, text_dim: int, field: str) -> None:
    c = model.config
    if c.in_channels != codec.latent_channels:
        raise ConfigError(f"{field}: the DiT takes {c.in_channels} latent channels but the codec (factor "
                          f"{codec.config.factor}) makes {codec.latent_channels}")
    if c.sample_size != latent_size:
        raise ConfigError(f"{field}: the DiT was built for {c.sample_size}x{c.sample_size} latents but "
                          f"data.image_size / codec.factor = {latent_size}")
    if c.text_dim != text_dim:
        raise ConfigError(f"{field}: the DiT expects text width {c.text_dim}, the text encoder gives {text_dim}")


# ---------------------------------------------------------------------------------------------------- any family


@dataclass
class RunModels:
    """Every network of a run, of any family, before the engines wrap them."""
    student: nn.Module
    real: nn.Module
    fake: nn.Module
    frozen: dict[str, nn.Module]                 # each an optimizer-less ZeRO-3 engine (text encoders, VAE, VLM)
    plain: dict[str, nn.Module] = field(default_factory=dict)  # no parameters, no engine (built-in codec)
    plan: Any = None                             # the ModelPlan that built them

    @property
    def builtin(self) -> Models | None:
        return self.plan.builtin if self.plan is not None else None


def judge_probe_batch(dataset, limit: int = 32) -> EditBatch:
    """Requests whose judge questions are the longest the run will ask (prompt-length check before training):
    the longest instruction / object / captions of a manifest, or the first examples of a generated world."""
    records = getattr(dataset, "records", None)
    if records is None:
        return collate([dataset[i] for i in range(min(limit, len(dataset)))])
    picked: dict[int, dict] = {}
    for key in ("instruction", "object", "target_caption", "caption"):
        for r in sorted(records, key=lambda r: len(r.get(key, "")), reverse=True)[:2]:
            picked[id(r)] = r
    blank = torch.zeros(3, 1, 1)
    return collate([EditExample(blank, r["caption"], r["instruction"], r["category"], r["object"],
                                r["target_caption"]) for r in picked.values()])


class ModelPlan:
    """The families of a run and every check that needs no weights; `build` creates the networks."""

    def __init__(self, cfg: Config, words: list[str] | None = None, dataset=None):
        from npedit.adapters.select import detect_student, detect_vlm

        self.cfg = cfg
        self.student_family = detect_student(cfg.student.pretrained, "student.pretrained")
        self.vlm_family = detect_vlm(cfg.vlm.pretrained, "vlm.pretrained")
        self.student_spec = self.judge_spec = None
        if self.student_family != "builtin":
            if cfg.student.reference_skip:   # refused before the pipeline's configs are read
                raise ConfigError("student.reference_skip is a built-in DiT option; "
                                  f"{cfg.student.pretrained!r} is a diffusers {self.student_family} pipeline")
            from npedit.adapters.diffusers_family import DiffusersStudentSpec
            self.student_spec = DiffusersStudentSpec(cfg.student.pretrained, cfg.student.teacher, cfg.data.image_size,
                                                     cfg.text.max_length, cfg.student.guidance,
                                                     attention=cfg.student.attention)
        elif cfg.student.teacher and detect_student(cfg.student.teacher, "student.teacher") != "builtin":
            raise ConfigError("student.teacher is a diffusers pipeline but student.pretrained is a built-in DiT")
        if self.vlm_family != "builtin":
            from npedit.adapters.hf_judge import HFJudgeSpec
            self.judge_spec = HFJudgeSpec(cfg.vlm.pretrained, cfg.vlm.image_size, cfg.vlm.answer_loss,
                                           attention=cfg.vlm.attention)
            if dataset is not None and len(dataset):
                from npedit.method.questions import build_questions
                questions, _ = build_questions(judge_probe_batch(dataset), cfg.method.identity_question,
                                               style=cfg.method.question_style)
                self.judge_spec.check_questions(questions)
        builtin_needed = self.student_spec is None or self.judge_spec is None
        self.builtin = build_models(cfg, words, self.student_spec is None, self.judge_spec is None) \
            if builtin_needed else None

    @property
    def loads_published(self) -> bool:
        return self.student_spec is not None or self.judge_spec is not None

    def build(self, base_ds: dict | None = None) -> RunModels:
        """Load the published models; with base_ds (needs torch.distributed), frozen ones are created
        ZeRO-3-partitioned, and the trainable ones too when train.zero_stage is 3."""
        from npedit.engine.ds_config import frozen_ds_config

        cfg, b = self.cfg, self.builtin
        zero3 = frozen_ds_config(base_ds) if base_ds is not None else None
        zero3_trainable = zero3 if cfg.train.zero_stage == 3 else None
        bf16 = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        frozen: dict[str, nn.Module] = {}
        plain: dict[str, nn.Module] = {}
        if self.student_spec is None:
            student, real, fake = b.student, b.real, b.fake
            frozen["text_encoder"] = b.text_encoder
            plain["codec"] = b.codec
        else:
            spec = self.student_spec
            student = spec.load_transformer(spec.source, torch.float32 if zero3_trainable is None else bf16,
                                            zero3_trainable)
            real = spec.load_transformer(spec.teacher, bf16, zero3).requires_grad_(False).eval()
            fake = spec.load_transformer(spec.teacher, torch.float32 if zero3_trainable is None else bf16,
                                         zero3_trainable)
            # large critics need it as much as the unrolled student; a built-in judge got it in build_models
            set_run_checkpointing(student, fake, None, cfg.student.checkpointing)
            frozen.update(spec.load_frozen(bf16, zero3))
        if self.judge_spec is None:
            frozen["vlm"] = b.vlm
        else:   # frozen, with grad in the student loss: its layers in the run's mode too
            frozen["vlm"] = self.judge_spec.build(bf16, zero3)
            set_checkpointing(frozen["vlm"], cfg.student.checkpointing)
        return RunModels(student, real, fake, frozen, plain, self)

    def networks(self, modules: dict[str, nn.Module]) -> tuple[Any, Any]:
        """(diffusion, judge) adapters over the frozen modules (the engines' `.module`s, or plain modules)."""
        from npedit.adapters.builtin import BuiltinDiffusion, BuiltinJudge

        cfg, b = self.cfg, self.builtin
        if self.student_spec is None:
            diffusion = BuiltinDiffusion(modules["text_encoder"], b.text_tokenizer, modules["codec"],
                                         cfg.text.max_length)
        else:
            diffusion = self.student_spec.diffusion(modules)
        if self.judge_spec is None:
            judge = BuiltinJudge(modules["vlm"], b.vlm_tokenizer, cfg.vlm.max_text_len, cfg.vlm.answer_loss)
        else:
            from npedit.adapters.hf_judge import HFJudge
            judge = HFJudge(modules["vlm"], self.judge_spec)
        return diffusion, judge

    def export(self, export: Path, student: nn.Module, modules: dict[str, nn.Module], rank: int, save) -> None:
        """What inference needs, consolidated (collective: every rank calls it; `save` gathers ZeRO-3 shards)."""
        if self.student_spec is None:
            save(student, export / "student", rank)
            save(modules["text_encoder"], export / "text_encoder", rank)
            if rank == 0:
                self.builtin.text_tokenizer.save_pretrained(export / "text_encoder")
                modules["codec"].save_pretrained(export / "codec")
            return
        save(student.transformer, export / "student", rank)  # diffusers save_pretrained of the transformer
        if rank == 0:
            source = self.student_spec.source
            local = Path(source).expanduser()
            pipeline = str(local.resolve()) if local.exists() else source
            (export / "pipeline.json").write_text(json.dumps(
                {"family": self.student_spec.family, "pipeline": pipeline,
                 "note": "text encoders, tokenizers and VAE are read from this pipeline"}, indent=2))
