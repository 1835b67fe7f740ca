"""Supervised upper bound: the same student trained by flow matching on TRUE (reference, instruction)
-> target pairs rendered by the shapes world's oracle. True pairs are used here and nowhere else.

Same starting point (the shipped teacher), text encoder, codec, optimiser settings, batch size and
number of steps as the NP-Edit preset it is compared with; evaluated with the same 4-step sampler
and oracle report.

    python experiments/shapes/supervised.py --preset shapes --seed 0 --output_dir runs/exp/supervised_s0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from npedit.adapters.builtin import BuiltinDiffusion  # noqa: E402
from npedit.config import apply_overrides  # noqa: E402
from npedit.data.edits import edit_example_with_truth  # noqa: E402
from npedit.data.loader import global_batch_indices  # noqa: E402
from npedit.engine.engines import lr_lambda  # noqa: E402
from npedit.eval.shapes_eval import evaluate_editor, format_report  # noqa: E402
from npedit.inference import edit_images  # noqa: E402
from npedit.method.schedule import rank_generator, student_timesteps  # noqa: E402
from npedit.models.codec import CodecConfig, PatchCodec  # noqa: E402
from npedit.models.dit import FlowDiT  # noqa: E402
from npedit.models.text_encoder import TextEncoder  # noqa: E402
from npedit.models.tokenizer import WordTokenizer  # noqa: E402
from npedit.presets import get_preset  # noqa: E402


def true_pairs(step: int, batch_size: int, num_examples: int, seed: int, image_size: int,
               categories: tuple[str, ...]):
    """-> (references [B,3,S,S], targets [B,3,S,S], instructions) of `step` (the oracle's truth)."""
    rows = [edit_example_with_truth(i, seed, image_size, categories)
            for i in global_batch_indices(num_examples, batch_size, step, 1, seed)]
    return (torch.stack([r[0].image for r in rows]), torch.stack([r[1] for r in rows]),
            [r[0].instruction for r in rows])


def export_editor(folder: Path, cfg, student: FlowDiT, diffusion: BuiltinDiffusion) -> Path:
    """The layout of a trainer checkpoint's export/ (loadable by npedit.inference.Editor)."""
    student.save_pretrained(folder / "student")
    diffusion.text_encoder.save_pretrained(folder / "text_encoder")
    diffusion.tokenizer.save_pretrained(folder / "text_encoder")
    diffusion.codec.save_pretrained(folder / "codec")
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(get_preset(args.preset), args.overrides + [f"train.seed={args.seed}"])
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    student = FlowDiT.from_pretrained(cfg.student.pretrained).train()
    if cfg.student.reference_skip:   # the trainer's student is widened the same way (npedit/build.py)
        student = student.with_reference_skip()
    text_encoder = TextEncoder.from_pretrained(cfg.text.pretrained).eval().requires_grad_(False)
    diffusion = BuiltinDiffusion(text_encoder, WordTokenizer.from_pretrained(cfg.text.pretrained),
                                 PatchCodec(CodecConfig(factor=cfg.codec.factor)), cfg.text.max_length)
    o = cfg.student_optim
    steps, batch, size = cfg.train.max_steps, cfg.data.batch_size, cfg.data.image_size
    opt = torch.optim.AdamW(student.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, steps))
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    log = (out / "metrics.jsonl").open("w")
    for step in range(steps):
        refs, targets, instructions = true_pairs(step, batch, cfg.data.num_examples, cfg.train.seed, size,
                                                  tuple(cfg.data.categories))
        text = diffusion.encode_text(instructions)
        ref_latent, x0 = diffusion.encode_images(refs), diffusion.encode_images(targets)   # [B, 12, S/2, S/2]
        t = torch.rand(batch, generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        loss = F.mse_loss(diffusion.velocity(student, x_t, t, text, ref_latent), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), o.clip)
        opt.step()
        sched.step()
        log.write(json.dumps({"step": step + 1, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0]}) + "\n")
    log.close()
    train_s = time.time() - start

    student.eval()

    def edit_fn(images, texts):   # the trainer's sampling noise (Trainer.edit): seeded by train.seed
        return edit_images(diffusion, student, images, texts, student_timesteps(cfg.method),
                           rank_generator(cfg.train.seed, 0, 0, "sample"))

    report = evaluate_editor(edit_fn, num_examples=cfg.train.oracle_eval_examples, image_size=size,
                             categories=tuple(cfg.data.categories))
    (out / "oracle_report.json").write_text(json.dumps({"after": report, "train_seconds": round(train_s, 1)},
                                                       indent=2) + "\n")
    export_editor(out / "export", cfg, student, diffusion)
    print(f"supervised: {steps} steps x batch {batch} in {train_s:.0f} s\n{format_report(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
