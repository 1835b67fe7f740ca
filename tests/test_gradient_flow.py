"""Where the student's loss sends gradients (METHOD.md): through the VLM and the codec decode, and
through DMD into the student only; frozen networks never change; the fake score gets nothing."""
import copy
import dataclasses

import pytest
import torch

from npedit.adapters.builtin import BuiltinDiffusion, BuiltinJudge
from npedit.build import build_models
from npedit.config import ConfigError, MethodConfig, apply_overrides
from npedit.data.example import collate
from npedit.data.shapes import ShapesEditDataset
from npedit.method.questions import Question
from npedit.method.schedule import sample_unroll_depth
from npedit.method.step import Networks, npedit_student_loss, student_samples
from npedit.models.vlm import LMHead
from npedit.presets import get_preset


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Move off the adaLN-Zero init (zero gates give exact-zero gradients to some parameters)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _setup(overrides):
    cfg = apply_overrides(get_preset("shapes_tiny"), ["method.nothing_prob=0.0"] + overrides)
    models = build_models(cfg)
    for m in (models.student, models.real, models.fake):
        _perturb(m)
    models.fake.load_state_dict({k: v + 0.01 for k, v in models.real.state_dict().items()})  # fake != real
    nets = Networks(models.student, models.fake, models.real,
                    BuiltinDiffusion(models.text_encoder, models.text_tokenizer, models.codec, cfg.text.max_length),
                    BuiltinJudge(models.vlm, models.vlm_tokenizer, cfg.vlm.max_text_len))
    ds = ShapesEditDataset(num_examples=16, image_size=cfg.data.image_size)
    batch = collate([ds[i] for i in range(4)])
    return cfg, models, nets, batch


def test_reference_skip_widens_the_student_not_the_scores():
    _, models, _, _ = _setup(["student.reference_skip=true"])
    assert models.student.embed.reference_skip is not None
    assert models.real.embed.reference_skip is None and models.fake.embed.reference_skip is None


