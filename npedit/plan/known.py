"""Published architectures the planner knows without downloads: their config files ship in
`known_configs/<name>/` (see its README), and `--set student.pretrained=<name>` (or the hub id) picks them.

The folders hold no weights and no vocabulary: a length-faithful tokenizer stand-in
(`LengthTokenizer`) replaces the real one while the planner reads them, so prompts have the right
special tokens and about the right length, and padded text encoders the right sequence length.
"""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from npedit.config import Config, apply_overrides

__all__ = ["ALIASES", "KNOWN", "LengthTokenizer", "known_folder", "length_tokenizers", "resolve_known"]

ROOT = Path(__file__).resolve().parent / "known_configs"
KNOWN = {
    "sd3.5-medium": "SD3.5-medium (2.2B MMDiT) pipeline: transformer, VAE, CLIP-L, CLIP-G, T5-XXL",
    "flux.1-dev": "FLUX.1-dev (11.9B) pipeline: transformer, VAE, CLIP-L, T5-XXL",
    "zimage-6b-standin": "a FLUX-architecture 6.3B single-stream DiT with Z-Image-6B's width and heads "
                         "(Z-Image is not an npedit student family), FLUX's VAE and text encoders",
    "qwen2.5-vl-7b": "Qwen2.5-VL-7B-Instruct judge",
    "llava-onevision-7b": "LLaVA-OneVision-Qwen2-7B (llava-hf ov) judge",
    "internvl3-14b": "InternVL3-14B (-hf) judge",
}
ALIASES = {
    "stabilityai/stable-diffusion-3.5-medium": "sd3.5-medium",
    "black-forest-labs/FLUX.1-dev": "flux.1-dev",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava-onevision-7b",
    "OpenGVLab/InternVL3-14B-hf": "internvl3-14b",
}
FIELDS = ("student.pretrained", "student.teacher", "vlm.pretrained")
VOCAB_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")


def known_folder(name: str) -> Path | None:
    """The shipped folder of a known name or alias (None for anything else)."""
    name = ALIASES.get(name, name)
    return ROOT / name if name in KNOWN else None


def resolve_known(cfg: Config) -> Config:
    """Replace known names in student.pretrained / student.teacher / vlm.pretrained by their folders
    (a local folder of the same name wins)."""
    sets = []
    for key in FIELDS:
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        folder = known_folder(value) if value and not Path(value).expanduser().exists() else None
        if folder is not None:
            sets.append(f"{key}={folder}")
    return apply_overrides(cfg, sets) if sets else cfg


# ---------------------------------------------------------------------------------------------------- tokenizer


class _Encoded(dict):
    def __getattr__(self, name):
        return self[name]


class LengthTokenizer:
    """Stands in for a tokenizer whose vocabulary is not shipped: special tokens keep their ids, other
    text becomes one token per word or punctuation mark (leading space included), like byte-level BPE
    on English prompts. Enough for prompt lengths, image placeholders and padded encoder inputs."""

    def __init__(self, folder: Path):
        data = json.loads((folder / "tokenizer_config.json").read_text())
        self.model_max_length = int(data.get("model_max_length", 512))
        self.special = {v["content"]: int(k) for k, v in data.get("added_tokens_decoder", {}).items()}
        self.ids_to_special = {i: t for t, i in self.special.items()}
        self.pad_token = data.get("pad_token")
        self.unk_token = data.get("unk_token")
        self.pad_token_id = self.special.get(self.pad_token, 0) if self.pad_token else 0
        self.unk_token_id = self.special.get(self.unk_token) if self.unk_token else None
        for key in ("context_image_token", "start_image_token", "end_image_token"):
            if key in data:
                setattr(self, key, data[key])
        template = folder / "chat_template.jinja"
        self.chat_template = template.read_text() if template.is_file() else data.get("chat_template")
        self._pattern = re.compile("|".join(re.escape(t) for t in sorted(self.special, key=len, reverse=True))
                                   or r"(?!x)x")

    def __len__(self) -> int:
        return max(self.special.values(), default=0) + 1

    def _word_id(self, piece: str) -> int:
        return 1000 + sum(map(ord, piece)) % 20000          # ordinary ids never collide with special ones

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = []
        pos = 0
        for match in self._pattern.finditer(text):
            ids += [self._word_id(p) for p in re.findall(r"\s*\w+|\s*[^\w\s]|\s+", text[pos:match.start()])]
            ids.append(self.special[match.group(0)])
            pos = match.end()
        ids += [self._word_id(p) for p in re.findall(r"\s*\w+|\s*[^\w\s]|\s+", text[pos:])]
        return ids

    def convert_tokens_to_ids(self, token: str):
        return self.special.get(token, self.unk_token_id)

    def convert_ids_to_tokens(self, ids):
        return [self.ids_to_special.get(i, f"<{i}>") for i in ids]

    def apply_chat_template(self, messages, chat_template: str | None = None, add_generation_prompt: bool = False,
                            tokenize: bool = False, **kwargs):
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(chat_template or self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text) if tokenize else text

    def __call__(self, texts, padding: Any = False, max_length: int | None = None, truncation: bool = False,
                 add_special_tokens: bool = True, return_tensors: str | None = None, **kwargs):
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = [self.encode(t) for t in texts]
        length = max_length or self.model_max_length
        if truncation:
            rows = [r[:length] for r in rows]
        if padding == "max_length":
            rows = [r + [self.pad_token_id] * (length - len(r)) for r in rows]
        if return_tensors == "pt":
            return _Encoded(input_ids=torch.tensor(rows), attention_mask=torch.tensor([[1] * len(r) for r in rows]))
        return _Encoded(input_ids=rows)


def _needs_stand_in(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() and not any((folder / f).is_file() for f in VOCAB_FILES)


@contextlib.contextmanager
def length_tokenizers():
    """While active, `AutoTokenizer.from_pretrained` of a folder without vocabulary files (the shipped
    known configs) returns a `LengthTokenizer`."""
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, source, *args, subfolder: str = "", **kwargs):
        folder = Path(str(source)).expanduser() / subfolder
        if folder.is_dir() and _needs_stand_in(folder):
            return LengthTokenizer(folder)
        return original(cls, source, *args, subfolder=subfolder, **kwargs)

    AutoTokenizer.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        AutoTokenizer.from_pretrained = classmethod(original)
