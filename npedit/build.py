"""Build every network of a run from the config (built-in model family).

Student, real score and fake score start from the same base weights (`student.pretrained`, the
real score from `student.teacher` when given). A folder that does not exist, or models that do not
fit together (latent channels, latent size, text width, tokenizer), fail here with a clear message,
before any engine is built.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from npedit.config import Config, ConfigError
from npedit.data.shapes import vocabulary as shapes_vocabulary
from npedit.method.questions import question_vocabulary
from npedit.models.codec import CodecConfig as PatchCodecConfig, PatchCodec
from npedit.models.dit import DiTConfig, FlowDiT
from npedit.models.text_encoder import TextEncoder, TextEncoderConfig
from npedit.models.tokenizer import WordTokenizer
from npedit.models.vlm import TinyVLM, VLMConfig as TinyVLMConfig


@dataclass
class Models:
    student: nn.Module
    real: nn.Module
    fake: nn.Module
    text_encoder: nn.Module
    text_tokenizer: WordTokenizer
    vlm: nn.Module
    vlm_tokenizer: WordTokenizer
    codec: nn.Module


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


def build_models(cfg: Config, words: list[str] | None = None) -> Models:
    """Create or load all networks on the CPU in fp32 (engines move and cast them)."""
    torch.manual_seed(cfg.train.seed)  # fresh inits are identical on every rank
    words = words or default_words()
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
    student.checkpointing = cfg.student.checkpointing

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
    for model in (real, fake, text_encoder, vlm):
        model.requires_grad_(False)
    fake.requires_grad_(True)
    return Models(student, real, fake, text_encoder, text_tokenizer, vlm, vlm_tokenizer, codec)


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