@pytest.mark.parametrize("term, overrides", [
    ("vlm", ["method.dmd_weight=0.0", "method.vlm_weight=1.0"]),
    ("dmd", ["method.vlm_weight=0.0", "method.dmd_weight=1.0"]),
    ("vlm, reference skip", ["method.dmd_weight=0.0", "method.vlm_weight=1.0", "student.reference_skip=true"]),
])
def test_student_loss_reaches_every_student_parameter_and_nothing_else(term, overrides):
    cfg, models, nets, batch = _setup(overrides)
    frozen_before = {name: copy.deepcopy(m.state_dict()) for name, m in
                     (("real", models.real), ("vlm", models.vlm), ("text", models.text_encoder), ("fake", models.fake))}
    depths = {sample_unroll_depth(cfg.train.seed, s, 4): s for s in range(20)}
    for step in (depths[1], depths[2]):  # one pass, and two passes with the re-noise between them
        models.student.zero_grad(set_to_none=True)
        loss, metrics, _ = npedit_student_loss(nets, batch, step, cfg, rank=0)
        assert torch.isfinite(loss.detach()) and float(loss.detach()) > 0
        loss.backward()
        missing = [n for n, p in models.student.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, f"{term}: no gradient reached {missing}"
    for name, module in (("real", models.real), ("vlm", models.vlm), ("text", models.text_encoder),
                         ("fake", models.fake)):
        assert all(p.grad is None for p in module.parameters()), f"{name} got a gradient from the student loss"
    torch.optim.SGD(models.student.parameters(), lr=0.1).step()
    for name, module in (("real", models.real), ("vlm", models.vlm), ("text", models.text_encoder),
                         ("fake", models.fake)):
        after = module.state_dict()
        assert all(torch.equal(after[k], v) for k, v in frozen_before[name].items()), f"{name} changed"


def test_a_zero_vlm_weight_builds_no_vlm_graph_and_keeps_the_gradients():
    """DMD-only (vlm_weight = 0) logs the VLM loss without its graph: fewer bytes saved for backward,
    the same logged loss, and exactly the student gradients of a weight too small to count in fp32
    (1e-300 rounds to 0, so that run back-propagates zeros through the judge, as before the skip)."""
    from npedit.ops.memory import saved_tensor_bytes
    results = {}
    for weight in ("0.0", "1e-300"):
        cfg, models, nets, batch = _setup([f"method.vlm_weight={weight}", "method.dmd_weight=1.0"])
        torch.manual_seed(0)
        _perturb(models.student)
        saved = saved_tensor_bytes(lambda: npedit_student_loss(nets, batch, 3, cfg, rank=0)[0])
        models.student.zero_grad(set_to_none=True)
        loss, metrics, _ = npedit_student_loss(nets, batch, 3, cfg, rank=0)
        loss.backward()
        results[weight] = (saved, float(metrics["loss_vlm"]), {n: p.grad.clone() for n, p in
                                                              models.student.named_parameters()})
    (saved0, vlm0, grads0), (saved1, vlm1, grads1) = results["0.0"], results["1e-300"]
    assert saved0 < 0.9 * saved1, (saved0, saved1)
    assert vlm0 == vlm1 and vlm0 > 0
    for name, g in grads1.items():
        assert torch.equal(grads0[name], g), name


def test_vlm_gradient_passes_through_codec_decode_to_the_pixels():
    cfg, models, nets, batch = _setup([])
    latents = torch.randn(2, models.codec.latent_channels, 8, 8, requires_grad=True)
    edited = nets.diffusion.decode_latents(latents)
    qs = [Question(0, ("ref", "edit"), "was the edit carried out ?", "yes"), Question(1, ("edit",), "is there a red circle in the image ?", "no")]
    nets.judge.answer_losses(qs, edited, batch.images[:2], scale=1.0).sum().backward()
    assert latents.grad is not None and latents.grad[0].abs().sum() > 0 and latents.grad[1].abs().sum() > 0


class _StubVLM(torch.nn.Module):
    """A judge whose answer-position hidden state is fixed, so the Yes/No logits are known."""

    class config:  # noqa: N801
        max_images = 2

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor):
        super().__init__()
        self.hidden = hidden
        self.lm_head = LMHead(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.lm_head.weight.copy_(weight)

    def encode_images(self, images):
        return images.flatten(1)[:, None, :4]

    def answer_hidden(self, feats, present, ids, mask):
        return self.hidden + 0 * feats.sum()


class _Tok:
    def token_id(self, word):
        return {"yes": 2, "no": 3}[word]

    def encode(self, texts, max_length, pad_to_max=True, add_bos=False):
        return torch.zeros(len(texts), 4, dtype=torch.long), torch.ones(len(texts), 4, dtype=torch.bool)


def test_vlm_loss_equals_log_sigmoid_of_scaled_margin_for_yes_and_no():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.zeros(5, 2)
    weight[2] = torch.tensor([2.0, -1.0])   # "yes" row: logits 2 (q0), -1 (q1)
    weight[3] = torch.tensor([0.5, 3.0])    # "no"  row: logits 0.5 (q0), 3 (q1)
    judge = BuiltinJudge(_StubVLM(hidden, weight), _Tok(), max_text_len=4)
    qs = [Question(0, ("ref", "edit"), "q", "yes"), Question(1, ("edit",), "q", "no")]
    tau = 0.37
    got = judge.answer_losses(qs, torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), scale=tau)
    l_yes = torch.tensor([2.0, -1.0])
    l_no = torch.tensor([0.5, 3.0])
    expected = torch.stack([-torch.nn.functional.logsigmoid(tau * (l_yes[0] - l_no[0])),
                            -torch.nn.functional.logsigmoid(tau * (l_no[1] - l_yes[1]))])
    torch.testing.assert_close(got, expected)


