"""Does the frozen text encoder (pretrained on captions only) carry what an edit instruction asks?

For colour edits and moves, trains attention-pooling probes on the encoder's outputs of 2,500
instructions and reports their accuracy on 500 held-out ones: the object's colour, its shape, and the
new colour (colour edits) or the destination phrase (moves). Each probe: 3 learned queries attend
over the tokens, one linear head per query. About a minute on one core:

    python experiments/shapes/reference_skip/probe_instructions.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from npedit.adapters.builtin import BuiltinDiffusion  # noqa: E402
from npedit.data.edits import edit_example_with_truth  # noqa: E402
from npedit.data.shapes import COLORS, SHAPES  # noqa: E402
from npedit.models.codec import CodecConfig, PatchCodec  # noqa: E402
from npedit.models.text_encoder import TextEncoder  # noqa: E402
from npedit.models.tokenizer import WordTokenizer  # noqa: E402
from npedit.presets import get_preset  # noqa: E402

TRAIN, HELD_OUT = 2500, 500
COLOR_NAMES = list(COLORS)   # COLORS: name -> RGB
NAMES = {"color": ("object colour", "object shape", "new colour"),
         "move": ("object colour", "object shape", "destination")}


def labels(instruction: str, category: str) -> tuple[int, int, str]:
    """(object colour, object shape, what the edit asks: the last colour word, or the last two words)."""
    words = instruction.split()
    colours = [w for w in words if w in COLOR_NAMES]
    shape = next(w for w in words if w in SHAPES)
    asked = colours[-1] if category == "color" else " ".join(words[-2:])
    return COLOR_NAMES.index(colours[0]), SHAPES.index(shape), asked


class AttentionProbe(nn.Module):
    """tokens [B, L, D] -> one logit vector per head: 3 learned queries attend over the tokens."""

    def __init__(self, dim: int, classes: list[int]):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(len(classes), dim) * 0.1)
        self.key = nn.Linear(dim, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, n) for n in classes)

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        weights = torch.einsum("qd,bld->bql", self.queries, self.key(tokens)).softmax(-1)
        pooled = torch.einsum("bql,bld->bqd", weights, tokens)
        return [head(pooled[:, i]) for i, head in enumerate(self.heads)]


def probe(diffusion: BuiltinDiffusion, category: str, seed: int = 0) -> dict[str, float]:
    instructions = [edit_example_with_truth(i, 5, 32, (category,))[0].instruction for i in range(TRAIN + HELD_OUT)]
    rows = [labels(s, category) for s in instructions]
    asked = sorted({r[2] for r in rows})
    y = torch.tensor([[r[0], r[1], asked.index(r[2])] for r in rows])
    with torch.no_grad():
        tokens = torch.cat([diffusion.encode_text(instructions[i:i + 256]) for i in range(0, len(rows), 256)])
    torch.manual_seed(seed)
    model = AttentionProbe(tokens.shape[-1], [len(COLOR_NAMES), len(SHAPES), len(asked)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(1500):
        idx = torch.randint(0, TRAIN, (128,))
        loss = sum(F.cross_entropy(logits, y[idx, j]) for j, logits in enumerate(model(tokens[idx])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(tokens[TRAIN:])
    return {name: (logits.argmax(-1) == y[TRAIN:, j]).float().mean().item()
            for j, (name, logits) in enumerate(zip(NAMES[category], out))}


def main() -> int:
    torch.set_num_threads(1)
    cfg = get_preset("shapes")   # the text path the preset's student sees: its encoder, tokenizer, max_length
    folder = cfg.text.pretrained
    diffusion = BuiltinDiffusion(TextEncoder.from_pretrained(folder).eval(), WordTokenizer.from_pretrained(folder),
                                 PatchCodec(CodecConfig(factor=cfg.codec.factor)), max_length=cfg.text.max_length)
    for category in NAMES:
        accuracy = probe(diffusion, category)
        print(f"{category}: held-out probe accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
