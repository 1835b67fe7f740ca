"""One full NP-Edit training step, plain stack vs npedit, in the same run.

A step is the trainer's: student loss (text encoder, k unrolled student passes, decode, judge, real
and fake scores, DMD), backward, optimizer step, then the critic updates (`npedit.plan.run_step`).
Both stacks use the same built-in models and the same torch AdamW (one process; ZeRO's sharding is
accounted by `npedit plan`, not measured here):
- plain: the PyTorch reference ops (NPEDIT_OPS=ref), no checkpointing, full-sequence logits through
  `TinyVLM.forward` (`npedit.plan.plain`);
- npedit: the fused ops where they run, selective checkpointing of the student, the answer loss on
  the answer position only.
Resolutions follow a latent-diffusion layout (codec factor 8, patch 2: (r/16)^2 tokens per image,
1024 at 512 px; the judge sees 256 tokens per image), the judge's vocabulary is padded to 152,064
words (Qwen2's). Recorded: step time (pytest-benchmark median), the allocator's peak, the live
tensor peak, bytes saved for backward, and `npedit plan`'s prediction for the same step.
"""
from __future__ import annotations

import pytest
import torch
from timing import timed

from npedit.config import Config, apply_overrides
from npedit.plan.measure import measure_step
from npedit.plan.networks import build_networks
from npedit.plan.predict import predict_measurable
from npedit.plan.run_step import (
    make_optimizers,
    probe_batch,
    step_with_passes,
    training_step,
)
from npedit.plan.stacks import NPEDIT, PLAIN, applied

VOCAB = 152_064
MIB = 2 ** 20


def _cases(device: str, quick: bool) -> list[tuple[int, int]]:
    if device == "cuda":
        return [(256, 2), (512, 1), (512, 2), (1024, 2)]
    return [(128, 2), (512, 2)] if quick else [(128, 1), (128, 2), (256, 2), (512, 1), (512, 2)]


def step_config(resolution: int, device: str) -> Config:
    if device == "cuda":   # a larger built-in world on the GPU: DiT 768 x 12, VLM 1024 x 8
        size = ["student.dim=768", "student.depth=12", "student.heads=12", "text.dim=256", "text.depth=2",
                "vlm.dim=1024", "vlm.depth=8", "vlm.vision_dim=512", "vlm.vision_depth=4", "train.precision=bf16"]
    else:
        size = ["student.dim=128", "student.depth=4", "student.heads=4", "text.dim=64", "text.depth=2",
                "vlm.dim=128", "vlm.depth=3", "vlm.vision_dim=64", "vlm.vision_depth=2"]
    return apply_overrides(Config(), size + [
        f"data.image_size={resolution}", "codec.factor=8", f"vlm.patch_size={resolution // 16}", "data.batch_size=1",
        "data.num_examples=16", "vlm.max_text_len=40", "method.fake_updates=2", "student.checkpointing=selective",
        "train.tensorboard=false"])


def vocabulary(size: int = VOCAB) -> list[str]:
    from npedit.build import default_words

    words = default_words()
    return words + [f"w{i}" for i in range(size - len(words))]


@pytest.fixture(scope="module")
def words():
    return vocabulary()


@pytest.mark.parametrize("stack", [PLAIN, NPEDIT], ids=["plain", "npedit"])
@pytest.mark.parametrize("case", range(5))
def test_step(benchmark, recorder, device, quick, words, case, stack):
    from npedit.trainer import build_dataset

    cases = _cases(device, quick)
    if case >= len(cases):
        pytest.skip("no such case on this device")
    resolution, passes = cases[case]
    cfg = step_config(resolution, device)
    dataset = build_dataset(cfg)
    torch.manual_seed(0)
    sn = build_networks(cfg, device, dataset, words)
    batch = probe_batch(cfg, dataset, device)
    step = step_with_passes(cfg, passes)
    optimizers = make_optimizers(sn, cfg)
    with applied(stack, sn, cfg.student.checkpointing):
        seconds = timed(benchmark, lambda: training_step(sn, cfg, batch, step, optimizers), device, rounds=3)
    measured = measure_step(cfg, stack, device, dataset, passes, words=words, sn=sn)
    predicted = predict_measurable(cfg, stack, device, passes, dataset, words=words)
    recorder.add("step", case=f"{resolution}px built-in", stack=stack.name, passes=passes, median_s=seconds,
                 peak_mib=measured.peak_bytes / MIB, step_mib=(measured.peak_bytes - measured.baseline_bytes) / MIB,
                 live_mib=measured.live_peak_bytes / MIB,
                 saved_mib=measured.saved_bytes / MIB, predicted_mib=predicted.allocated / MIB,
                 prediction_err=(predicted.allocated - measured.peak_bytes) / measured.peak_bytes,
                 note="peak: the allocator's (CUDA: max_memory_allocated; CPU: torch.profiler allocation events) "
                      "plus the weights and optimizer states resident before the step; step: the peak above those "
                      "(activations, gradients, temporaries); live: the live tensor bytes' peak; saved: what the "
                      "student loss's forward keeps for backward; predicted: npedit plan's simulation of the same "
                      "step; time_vs_plain = time / plain time; *_plain_over_npedit = plain / npedit")