def test_checkpointing_through_the_unroll_gives_the_same_gradients():
    cfg, models, nets, batch = _setup([])
    step = {sample_unroll_depth(cfg.train.seed, s, 4): s for s in range(20)}[3]  # two passes
    grads = {}
    for mode in ("none", "full", "selective"):
        models.student.checkpointing = mode
        models.student.zero_grad(set_to_none=True)
        loss, _, _ = npedit_student_loss(nets, batch, step, cfg, rank=0)
        loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in models.student.named_parameters()}
    for mode in ("full", "selective"):
        for name, g in grads["none"].items():
            torch.testing.assert_close(grads[mode][name], g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("caption_prob", [1.0, 0.0, 0.5])
def test_warmup_prompts_the_caption_or_the_do_nothing_instruction(caption_prob):
    """Stage 0 encodes the reference's caption for a share method.warmup_caption_prob of the samples
    and the do-nothing instruction for the rest; the target is always the reference."""
    from npedit.method.questions import DO_NOTHING
    from npedit.method.step import warmup_loss

    cfg, _, nets, batch = _setup([f"method.warmup_caption_prob={caption_prob}"])
    seen = []
    encode = nets.diffusion.encode_text
    nets.diffusion.encode_text = lambda prompts: seen.append(list(prompts)) or encode(prompts)
    prompts = []
    for step in range(8):
        loss, _ = warmup_loss(nets, batch, step, cfg, rank=0)
        assert torch.isfinite(loss)
        prompts += [(p, c) for p, c in zip(seen[-1], batch.captions)]
    captions = sum(p == c for p, c in prompts)
    assert all(p in (c, DO_NOTHING) for p, c in prompts)
    if caption_prob == 1.0:
        assert captions == len(prompts)
    elif caption_prob == 0.0:
        assert captions == 0
    else:
        assert 0.25 * len(prompts) < captions < 0.75 * len(prompts)


def test_warmup_caption_prob_outside_0_1_is_refused():
    from npedit.config import ConfigError

    with pytest.raises(ConfigError, match="warmup_caption_prob"):
        apply_overrides(get_preset("shapes_tiny"), ["method.warmup_caption_prob=1.5"])


@pytest.mark.parametrize("condition", ["target_caption", "unconditional"])
def test_dmd_condition_decides_whether_the_scores_read_the_target_caption(condition):
    """Unconditional DMD must not depend on the target captions at all; the paper's DMD must."""
    cfg, models, nets, batch = _setup(["method.vlm_weight=0.0", f"method.dmd_condition={condition}"])
    other = dataclasses.replace(batch, target_captions=list(reversed(batch.target_captions)))
    assert other.target_captions != batch.target_captions
    step = 3
    with torch.no_grad():
        _, m_a, x_a = npedit_student_loss(nets, batch, step, cfg, rank=0)
        _, m_b, x_b = npedit_student_loss(nets, other, step, cfg, rank=0)
        (_, cap_a), (_, cap_b) = (student_samples(nets, b_, step, cfg, 0, step) for b_ in (batch, other))
    assert torch.equal(x_a, x_b)   # the student never reads target captions
    same_dmd = torch.equal(m_a["loss_dmd"], m_b["loss_dmd"])
    assert same_dmd == (condition == "unconditional")
    assert torch.equal(cap_a, cap_b) == (condition == "unconditional")


def test_dmd_condition_rejects_unknown_values():
    with pytest.raises(ConfigError, match="dmd_condition"):
        MethodConfig(dmd_condition="reference_caption")


def test_dmd_scores_read_the_batch_dmd_captions_and_the_judge_the_target_captions():
    """A partial-caption world: DMD is prompted with the batch's DMD captions, the judge still asks
    about the full target captions, and the student reads neither."""
    cfg, models, nets, batch = _setup(["method.vlm_weight=1.0"])
    partial = dataclasses.replace(batch, dmd_captions=[f"a {bg} background" for bg in ("white", "black", "gray", "beige")])
    step = 3
    with torch.no_grad():
        _, m_full, x_full = npedit_student_loss(nets, batch, step, cfg, rank=0)
        _, m_part, x_part = npedit_student_loss(nets, partial, step, cfg, rank=0)
        _, cap_part = student_samples(nets, partial, step, cfg, 0, step)
    assert torch.equal(x_full, x_part)
    assert not torch.equal(m_full["loss_dmd"], m_part["loss_dmd"])
    assert torch.equal(m_full["loss_vlm"], m_part["loss_vlm"])
    torch.testing.assert_close(cap_part, nets.diffusion.encode_text(partial.dmd_captions), atol=1e-5, rtol=1e-5)
