"""The shapes world's toy VLM judge: a TinyVLM trained on generic yes/no questions (judge_data.py).

The input construction is the trainer's (`BuiltinJudge`): slot 0 holds the first image, slot 1 the
second (an absent slot is the learned no-image embedding), text = <bos> + question words padded to
max_text_len, the answer is predicted at the last real text token. Training uses next-token
cross-entropy over the whole vocabulary on the answer ("yes" / "no"), so both of the trainer's
answer losses (binary Yes/No logits, full-vocabulary CE) are meaningful, plus a captioning loss:
next-token cross-entropy on the words of true captions, which gives every step a dense signal that
can only be lowered by reading the image (yes/no answers alone leave a long plateau at chance). Held-out accuracy is
measured through `BuiltinJudge` itself, on questions from a seed stream training never uses.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from npedit.adapters.builtin import BuiltinJudge
from npedit.data.shapes import render
from npedit.method.questions import Question
from npedit.models.layers import init_transformer_weights
from npedit.models.tokenizer import WordTokenizer
from npedit.models.vlm import TinyVLM, VLMConfig
from npedit.outputs import image_grid
from npedit.pretrain.common import (EMA, RunningMean, Schedule, batch_stream, check_vocabulary, pick_device,
                                    set_threads, shapes_tokenizer)
from npedit.pretrain.judge_degrade import render_degraded
from npedit.pretrain.judge_vision import pretrain_vision
from npedit.pretrain.judge_data import QUESTION_KINDS, GenericQuestion, random_question, template_words

# the curriculum's starting mix: true/false captions (dense captioning signal) and one-attribute questions
EASY_KINDS = {"caption": 0.4, "background": 0.15, "occupied": 0.15, "where": 0.15, "present": 0.15}


@dataclass
class JudgeConfig:
    world_size: int = 32          # rendered images (= the trainer's data.image_size)
    image_size: int = 48          # the VLM's input: it upsamples 32 -> 48 itself, so 16 px patches = 3x3 cells
    patch_size: int = 16
    vision_dim: int = 96
    vision_depth: int = 2
    dim: int = 128
    depth: int = 3
    heads: int = 4
    max_text_len: int = 40        # = the trainer's vlm.max_text_len (caption questions need 36)
    steps: int = 20000
    batch_size: int = 16          # questions per step
    lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.998
    noise_prob: float = 0.5       # augmentation: Gaussian pixel noise (std ~ U[0, noise_std]) on some images
    noise_std: float = 0.06
    blur_prob: float = 0.2        # augmentation: blend with a 3x3 box blur
    degrade_prob: float = 0.0     # this fraction of images drawn student-like (judge_degrade.py), answers unchanged
    caption_weight: float = 1.0   # next-token loss on the words of true captions (dense image-text signal)
    init_std: float = 0.1         # std of every weight / embedding at init
    curriculum: float = 0.3       # fraction of the steps that moves the question mix from EASY_KINDS to all
    vision_steps: int = 600       # stage 1: cell probes on the image tokens (judge_vision.py)
    vision_batch: int = 64
    seed: int = 0
    eval_per_kind: int = 300
    save_every: int = 1000        # intermediate EMA weights + a quick held-out check (0 = only at the end)
    device: str = "cpu"           # cpu | cuda | auto (the weights are evaluated and saved on the CPU)
    workers: int = 0              # processes making question batches (0 = in this process: bit-reproducible)
    max_seconds: float = 0.0      # stop after this much training time (0 = steps only); the LR still decays
    init_from: str = ""           # continue from a folder holding judge/ (skips stage 1 and the curriculum; "" = fresh)
    kind_weights: str = ""        # question-mix overrides, e.g. "same_except=0.5,same=0.2" (others keep QUESTION_KINDS')

    def __post_init__(self):
        question_mix(self)        # ValueError on unknown kinds or bad weights, before any training
        if not 0.0 <= self.degrade_prob <= 1.0:
            raise ValueError(f"degrade_prob must be in [0, 1], got {self.degrade_prob}")


# the fields that fix the judge's shape: a judge continued with init_from must match them
ARCHITECTURE_FIELDS = ("image_size", "patch_size", "vision_dim", "vision_depth", "dim", "depth", "heads",
                       "max_text_len")


def question_mix(cfg: JudgeConfig) -> dict[str, float]:
    """QUESTION_KINDS with cfg.kind_weights' overrides ("kind=weight,..."): the mix after the curriculum."""
    mix = dict(QUESTION_KINDS)
    for item in filter(None, (x.strip() for x in cfg.kind_weights.split(","))):
        kind, sep, value = item.partition("=")
        if not sep or kind.strip() not in QUESTION_KINDS:
            raise ValueError(f"kind_weights: {item!r} is not KIND=WEIGHT with KIND one of {list(QUESTION_KINDS)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"kind_weights: the weight in {item!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"kind_weights: the weight in {item!r} must be finite and >= 0")
        mix[kind.strip()] = weight
    if sum(mix.values()) <= 0:
        raise ValueError(f"kind_weights: {cfg.kind_weights!r} leaves no question kind with a positive weight")
    return mix


def judge_tokenizer() -> WordTokenizer:
    return shapes_tokenizer(template_words())


def build_judge(cfg: JudgeConfig, tokenizer: WordTokenizer) -> TinyVLM:
    vlm = TinyVLM(VLMConfig(vocab_size=tokenizer.vocab_size, image_size=cfg.image_size, patch_size=cfg.patch_size,
                            vision_dim=cfg.vision_dim, vision_depth=cfg.vision_depth, dim=cfg.dim, depth=cfg.depth,
                            heads=cfg.heads, max_images=2, max_text_len=cfg.max_text_len))
    # A model this small sits for thousands of steps at chance with the usual 0.02 init; a wider init
    # of every weight and embedding makes attention selective early enough to leave that plateau.
    vlm.apply(lambda m: init_transformer_weights(m, cfg.init_std))
    with torch.no_grad():
        for p in (vlm.embed.no_image, vlm.embed.position, vlm.vision.position, vlm.lm_head.weight):
            p.normal_(0.0, cfg.init_std)
    return vlm


def kind_weights(step: int, cfg: JudgeConfig) -> dict[str, float]:
    """Curriculum: from EASY_KINDS (single-image, one attribute) to question_mix(cfg) over the first
    cfg.curriculum fraction of the steps; a continued judge (init_from) starts at question_mix(cfg)."""
    a = 1.0 if cfg.init_from else min(1.0, step / max(1, cfg.curriculum * cfg.steps))
    return {k: (1 - a) * EASY_KINDS.get(k, 0.0) + a * w for k, w in question_mix(cfg).items()}


def load_judge(cfg: JudgeConfig, tokenizer: WordTokenizer) -> TinyVLM:
    """The judge in cfg.init_from/judge, checked against cfg's architecture and the judge vocabulary."""
    folder = Path(cfg.init_from) / "judge"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"init_from={cfg.init_from}: no judge folder (judge/config.json) there; "
                                f"make one with `npedit pretrain judge --out DIR`")
    check_vocabulary(folder, tokenizer, f"init_from={cfg.init_from}")
    vlm = TinyVLM.from_pretrained(folder).train()
    differ = [f"{name} {getattr(vlm.config, name)} != {getattr(cfg, name)}" for name in ARCHITECTURE_FIELDS
              if getattr(vlm.config, name) != getattr(cfg, name)]
    if differ:
        raise ValueError(f"init_from={cfg.init_from}: the judge there does not match the config: {', '.join(differ)}")
    return vlm


