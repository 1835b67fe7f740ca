"""The two training stacks the planner and the benchmarks compare.

- plain: what a first implementation with diffusers + transformers does: the PyTorch reference ops,
  transformers' SDPA attention in the judge, no activation checkpointing, full-sequence VLM logits,
  every GPU holding full replicas (DDP) with the usual mixed-precision recipe (fp32 trainable
  weights, gradients and AdamW states; frozen models in the run's precision);
- npedit: fused ops, the configured activation checkpointing (`student.checkpointing`) of the student
  and of the fake score (the critic update trains it on the same tokens), per-block checkpointing of
  the frozen judge in the student loss in the same mode (`TinyVLM.checkpointing`,
  `JudgeModule.set_checkpointing`), the answer loss on the answer position only, every model sharded
  by DeepSpeed ZeRO (train.zero_stage for the trainable engines, ZeRO-3 for the frozen ones).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from torch import nn

from npedit.build import set_run_checkpointing as set_models_checkpointing

__all__ = ["NPEDIT", "PLAIN", "STACKS", "Stack", "applied", "judge_vlm", "set_run_checkpointing"]


@dataclass(frozen=True)
class Stack:
    name: str
    ops: str | None              # NPEDIT_OPS during the step (None: leave the environment alone)
    checkpointing: str | None    # student checkpointing (None: the config's)
    full_logits: bool            # the plain judge (full-sequence logits)
    engine: str                  # "torch" (replicas, torch AdamW) | "deepspeed" (ZeRO)


PLAIN = Stack("plain", "ref", "none", True, "torch")
NPEDIT = Stack("npedit", None, None, False, "deepspeed")
STACKS = {"plain": PLAIN, "npedit": NPEDIT}


def judge_vlm(judge) -> nn.Module | None:
    """The judge adapter's network whose blocks the run's checkpointing sets: the built-in judge's TinyVLM
    or a transformers judge's JudgeModule (None for other judges, e.g. the plain stack's)."""
    from npedit.adapters.hf_judge import JudgeModule
    from npedit.models.vlm import TinyVLM

    for name in ("vlm", "module"):
        net = getattr(judge, name, None)
        net = getattr(net, "module", net)                               # a DeepSpeed engine's module
        if isinstance(net, (TinyVLM, JudgeModule)):
            return net
    return None


def set_run_checkpointing(sn, mode: str) -> None:
    """`npedit.build.set_run_checkpointing` on a StepNetworks: student, fake score, judge."""
    set_models_checkpointing(sn.student, sn.fake, judge_vlm(sn.nets.judge), mode)


@contextlib.contextmanager
def applied(stack: Stack, sn, checkpointing: str):
    """Run a step of `sn` (StepNetworks) the way `stack` would: ops backend, checkpointing, judge."""
    from npedit.plan.plain import plain_judge

    old_ops = os.environ.get("NPEDIT_OPS")
    old_judge = sn.nets.judge
    vlm = getattr(getattr(old_judge, "module", None), "vlm", None)     # a transformers judge
    old_attention = getattr(getattr(vlm, "config", None), "_attn_implementation", None)
    try:
        if stack.ops is not None:
            os.environ["NPEDIT_OPS"] = stack.ops
        set_run_checkpointing(sn, stack.checkpointing or checkpointing)
        if stack.full_logits:
            sn.nets.judge = plain_judge(old_judge)
            if vlm is not None and old_attention not in (None, "sdpa"):
                vlm.set_attn_implementation("sdpa")
        yield
    finally:
        if vlm is not None and old_attention not in (None, "sdpa"):
            vlm.set_attn_implementation(old_attention)
        sn.nets.judge = old_judge
        set_run_checkpointing(sn, checkpointing)
        if stack.ops is not None:
            if old_ops is None:
                os.environ.pop("NPEDIT_OPS", None)
            else:
                os.environ["NPEDIT_OPS"] = old_ops
