"""Editing with a trained student (its 4 steps, or an Euler sampler), from a checkpoint's export/ folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from npedit.adapters.builtin import BuiltinDiffusion
from npedit.config import Config
from npedit.engine.checkpoint import latest_checkpoint
from npedit.method.schedule import student_timesteps
from npedit.method.unroll import sample_with
from npedit.models.codec import PatchCodec
from npedit.models.dit import FlowDiT
from npedit.models.text_encoder import TextEncoder
from npedit.models.tokenizer import WordTokenizer


@torch.no_grad()
def edit_images(diffusion, student, images: torch.Tensor, instructions: list[str], timesteps: list[float],
                generator: torch.Generator, sampler: str = "fewstep") -> torch.Tensor:
    """[B,3,S,S] in [0,1] + instructions -> [B,3,S,S] in [0,1] (no CFG). sampler: "fewstep" (the student's
    `timesteps`) or "euler<N>" (for a student trained as a plain flow model, e.g. a supervised baseline)."""
    text = diffusion.encode_text(list(instructions))
    ref = diffusion.encode_images(images)
    velocity = (lambda x, t: diffusion.velocity(student, x, t, text, ref))
    x0 = sample_with(sampler, velocity, tuple(ref.shape), timesteps, generator, images.device)
    return diffusion.decode_latents(x0).clamp(0, 1)


def resolve_export(checkpoint: str | Path) -> Path:
    """Accepts a run directory (its latest checkpoint), a checkpoints/step_<N> folder, or an export/ folder."""
    path = Path(checkpoint)
    if (path / "export" / "student").is_dir():
        return path / "export"
    if (path / "student").is_dir() and (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / "export"
    raise FileNotFoundError(f"--checkpoint {checkpoint}: no checkpoint found (expected a run directory with "
                            "checkpoints/step_<N>/, a step_<N> folder, or its export/ folder)")


class Editor:
    """Loads student, text encoder(s), tokenizer(s) and codec / VAE; edits images in 4 steps (no CFG).

    A built-in student's export holds everything; a diffusers student's export holds the trained
    transformer (student/) and pipeline.json naming the pipeline its text encoders and VAE come from."""

    def __init__(self, export_dir: str | Path, device: str | torch.device = "cpu"):
        export = Path(export_dir)
        self.config = Config.from_dict(json.loads((export / "config.json").read_text()))
        self.device = torch.device(device)
        self.image_size = self.config.data.image_size
        if (export / "pipeline.json").is_file():
            self._load_diffusers(export)
            return
        self.student = FlowDiT.from_pretrained(export / "student").to(self.device).eval()
        text_encoder = TextEncoder.from_pretrained(export / "text_encoder").to(self.device).eval()
        tokenizer = WordTokenizer.from_pretrained(export / "text_encoder")
        codec = PatchCodec.from_pretrained(export / "codec").to(self.device)
        self.diffusion = BuiltinDiffusion(text_encoder, tokenizer, codec, self.config.text.max_length)

    def _load_diffusers(self, export: Path) -> None:
        from npedit.adapters.diffusers_family import DiffusersStudentSpec

        cfg = self.config
        pipeline = json.loads((export / "pipeline.json").read_text())["pipeline"]
        spec = DiffusersStudentSpec(pipeline, "", cfg.data.image_size, cfg.text.max_length, cfg.student.guidance,
                                    field=f"{export / 'pipeline.json'}: pipeline", attention=cfg.student.attention)
        self.student = spec.load_transformer(str(export), torch.float32, None, subfolder="student")
        self.student = self.student.to(self.device).eval()
        frozen = {name: m.to(self.device) for name, m in spec.load_frozen(torch.float32, None).items()}
        self.diffusion = spec.diffusion(frozen)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device="cpu") -> "Editor":
        return cls(resolve_export(checkpoint), device)

    @torch.no_grad()
    def edit(self, images: torch.Tensor, instructions: list[str], seed: int = 0,
             sampler: str = "fewstep") -> torch.Tensor:
        """images [B, 3, S, S] in [0, 1] at the trained size -> edited [B, 3, S, S] in [0, 1].
        sampler: "fewstep" (the trained 4 steps) or "euler<N>" (see edit_images)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"images must be {self.image_size}x{self.image_size} (the trained size), "
                             f"got {tuple(images.shape[-2:])}")
        return edit_images(self.diffusion, self.student, images.to(self.device), instructions,
                           student_timesteps(self.config.method), torch.Generator().manual_seed(seed), sampler)
