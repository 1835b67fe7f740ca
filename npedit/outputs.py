"""What a run writes where people look: metrics.jsonl, TensorBoard scalars, sample grids (PNG)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from npedit.data.images import tensor_to_pil

REQUIRED_METRICS = ("step", "loss_vlm", "loss_dmd", "loss_fake", "grad_norm", "lr", "time_s")


class MetricsLog:
    """Appends one JSON object per step to DIR/metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def truncate_after(self, step: int) -> None:
        """On resume: keep rows up to `step`; rows of the lost steps move to a side file, not deleted."""
        if not self.path.is_file():
            return
        keep, dropped = [], []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row_step = json.loads(line).get("step", 0)
            except json.JSONDecodeError:
                row_step = step + 1  # a torn last line from a crash: set aside
            (keep if row_step <= step else dropped).append(line)
        if dropped:
            side = self.path.with_name(f"metrics.after_step_{step}.jsonl")
            with side.open("a") as f:
                f.write("\n".join(dropped) + "\n")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)

    def log(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def save_image(image: torch.Tensor, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(image).save(path)


def image_grid(columns: list[torch.Tensor], captions: list[str], headers: list[str], cell: int = 128) -> Image.Image:
    """columns: each [N, 3, H, W]; one row per sample, the caption written under the row. A header wider
    than its cell wraps onto a second line (the default font is 6 px per character)."""
    n = columns[0].shape[0]
    font = ImageFont.load_default()
    headers = ["\n".join(textwrap.wrap(h, width=max(8, cell // 6), break_on_hyphens=False)[:2]) for h in headers]
    pad, text_h = 4, 28
    head_h = 16 if all("\n" not in h for h in headers) else 28
    width = len(columns) * (cell + pad) + pad
    height = head_h + n * (cell + text_h + pad) + pad
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, header in enumerate(headers):
        draw.text((pad + j * (cell + pad), 2), header, fill=(0, 0, 0), font=font)
    for i in range(n):
        y = head_h + i * (cell + text_h + pad)
        for j, col in enumerate(columns):
            tile = tensor_to_pil(col[i]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (pad + j * (cell + pad), y))
        lines = textwrap.wrap(captions[i], width=max(20, width // 6))[:2]
        draw.text((pad, y + cell + 2), "\n".join(lines), fill=(0, 0, 0), font=font)
    return grid


def save_sample_grid(path: str | Path, references: torch.Tensor, outputs: torch.Tensor, instructions: list[str],
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Rows of reference | output (| extra columns), each captioned with its instruction."""
    columns = [references, outputs] + list((extra or {}).values())
    headers = ["reference", "output"] + list((extra or {}).keys())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(columns, instructions, headers).save(path)
    return path