def render_questions(questions: list[GenericQuestion], world_size: int, degrade_prob: float = 0.0,
                     rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (first images [Q, 3, S, S], second images [Q, 3, S, S]; zeros where a question has one image).

    With degrade_prob > 0 each image is, with that probability and independently of the other image,
    drawn student-like by `render_degraded` (rng required)."""
    if degrade_prob > 0 and rng is None:
        raise ValueError("render_questions: degrade_prob > 0 needs an rng")

    def draw(scene):
        if degrade_prob > 0 and rng.random() < degrade_prob:
            return render_degraded(scene, world_size, rng)
        return render(scene, world_size)

    first = torch.stack([draw(q.scenes[0]) for q in questions])
    second = torch.stack([draw(q.scenes[1]) if len(q.scenes) > 1 else torch.zeros_like(first[0]) for q in questions])
    return first, second


def augment(images: torch.Tensor, cfg: JudgeConfig, gen: torch.Generator) -> torch.Tensor:
    """Mild pixel noise and blur on a random subset of images [N, 3, S, S] (robustness to imperfect renders)."""
    n = images.shape[0]
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (torch.rand(n, 1, 1, 1, generator=gen) < cfg.blur_prob) * torch.rand(n, 1, 1, 1, generator=gen)
    images = images + mix * (blur - images)
    std = (torch.rand(n, 1, 1, 1, generator=gen) < cfg.noise_prob) * torch.rand(n, 1, 1, 1, generator=gen)
    return (images + cfg.noise_std * std * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def question_batch(cfg: JudgeConfig, rng: random.Random, step: int
                   ) -> tuple[list[GenericQuestion], torch.Tensor, torch.Tensor]:
    """One training batch at `step` (the curriculum's question mix): questions and their augmented
    first / second images [Q, 3, S, S]. Augmentation noise comes from a generator seeded by rng."""
    weights = kind_weights(step, cfg)
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=cfg.batch_size)
    questions = [random_question(rng, kind) for kind in kinds]
    # the degradation stream is drawn from rng only when used: degrade_prob 0 keeps the shipped judge's stream
    draw_rng = np.random.default_rng(rng.getrandbits(63)) if cfg.degrade_prob > 0 else None
    first, second = render_questions(questions, cfg.world_size, cfg.degrade_prob, draw_rng)
    gen = torch.Generator().manual_seed(rng.getrandbits(63))
    return questions, augment(first, cfg, gen), augment(second, cfg, gen)


def judge_logits(vlm: TinyVLM, tokenizer: WordTokenizer, max_text_len: int, questions: list[GenericQuestion],
                 first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vocabulary logits at every text position [Q, L, V] (+ ids, mask [Q, L]), with BuiltinJudge's input:
    slot 0 = first image, slot 1 = second image or absent, <bos> + words padded to max_text_len."""
    device = first.device
    present = torch.tensor([[True, len(q.scenes) == 2] for q in questions], device=device)   # [Q, 2]
    ids, mask = tokenizer.encode([q.text for q in questions], max_length=max_text_len, pad_to_max=True,
                                 add_bos=True)
    ids, mask = ids.to(device), mask.to(device)
    return vlm(torch.stack([first, second], dim=1), present, ids, mask), ids, mask


def judge_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, questions: list[GenericQuestion],
               answer_ids: dict[str, int], caption_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer cross-entropy at the last real token + caption_weight x next-token cross-entropy over the
    words of true captions ("yes" caption questions: their words can only be predicted from the image).
    -> (loss, answer accuracy)."""
    q, device = len(questions), logits.device
    answer = logits[torch.arange(q, device=device), mask.sum(1) - 1]                   # [Q, V]
    target = torch.tensor([answer_ids[x.answer] for x in questions], device=device)
    loss = F.cross_entropy(answer, target)
    captions = torch.tensor([x.kind == "caption" and x.answer == "yes" for x in questions], device=device)
    if caption_weight > 0 and bool(captions.any()):
        # position i predicts token i + 1; the last real position is the answer (handled above)
        next_ids = ids[captions, 1:].masked_fill(~mask[captions, 1:], -100)
        lm = logits[captions, :-1]
        loss = loss + caption_weight * F.cross_entropy(lm.reshape(-1, lm.shape[-1]), next_ids.reshape(-1),
                                                       ignore_index=-100)
    return loss, (answer.detach().argmax(-1) == target).float().mean()


@torch.no_grad()
def judge_accuracy(vlm: TinyVLM, tokenizer: WordTokenizer, max_text_len: int, per_kind: int = 300,
                   world_size: int = 32, seed: str = "eval", batch: int = 100, degraded: bool = False) -> dict:
    """Held-out accuracy per question kind, through the trainer's BuiltinJudge (binary Yes/No logits).

    Questions come from the stream random.Random(f"npedit.judge-{seed}/<kind>"), disjoint from training's.
    degraded: every image drawn student-like (judge_degrade.py; the same questions, their own seeded draws).
    -> {kind: accuracy, ..., "overall": mean over kinds, "n_per_kind": per_kind}.
    """
    judge = BuiltinJudge(vlm, tokenizer, max_text_len, "binary")
    out = {}
    for kind in QUESTION_KINDS:
        rng = random.Random(f"npedit.judge-{seed}/{kind}")
        questions = [random_question(rng, kind) for _ in range(per_kind)]
        draw_rng = np.random.default_rng(list(f"npedit.judge-{seed}/{kind}/degraded".encode())) if degraded else None
        correct = 0
        for i in range(0, per_kind, batch):
            chunk = questions[i:i + batch]
            first, second = render_questions(chunk, world_size, float(degraded), draw_rng)
            qs = [Question(j, ("ref", "edit") if len(q.scenes) == 2 else ("edit",), q.text, q.answer)
                  for j, q in enumerate(chunk)]
            edited = torch.where(torch.tensor([len(q.scenes) == 2 for q in chunk]).view(-1, 1, 1, 1), second, first)
            losses = judge.answer_losses(qs, edited, first, scale=1.0)      # [Q]; < log 2 <=> right answer
            correct += int((losses < math.log(2)).sum())
        out[kind] = correct / per_kind
    out["overall"] = sum(out[k] for k in QUESTION_KINDS) / len(QUESTION_KINDS)
    out["n_per_kind"] = per_kind
    return out


def _save_progress(out: Path, vlm: TinyVLM, tokenizer: WordTokenizer, cfg: JudgeConfig, step: int, loss: float,
                   seconds: float) -> None:
    """Intermediate EMA weights (OUT/judge) and a small held-out check appended to OUT/judge_progress.jsonl."""
    vlm = copy.deepcopy(vlm).cpu()
    vlm.save_pretrained(out / "judge")
    tokenizer.save_pretrained(out / "judge")
    acc = judge_accuracy(vlm, tokenizer, cfg.max_text_len, 40, cfg.world_size, seed="progress")
    with (out / "judge_progress.jsonl").open("a") as f:
        f.write(json.dumps({"step": step, "loss": loss, "seconds": round(seconds), "accuracy": acc}) + "\n")


def save_question_grid(path: Path, questions: list[GenericQuestion], world_size: int) -> None:
    first, second = render_questions(questions, world_size)
    grid = image_grid([first, second], [f"{q.text} -> {q.answer}" for q in questions], ["image 1", "image 2"])
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def train_judge(cfg: JudgeConfig, out_dir: str | Path, threads: int = 1, log_every: int = 100) -> dict:
    """Train, then write OUT/judge (TinyVLM + tokenizer), OUT/judge_report.json and OUT/judge_questions.png."""
    set_threads(threads)
    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    tokenizer = judge_tokenizer()
    vlm = (load_judge(cfg, tokenizer) if cfg.init_from else build_judge(cfg, tokenizer)).to(device)
    rng = random.Random(f"npedit.judge-train/{cfg.seed}")
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    vision_acc = None   # a continued judge skips stage 1
    if not cfg.init_from:
        vision_acc = pretrain_vision(vlm, cfg.vision_steps, cfg.vision_batch, cfg.lr, cfg.world_size, rng,
                                     lambda images: augment(images, cfg, gen).to(device))
        tqdm.write(f"judge stage 1 (cell probes): shape accuracy {vision_acc:.3f} after {cfg.vision_steps} steps")
    opt = torch.optim.AdamW(vlm.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    schedule = Schedule(cfg.steps, cfg.warmup, cfg.max_seconds)
    ema = EMA(vlm, cfg.ema)
    answer_ids = {a: tokenizer.token_id(a) for a in ("yes", "no")}
    batches = batch_stream(partial(question_batch, cfg), f"npedit.judge-train/{cfg.seed}/questions", cfg.workers)
    running, acc, step = RunningMean(), RunningMean(start=0.5), 0
    bar = tqdm(total=cfg.steps, desc="judge", dynamic_ncols=True, mininterval=5)
    while not schedule.done(step):
        questions, first, second = next(batches)
        first, second = first.to(device, non_blocking=True), second.to(device, non_blocking=True)
        logits, ids, mask = judge_logits(vlm, tokenizer, cfg.max_text_len, questions, first, second)
        loss, batch_acc = judge_loss(logits, ids, mask, questions, answer_ids, cfg.caption_weight)
        schedule.set_lr(opt, cfg.lr, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vlm.parameters(), 1.0)
        opt.step()
        ema.update(vlm, step)
        running.update(loss)
        acc.update(batch_acc)
        step += 1
        bar.update(1)
        if step % log_every == 0:
            bar.set_postfix(loss=f"{float(running):.4f}", acc=f"{float(acc):.3f}")
        if cfg.save_every and step % cfg.save_every == 0 and not schedule.done(step):
            _save_progress(out, ema.model, tokenizer, cfg, step, float(running), time.time() - start)
    bar.close()
    train_s = time.time() - start

    vlm = ema.model.cpu()
    report = {"config": asdict(cfg), "train_seconds": round(train_s, 1), "steps": step, "final_loss": float(running),
              "vision_stage_shape_accuracy": vision_acc,
              "accuracy": judge_accuracy(vlm, tokenizer, cfg.max_text_len, cfg.eval_per_kind, cfg.world_size),
              "accuracy_degraded": judge_accuracy(vlm, tokenizer, cfg.max_text_len, cfg.eval_per_kind, cfg.world_size,
                                                  degraded=True)}
    vlm.save_pretrained(out / "judge")
    tokenizer.save_pretrained(out / "judge")
    rng = random.Random("npedit.judge-grid")
    save_question_grid(out / "judge_questions.png", [random_question(rng, k) for k in QUESTION_KINDS for _ in (0, 1)],
                       cfg.world_size)
    (out / "judge_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
