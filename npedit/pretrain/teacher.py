"""The shapes world's text-to-image teacher: a text-only FlowDiT trained by flow matching on
(render(scene), caption(scene)), jointly with its text encoder (frozen afterwards), or on top of an
encoder pretrained alone (`text_encoder`, from `npedit pretrain text`), trained further or frozen
(`train_text`).

Text goes through exactly the path the trainer uses (`BuiltinDiffusion.encode_text`): the word
tokenizer, padded to max_length, then the TextEncoder. A caption is replaced by the method's
negative prompt with probability `drop_prob`, so the negative prompt is the teacher's "unconditional"
text for classifier-free guidance (the real score's CFG in DMD uses exactly that prompt).
Latents: PatchCodec (factor 2), [B, 12, S/2, S/2].
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from npedit.config import MethodConfig
from npedit.data.oracle import parse_scenes
from npedit.data.shapes import (Scene, caption, describe_partial, partial_caption, partial_mention, random_scene,
                                render)
from npedit.method.unroll import sample_with
from npedit.models.codec import CodecConfig, PatchCodec
from npedit.models.dit import DiTConfig, FlowDiT
from npedit.models.text_encoder import TextEncoder, TextEncoderConfig
from npedit.models.tokenizer import WordTokenizer
from npedit.outputs import image_grid
from npedit.pretrain.common import (EMA, RunningMean, Schedule, batch_stream, check_vocabulary, pick_device,
                                    set_threads, shapes_tokenizer)

NEGATIVE_PROMPT = MethodConfig().negative_prompt


@dataclass
class TeacherConfig:
    image_size: int = 32
    dim: int = 128
    depth: int = 4
    heads: int = 4
    text_dim: int = 64
    text_depth: int = 2
    max_length: int = 32          # = the trainer's text.max_length
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.998
    drop_prob: float = 0.1        # caption -> negative prompt (the CFG "unconditional")
    caption_keep: float = 1.0     # each object and the background of a training caption is named with
                                  # this probability: < 1 trains a teacher of partial captions
    seed: int = 0
    eval_examples: int = 200
    cfg_scale: float = 3.5
    save_every: int = 500         # intermediate EMA weights (0 = only at the end)
    init_from: str = ""           # continue from a folder holding teacher/ and text_encoder/ ("" = fresh)
    text_encoder: str = ""        # start the text encoder from this TextEncoder folder (`npedit pretrain text`)
    train_text: bool = True       # False: the text encoder stays frozen (only the DiT trains)
    device: str = "cpu"           # cpu | cuda | auto (the weights are evaluated and saved on the CPU)
    workers: int = 0              # processes rendering batches (0 = in this process: bit-reproducible)
    max_seconds: float = 0.0      # stop after this much training time (0 = steps only); the LR still decays

    def __post_init__(self):
        if not 0 <= self.caption_keep <= 1:
            raise ValueError(f"caption_keep must be in [0, 1], got {self.caption_keep}")


class TextConditioner:
    """tokenizer + encoder with the trainer's tokenization (pad to max_length); keeps the graph."""

    def __init__(self, tokenizer: WordTokenizer, encoder: TextEncoder, max_length: int):
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder, max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenizer.encode(list(texts), max_length=self.max_length, pad_to_max=True)
        return self.encoder(ids, mask)  # [B, L, text_dim]


def scene_batch(rng: random.Random, n: int, image_size: int) -> tuple[list[Scene], torch.Tensor]:
    scenes = [random_scene(rng) for _ in range(n)]
    return scenes, torch.stack([render(s, image_size) for s in scenes])


def teacher_batch(cfg: TeacherConfig, rng: random.Random, step: int) -> tuple[torch.Tensor, list[str]]:
    """One training batch: images [B, 3, S, S] and their prompts (caption, or the negative prompt with
    probability drop_prob)."""
    scenes, images = scene_batch(rng, cfg.batch_size, cfg.image_size)
    return images, [NEGATIVE_PROMPT if rng.random() < cfg.drop_prob else partial_caption(s, rng, cfg.caption_keep)
                    for s in scenes]


