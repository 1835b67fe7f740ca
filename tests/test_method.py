"""The method's pieces against METHOD.md's formulas, on random tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from npedit.config import MethodConfig
from npedit.method import losses
from npedit.method.questions import build_questions, question_vocabulary
from npedit.method.schedule import (rank_generator, sample_unroll_depth, shift_time, student_timesteps,
                                    vlm_logit_scale)
from npedit.method.unroll import euler_sample, euler_steps, sample, sample_with, unroll_student


def test_dmd_gradient_equals_formula():
    x0 = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    x_real, x_fake = torch.randn_like(x0), torch.randn_like(x0)
    losses.dmd_loss(x0, x_real, x_fake).backward()
    norm = (x0.detach() - x_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = (x_fake - x_real) / norm / x0.numel()
    torch.testing.assert_close(x0.grad.double(), expected, rtol=1e-5, atol=1e-9)


def test_dmd_loss_value():
    x0, x_real, x_fake = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    norm = (x0 - x_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    grad = (x_fake - x_real) / norm
    torch.testing.assert_close(losses.dmd_loss(x0, x_real, x_fake), 0.5 * grad.pow(2).mean())


def test_logit_scale_ramp():
    m = MethodConfig()
    assert vlm_logit_scale(0, m) == 0.1
    assert vlm_logit_scale(-5, m) == 0.1   # warm-up steps (counted from the NP-Edit stage's start)
    assert abs(vlm_logit_scale(1000, m) - 0.55) < 1e-12
    assert vlm_logit_scale(2000, m) == 1.0 and vlm_logit_scale(10**6, m) == 1.0


def test_time_shift_and_schedule():
    assert shift_time(1.0, 3.0) == 1.0 and abs(shift_time(0.5, 3.0) - 0.75) < 1e-12
    assert student_timesteps(MethodConfig()) == [1.0, 0.75, 0.5, 0.25]


def test_unroll_depth_shared_across_ranks_and_uniform():
    draws = [sample_unroll_depth(0, s, 4) for s in range(400)]
    assert set(draws) == {1, 2, 3, 4}
    assert draws == [sample_unroll_depth(0, s, 4) for s in range(400)]  # no rank in the key: same everywhere
    assert all(abs(draws.count(k) / 400 - 0.25) < 0.08 for k in range(1, 5))


def test_rank_noise_differs_per_rank_and_repeats():
    a = torch.randn(4, generator=rank_generator(0, 5, 0, "dmd"))
    b = torch.randn(4, generator=rank_generator(0, 5, 1, "dmd"))
    c = torch.randn(4, generator=rank_generator(0, 5, 0, "dmd"))
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_unroll_matches_formula_and_backprops_through_both_passes():
    w = torch.tensor(0.3, requires_grad=True)
    velocity = lambda x, t: w * x + t.view(-1, 1, 1, 1)  # noqa: E731
    ts = [1.0, 0.75, 0.5, 0.25]
    x0 = unroll_student(velocity, (2, 1, 2, 2), 3, ts, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    eps, eps2 = torch.randn(2, 1, 2, 2, generator=g), torch.randn(2, 1, 2, 2, generator=g)
    first = eps - 1.0 * (w * eps + 1.0)
    x_t = 0.5 * first + 0.5 * eps2
    expected = x_t - 0.5 * (w * x_t + 0.5)
    torch.testing.assert_close(x0, expected)
    (gw,) = torch.autograd.grad(x0.sum(), w)
    (gw_detached_first,) = torch.autograd.grad((x_t.detach() - 0.5 * (w * x_t.detach() + 0.5)).sum(), w)
    assert not torch.allclose(gw, gw_detached_first)  # the first pass contributes


def test_inference_runs_all_steps():
    calls = []
    velocity = lambda x, t: (calls.append(float(t[0])), torch.zeros_like(x))[1]  # noqa: E731
    out = sample(velocity, (1, 1, 2, 2), [1.0, 0.5, 0.25], torch.Generator().manual_seed(0))
    assert calls == [1.0, 0.5, 0.25] and out.shape == (1, 1, 2, 2)


def test_euler_sampler_integrates_the_flow_ode():
    """v = eps - x0 is constant along a straight flow path, so Euler lands on x0 exactly in any number of
    steps; a velocity linear in x (v = x) has x(0) = x(1) (1 - 1/N)^N after N steps."""
    x0_true = torch.tensor([[[[0.3, -1.2], [2.0, 0.0]]]])
    noise = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    straight = lambda x, t: (x - x0_true) / t.view(-1, 1, 1, 1)  # noqa: E731  (x = (1-t) x0 + t eps)
    for steps in (1, 3):
        out = euler_sample(straight, (1, 1, 2, 2), steps, torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, x0_true, atol=1e-5, rtol=0)
    out = euler_sample(lambda x, t: x, (1, 1, 2, 2), 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, noise * (1 - 1 / 4) ** 4)


def test_sampler_names():
    assert euler_steps("fewstep") is None and euler_steps("euler20") == 20
    for bad in ("euler", "euler0", "euler-3", "ddim", "Euler4"):
        with pytest.raises(ValueError, match="euler<N>"):
            euler_steps(bad)
    calls = []
    velocity = lambda x, t: (calls.append(round(float(t[0]), 4)), torch.zeros_like(x))[1]  # noqa: E731
    sample_with("euler4", velocity, (1, 1, 2, 2), [1.0, 0.5], torch.Generator().manual_seed(0))
    assert calls == [1.0, 0.75, 0.5, 0.25]
    calls.clear()
    sample_with("fewstep", velocity, (1, 1, 2, 2), [1.0, 0.5], torch.Generator().manual_seed(0))
    assert calls == [1.0, 0.5]


def test_weighted_mean_and_cfg():
    v = torch.tensor([1.0, 2.0, 3.0])
    assert float(losses.weighted_mean(v, torch.tensor([1.0, 0.0, 1.0]))) == 2.0
    c, u = torch.ones(2, 1), torch.zeros(2, 1)
    torch.testing.assert_close(losses.cfg_velocity(c, u, torch.tensor([3.5, 7.5])), torch.tensor([[3.5], [7.5]]))


def test_do_nothing_loss_only_on_flagged_samples():
    x0, ref = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    mask = torch.tensor([True, False, False, True])
    expected = (F.mse_loss(x0[0], ref[0]) + F.mse_loss(x0[3], ref[3])) / 4
    torch.testing.assert_close(losses.do_nothing_loss(x0, ref, mask), expected)
    assert float(losses.do_nothing_loss(x0, ref, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_questions_per_category():
    from npedit.data.example import EditBatch
    batch = EditBatch(images=torch.rand(2, 3, 8, 8), captions=["a", "b"], instructions=["remove the red circle",
                      "make the blue square green"], categories=["remove", "color"], objects=["red circle", "blue square"],
                      target_captions=["x", "y"])
    qs, w = build_questions(batch, identity=True, skip=torch.tensor([False, True]))
    assert len(qs) == 4 and w.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert qs[0].images == ("edit",) and qs[0].answer == "no" and "red circle" in qs[0].text
    assert qs[1].images == ("ref", "edit") and qs[1].answer == "yes"
    assert qs[2].answer == "yes" and "make the blue square green" in qs[2].text
    assert {"yes", "no", "?"} <= set(question_vocabulary())
    qs, _ = build_questions(batch, identity=True, style="caption")
    assert qs[0].images == ("edit",) and qs[0].answer == "no"           # removal: the object is gone
    assert qs[1].text == "apart from the red circle , are the two images the same ?" and qs[1].answer == "yes"
    assert qs[2].images == ("edit",) and qs[2].text == "does the image show y ?" and qs[2].answer == "yes"


def test_student_lr_schedule_restarts_at_the_npedit_stage():
    """Each stage gets its own linear warm-up and cosine decay; without a restart point, one schedule."""
    from npedit.config import OptimConfig
    from npedit.engine.engines import lr_lambda

    optim = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10)
    two = lr_lambda(optim, total_steps=1500, restart_at=1200)
    one = lr_lambda(optim, total_steps=1500)
    assert two(0) == one(0) == 0.1 and two(9) == 1.0
    assert two(1199) < 1e-4 and two(1200) == 0.1 and two(1209) == 1.0     # decayed, then warm-up again
    assert two(1200 + 155) == pytest.approx(0.5, abs=1e-9)                 # cosine midpoint of stage 2
    assert two(1499) < 1e-3
    assert one(1200) == pytest.approx(0.5 * (1 + math.cos(math.pi * 1190 / 1490)))
    for restart in (0, 1500):                                              # no second stage: one schedule
        assert [lr_lambda(optim, 1500, restart)(s) for s in (0, 700, 1400)] == [one(s) for s in (0, 700, 1400)]
    constant = lr_lambda(OptimConfig(lr=1.0, warmup_steps=0), 100, restart_at=50)
    assert {constant(s) for s in range(100)} == {1.0}
