"""Word-level tokenizer of the built-in models (lower-cased words and punctuation marks)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import torch

TOKENIZER_NAME = "tokenizer.json"
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"\w+")


def split_words(text: str) -> list[str]:
    """Lower-case `text` and split it into words and single punctuation marks."""
    return _TOKEN_RE.findall(text.lower())


class WordTokenizer:
    PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
    SPECIALS = (PAD, UNK, BOS, EOS)

    def __init__(self, vocab: list[str]):
        """vocab: every token, the four specials first (ids 0-3), no duplicates."""
        if tuple(vocab[:4]) != self.SPECIALS:
            raise ValueError(f"a WordTokenizer vocabulary must start with {list(self.SPECIALS)}, got {vocab[:4]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("a WordTokenizer vocabulary must not repeat tokens")
        self.vocab = list(vocab)
        self._ids = {word: i for i, word in enumerate(self.vocab)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3

    @classmethod
    def from_words(cls, words: Iterable[str]) -> "WordTokenizer":
        """Vocabulary = the specials, then the sorted unique tokens of `words` (each split like a text)."""
        tokens = {token for word in words for token in split_words(word)}
        return cls(list(cls.SPECIALS) + sorted(tokens - set(cls.SPECIALS)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def token_id(self, word: str) -> int:
        """Id of one word (lower-cased); KeyError naming it when it is not in the vocabulary."""
        key = word if word in self.SPECIALS else word.lower()
        if key not in self._ids:
            raise KeyError(f"word {word!r} is not in the tokenizer vocabulary ({self.vocab_size} tokens)")
        return self._ids[key]

    def tokenize(self, text: str) -> list[int]:
        """Ids of the words of `text`; unknown words map to <unk>."""
        return [self._ids.get(word, self.unk_id) for word in split_words(text)]

    def encode(self, texts: list[str], max_length: int, pad_to_max: bool = True,
               add_bos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """-> input_ids [B, L] long, attention_mask [B, L] bool (True on real tokens), right-padded.

        L = max_length when pad_to_max, else the longest text. A text longer than max_length
        tokens is an error, never truncated.
        """
        if isinstance(texts, str):
            raise TypeError("encode expects a list of texts, got a single str")
        rows = []
        for text in texts:
            ids = ([self.bos_id] if add_bos else []) + self.tokenize(text)
            if len(ids) > max_length:
                raise ValueError(f"text {text!r} has {len(ids)} tokens, more than max_length={max_length}")
            rows.append(ids)
        length = max_length if pad_to_max else max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, ids in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, :len(ids)] = True
        return input_ids, mask

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """One sequence of ids (list or 1-D tensor) -> text; pads (and <bos>/<eos>) are skipped."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim > 1:
                raise ValueError(f"decode takes one sequence of ids, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        skip = {self.pad_id, self.bos_id, self.eos_id} if skip_special_tokens else {self.pad_id}
        words = [self.vocab[i] for i in ids if i not in skip]
        text = ""
        for word in words:
            is_mark = word not in self.SPECIALS and not _WORD_RE.fullmatch(word)
            text += word if not text or is_mark else " " + word  # no space before punctuation marks
        return text

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = {"type": "word", "vocab": self.vocab}
        (directory / TOKENIZER_NAME).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "WordTokenizer":
        path = Path(directory) / TOKENIZER_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a saved WordTokenizer folder needs {TOKENIZER_NAME}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("type") != "word" or not isinstance(data.get("vocab"), list):
            raise ValueError(f"{path}: not a WordTokenizer file (expected {{\"type\": \"word\", \"vocab\": [...]}})")
        try:
            return cls(data["vocab"])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
