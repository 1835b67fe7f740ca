"""The shapes world's text encoder, pretrained on its own: parse captions into their scenes.

A `CaptionParser` head reads the encoder's tokens with 10 learned queries (the 9 grid cells, then the
background), one attention each over the caption's real tokens, and classifies per cell the shape
(or "empty"), the colour and the size, and the background. A caption fixes its scene, so a perfect
parse is possible; the encoder has to bind each object's words to its position to reach it. Only the
encoder ships (OUT/text_encoder, with the tokenizer); `npedit pretrain teacher --text_encoder
OUT/text_encoder` starts the teacher from it (`--train_text false` keeps it frozen).
Text goes through the trainer's path: the word tokenizer padded to max_length, then the TextEncoder.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from npedit.data.shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene, caption, random_scene
from npedit.models.text_encoder import TextEncoder, TextEncoderConfig
from npedit.models.tokenizer import WordTokenizer
from npedit.pretrain.common import RunningMean, Schedule, set_threads, shapes_tokenizer

IGNORE = -100          # colour / size targets of empty cells
CELLS = len(POSITIONS)  # 9


@dataclass
class TextPretrainConfig:
    dim: int = 64                 # = the teacher's text_dim
    depth: int = 2
    heads: int = 4
    max_length: int = 32          # = the trainer's text.max_length
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0
    eval_examples: int = 500


class CaptionParser(nn.Module):
    """tokens [B, L, D], mask [B, L] -> logits: shape [B, 9, 1 + 4] (0 = empty), colour [B, 9, 6],
    size [B, 9, 2], background [B, 4]."""

    def __init__(self, dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(CELLS + 1, dim) * dim ** -0.5)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.shape = nn.Linear(dim, 1 + len(SHAPES))
        self.color = nn.Linear(dim, len(COLORS))
        self.size = nn.Linear(dim, len(SIZES))
        self.background = nn.Linear(dim, len(BACKGROUNDS))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = torch.einsum("qd,bld->bql", self.queries, self.key(tokens)) * tokens.shape[-1] ** -0.5
        weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)   # [B, 10, L]
        z = torch.einsum("bql,bld->bqd", weights, self.value(tokens))           # [B, 10, D]
        cells = z[:, :CELLS]
        return {"shape": self.shape(cells), "color": self.color(cells), "size": self.size(cells),
                "background": self.background(z[:, CELLS])}


def scene_targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class ids per cell (shape 0 = empty; colour and size IGNORE where empty) and the background."""
    shape = torch.zeros(len(scenes), CELLS, dtype=torch.long)
    color = torch.full((len(scenes), CELLS), IGNORE, dtype=torch.long)
    size = color.clone()
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = POSITIONS.index(obj.position)
            shape[i, cell] = 1 + SHAPES.index(obj.shape)
            color[i, cell] = list(COLORS).index(obj.color)
            size[i, cell] = SIZES.index(obj.size)
    background = torch.tensor([list(BACKGROUNDS).index(s.background) for s in scenes])
    return {"shape": shape, "color": color, "size": size, "background": background}


def parse_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(F.cross_entropy(logits[k].flatten(0, -2), targets[k].flatten(), ignore_index=IGNORE)
               for k in ("shape", "color", "size", "background"))


def encode(encoder: TextEncoder, tokenizer: WordTokenizer, texts: list[str], max_length: int):
    ids, mask = tokenizer.encode(texts, max_length=max_length, pad_to_max=True)
    return encoder(ids, mask), mask


@torch.no_grad()
def parse_accuracy(encoder: TextEncoder, parser: CaptionParser, tokenizer: WordTokenizer, scenes: list[Scene],
                   max_length: int) -> dict:
    """cells: fraction of (caption, cell) pairs parsed right (shape or empty, and colour and size where
    an object is); scenes: captions whose 9 cells and background are all right."""
    logits = parser(*encode(encoder, tokenizer, [caption(s) for s in scenes], max_length))
    t = scene_targets(scenes)
    right = logits["shape"].argmax(-1) == t["shape"]
    for key in ("color", "size"):
        right &= (logits[key].argmax(-1) == t[key]) | (t[key] == IGNORE)
    background = logits["background"].argmax(-1) == t["background"]
    return {"cells": float(right.float().mean()), "background": float(background.float().mean()),
            "scenes": float((right.all(1) & background).float().mean()), "n": len(scenes)}


def held_out_scenes(n: int) -> list[Scene]:
    return [random_scene(random.Random(f"npedit.text-eval/{i}")) for i in range(n)]


def train_text_encoder(cfg: TextPretrainConfig, out_dir: str | Path, threads: int = 1, log_every: int = 100) -> dict:
    """Train, then write OUT/text_encoder (TextEncoder + tokenizer) and OUT/text_report.json."""
    set_threads(threads)
    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = shapes_tokenizer()
    encoder = TextEncoder(TextEncoderConfig(vocab_size=tokenizer.vocab_size, dim=cfg.dim, depth=cfg.depth,
                                            heads=cfg.heads, max_length=cfg.max_length))
    parser = CaptionParser(cfg.dim)
    params = list(encoder.parameters()) + list(parser.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    schedule = Schedule(cfg.steps, cfg.warmup)
    rng = random.Random(f"npedit.text-train/{cfg.seed}")
    start, running, first_loss = time.time(), RunningMean(), None
    bar = tqdm(total=cfg.steps, desc="text encoder", dynamic_ncols=True, mininterval=5)
    for step in range(cfg.steps):
        scenes = [random_scene(rng) for _ in range(cfg.batch_size)]
        loss = parse_loss(parser(*encode(encoder, tokenizer, [caption(s) for s in scenes], cfg.max_length)),
                          scene_targets(scenes))
        schedule.set_lr(opt, cfg.lr, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        first_loss = float(loss.detach()) if first_loss is None else first_loss
        running.update(loss)
        bar.update(1)
        if (step + 1) % log_every == 0:
            bar.set_postfix(loss=f"{float(running):.4f}")
    bar.close()
    encoder.eval()
    report = {"config": asdict(cfg), "train_seconds": round(time.time() - start, 1), "first_loss": first_loss,
              "final_loss": float(running),
              "parse": parse_accuracy(encoder, parser, tokenizer, held_out_scenes(cfg.eval_examples), cfg.max_length)}
    encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "text_encoder")
    (out / "text_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