def cfg_velocity(dit: FlowDiT, cond: torch.Tensor, uncond: torch.Tensor, scale: float):
    """velocity(x_t, t) of the guided teacher: v_u + scale (v_c - v_u); scale 1 = no guidance."""
    def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return dit(x_t, t, cond)
        v = dit(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
        v_c, v_u = v.chunk(2)
        return v_u + scale * (v_c - v_u)
    return velocity


@torch.no_grad()
def generate_images(dit: FlowDiT, text: TextConditioner, codec: PatchCodec, captions: list[str], image_size: int,
                    sampler: str = "euler20", cfg_scale: float = 3.5, seed: int = 0) -> torch.Tensor:
    """captions -> images [N, 3, S, S] in [0, 1]. sampler: "euler<N>" or "fewstep" (the student's 4 steps)."""
    cond = text(captions)
    uncond = text([NEGATIVE_PROMPT] * len(captions))
    velocity = cfg_velocity(dit, cond, uncond, cfg_scale)
    shape = (len(captions), codec.latent_channels, image_size // codec.config.factor, image_size // codec.config.factor)
    gen = torch.Generator().manual_seed(seed)
    x0 = sample_with(sampler, velocity, shape, MethodConfig().timesteps, gen)
    return codec.decode(x0).clamp(0, 1)


def held_out_scenes(n: int) -> list[Scene]:
    """Evaluation scenes, drawn from a seed stream the training loop never uses."""
    return [random_scene(random.Random(f"npedit.teacher-eval/{i}")) for i in range(n)]


def partial_faithfulness(scenes: list[Scene], named: list[tuple], images: torch.Tensor) -> dict:
    """For partial captions, named[i] = partial_mention of scenes[i]: how often the parsed sample holds
    every named object and the named background, and how many objects it holds beside the named ones,
    on average."""
    parsed = parse_scenes(images)
    hit = [all(o in p.objects for o in objects) and background in (None, p.background)
           for p, (objects, background) in zip(parsed, named)]
    extra = [len(p.objects) - len(objects) for p, (objects, _) in zip(parsed, named)]
    return {"named_present": sum(hit) / len(hit), "mean_unnamed_objects": sum(extra) / len(extra), "n": len(hit)}


def faithfulness(scenes: list[Scene], images: torch.Tensor) -> dict:
    """How often the parsed sample equals its caption's scene (exactly / background / object set)."""
    parsed = parse_scenes(images)
    exact = sum(p == s for p, s in zip(parsed, scenes))
    background = sum(p.background == s.background for p, s in zip(parsed, scenes))
    objects = sum(p.objects == s.objects for p, s in zip(parsed, scenes))
    n = len(scenes)
    return {"exact": exact / n, "background": background / n, "objects": objects / n, "n": n}


@torch.no_grad()
def evaluate_teacher(dit: FlowDiT, text: TextConditioner, codec: PatchCodec, cfg: TeacherConfig,
                     grid_path: Path | None = None, batch: int = 50) -> dict:
    """Caption faithfulness of 20-step Euler and 4-step samples (CFG cfg.cfg_scale), parsed by the oracle."""
    def samples(prompts: list[str], sampler: str) -> torch.Tensor:   # in batches, noise seeded per batch
        return torch.cat([generate_images(dit, text, codec, prompts[i:i + batch], cfg.image_size, sampler,
                                          cfg.cfg_scale, seed=i) for i in range(0, len(prompts), batch)])

    scenes = held_out_scenes(cfg.eval_examples)
    captions = [caption(s) for s in scenes]
    report, shown = {}, {}
    for sampler in ("euler20", "fewstep"):
        images = samples(captions, sampler)
        report[sampler] = faithfulness(scenes, images)
        shown[sampler] = images[:12]
    if cfg.caption_keep < 1:   # a teacher of partial captions: are the objects a partial caption names drawn?
        named = [partial_mention(s, random.Random(f"npedit.teacher-eval-partial/{i}"), cfg.caption_keep)
                 for i, s in enumerate(scenes)]
        images = samples([describe_partial(*n) for n in named], "euler20")
        report["partial_euler20"] = partial_faithfulness(scenes, named, images)
    if grid_path is not None:
        truth = torch.stack([render(s, cfg.image_size) for s in scenes[:12]])
        grid = image_grid([truth, shown["euler20"], shown["fewstep"]], captions[:12],
                          ["caption (rendered)", "20 steps", "4 steps"])
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(grid_path)
    return report


def load_teacher(folder: str | Path, max_length: int = TeacherConfig.max_length):
    """A folder train_teacher wrote (teacher/ + text_encoder/), for sampling on the CPU in eval mode:
    -> (dit, text conditioner, codec, image size)."""
    folder = Path(folder)
    dit = FlowDiT.from_pretrained(folder / "teacher").eval()
    text = TextConditioner(WordTokenizer.from_pretrained(folder / "teacher"),
                           TextEncoder.from_pretrained(folder / "text_encoder").eval(), max_length)
    codec = teacher_codec()
    return dit, text, codec, dit.config.sample_size * codec.config.factor


def teacher_codec() -> PatchCodec:
    """The teacher's latent codec (parameter-free, so not saved): 2x2 pixel patches -> channels."""
    return PatchCodec(CodecConfig(factor=2))


def build_teacher(cfg: TeacherConfig, tokenizer: WordTokenizer) -> tuple[FlowDiT, TextEncoder, PatchCodec]:
    codec = teacher_codec()
    encoder = TextEncoder(TextEncoderConfig(vocab_size=tokenizer.vocab_size, dim=cfg.text_dim,
                                            depth=cfg.text_depth, max_length=cfg.max_length))
    dit = FlowDiT(DiTConfig(in_channels=codec.latent_channels, sample_size=cfg.image_size // codec.config.factor,
                            patch_size=2, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, text_dim=cfg.text_dim))
    return dit, encoder, codec


def load_text_encoder(cfg: TeacherConfig, tokenizer: WordTokenizer) -> TextEncoder:
    """The TextEncoder folder `cfg.text_encoder`, checked against the teacher's text width, length and vocabulary."""
    folder = Path(cfg.text_encoder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text_encoder={cfg.text_encoder}: no TextEncoder folder (config.json) there; "
                                f"make one with `npedit pretrain text --out DIR` (DIR/text_encoder)")
    encoder = TextEncoder.from_pretrained(folder)
    if encoder.config.dim != cfg.text_dim or encoder.config.max_length < cfg.max_length:
        raise ValueError(f"text_encoder={cfg.text_encoder}: dim {encoder.config.dim} and max_length "
                         f"{encoder.config.max_length} do not fit the teacher's text_dim {cfg.text_dim} and "
                         f"max_length {cfg.max_length}")
    check_vocabulary(folder, tokenizer, f"text_encoder={cfg.text_encoder}")
    return encoder


def _save(out: Path, dit: FlowDiT, encoder: TextEncoder, tokenizer: WordTokenizer) -> None:
    for folder, model in (("teacher", dit), ("text_encoder", encoder)):
        model.save_pretrained(out / folder)
        tokenizer.save_pretrained(out / folder)


def train_teacher(cfg: TeacherConfig, out_dir: str | Path, threads: int = 1, log_every: int = 100) -> dict:
    """Train, then write OUT/teacher (FlowDiT + tokenizer), OUT/text_encoder (TextEncoder + tokenizer),
    OUT/teacher_report.json (faithfulness) and OUT/teacher_samples.png."""
    set_threads(threads)
    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = shapes_tokenizer()
    dit, encoder, codec = build_teacher(cfg, tokenizer)
    if cfg.init_from:
        dit = FlowDiT.from_pretrained(Path(cfg.init_from) / "teacher").train()
        encoder = TextEncoder.from_pretrained(Path(cfg.init_from) / "text_encoder").train()
        check_vocabulary(Path(cfg.init_from) / "text_encoder", tokenizer, f"init_from={cfg.init_from}")
    if cfg.text_encoder:
        encoder = load_text_encoder(cfg, tokenizer)
    encoder.train(cfg.train_text).requires_grad_(cfg.train_text)
    device = pick_device(cfg.device)
    dit, encoder = dit.to(device), encoder.to(device)
    params = list(dit.parameters()) + (list(encoder.parameters()) if cfg.train_text else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema_dit, ema_enc = EMA(dit, cfg.ema), EMA(encoder, cfg.ema)
    text = TextConditioner(tokenizer, encoder, cfg.max_length)
    batches = batch_stream(partial(teacher_batch, cfg), f"npedit.teacher-train/{cfg.seed}", cfg.workers)
    gen = torch.Generator().manual_seed(cfg.seed)
    schedule = Schedule(cfg.steps, cfg.warmup, cfg.max_seconds)
    start, running, step = time.time(), RunningMean(), 0
    bar = tqdm(total=cfg.steps, desc="teacher", dynamic_ncols=True, mininterval=5)
    while not schedule.done(step):
        images, prompts = next(batches)
        x0 = codec.encode(images.to(device, non_blocking=True))       # [B, 12, S/2, S/2]
        t = torch.rand(x0.shape[0], generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        ids, mask = tokenizer.encode(prompts, max_length=cfg.max_length, pad_to_max=True)
        loss = F.mse_loss(dit(x_t, t, encoder(ids.to(device), mask.to(device))), eps - x0)
        schedule.set_lr(opt, cfg.lr, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_dit.update(dit, step)
        if cfg.train_text:
            ema_enc.update(encoder, step)
        running.update(loss)
        step += 1
        bar.update(1)
        if step % log_every == 0:
            bar.set_postfix(loss=f"{float(running):.4f}")
        if cfg.save_every and step % cfg.save_every == 0 and not schedule.done(step):
            _save(out, ema_dit.model, ema_enc.model, tokenizer)
            with (out / "teacher_progress.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "loss": float(running), "seconds": round(time.time() - start)}) + "\n")
    bar.close()
    train_s = time.time() - start

    dit, encoder = ema_dit.model.cpu(), ema_enc.model.cpu()
    text = TextConditioner(tokenizer, encoder, cfg.max_length)
    report = {"config": asdict(cfg), "train_seconds": round(train_s, 1), "steps": step, "final_loss": float(running),
              "faithfulness": evaluate_teacher(dit, text, codec, cfg, out / "teacher_samples.png")}
    _save(out, dit, encoder, tokenizer)
    (out / "teacher_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
