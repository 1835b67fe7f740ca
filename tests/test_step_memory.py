"""What the rest of a training step keeps for backward (counted, not timed): the frozen judge checkpointed
per block in the student loss and the fake score checkpointed in its critic update keep far fewer bytes,
with the same loss values and the same gradients; the stacks set these modes and put them back."""

import pytest
import torch
from test_gradient_flow import _setup
from test_unroll_memory import BUILTIN_DEFAULT

from npedit.method.questions import build_questions
from npedit.method.step import fake_score_loss
from npedit.ops.memory import SavedTensorCounter


def _judge_run(nets, batch, mode: str):
    """-> (saved bytes, per-question losses, gradient to the edited image) of one judge call."""
    nets.judge.vlm.checkpointing = mode
    edited = batch.images.clone().mul_(0.9).add_(0.05).requires_grad_(True)
    questions, _ = build_questions(batch, True, skip=torch.zeros(len(batch), dtype=torch.bool))
    with SavedTensorCounter() as counter:
        losses = nets.judge.answer_losses(questions, edited, batch.images, 1.0)
    saved = counter.saved_bytes(exclude=losses)
    losses.sum().backward()
    return saved, losses.detach(), edited.grad


@pytest.mark.parametrize("sizes", [[], BUILTIN_DEFAULT], ids=["tiny", "builtin-default"])
def test_checkpointed_judge_keeps_less_with_the_same_gradient(sizes):
    _, models, nets, batch = _setup(sizes)
    runs = {mode: _judge_run(nets, batch, mode) for mode in ("none", "selective", "full", "selective")}
    again = _judge_run(nets, batch, "selective")
    assert again[0] == runs["selective"][0]                              # deterministic count
    saved = {mode: r[0] for mode, r in runs.items()}
    assert saved["none"] >= 3 * saved["selective"] > 0, saved
    assert saved["full"] <= saved["selective"], saved
    for mode in ("selective", "full"):
        torch.testing.assert_close(runs[mode][1], runs["none"][1], rtol=0, atol=0)
        torch.testing.assert_close(runs[mode][2], runs["none"][2], rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in models.vlm.parameters())         # frozen: nothing accumulates


def _critic_run(cfg, nets, fake, batch, mode: str):
    fake.checkpointing = mode
    fake.zero_grad(set_to_none=True)
    x0 = nets.diffusion.encode_images(batch.images)
    cap = nets.diffusion.encode_text(list(batch.target_captions))
    with SavedTensorCounter() as counter:
        loss = fake_score_loss(nets, x0, cap, cfg, 0, stream_step=3)
    saved = counter.saved_bytes(exclude=loss)
    loss.backward()
    return saved, loss.detach(), {n: p.grad.clone() for n, p in fake.named_parameters()}


@pytest.mark.parametrize("sizes", [[], BUILTIN_DEFAULT], ids=["tiny", "builtin-default"])
def test_checkpointed_fake_score_keeps_less_with_the_same_gradient(sizes):
    cfg, models, nets, batch = _setup(sizes)
    runs = {mode: _critic_run(cfg, nets, models.fake, batch, mode) for mode in ("none", "selective", "full")}
    assert _critic_run(cfg, nets, models.fake, batch, "selective")[0] == runs["selective"][0]
    saved = {mode: r[0] for mode, r in runs.items()}
    assert saved["none"] >= 2 * saved["selective"] > saved["full"] > 0, saved
    for mode in ("selective", "full"):
        torch.testing.assert_close(runs[mode][1], runs["none"][1], rtol=0, atol=0)
        for name, grad in runs["none"][2].items():
            torch.testing.assert_close(runs[mode][2][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_stacks_set_and_restore_the_run_checkpointing():
    from npedit.plan.networks import build_networks
    from npedit.plan.stacks import NPEDIT, PLAIN, applied, judge_vlm

    cfg, _, _, _ = _setup(["student.checkpointing=selective"])
    sn = build_networks(cfg, "meta")
    vlm = judge_vlm(sn.nets.judge)
    modes = lambda: (sn.student.checkpointing, sn.fake.checkpointing, vlm.checkpointing)
    assert modes() == ("selective",) * 3
    with applied(PLAIN, sn, "selective"):
        assert modes() == ("none",) * 3
    assert modes() == ("selective",) * 3
    with applied(NPEDIT, sn, "selective"):
        assert modes() == ("selective",) * 3
    assert modes() == ("selective",) * 3
