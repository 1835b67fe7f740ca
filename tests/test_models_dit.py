"""FlowDiT: shapes, adaLN-Zero, gradients, reference conditioning, checkpointing, dtype."""
import pytest
import torch
from torch import nn

from npedit.models import DiTConfig, FlowDiT

CFG = dict(in_channels=4, sample_size=8, patch_size=2, dim=32, depth=2, heads=2, text_dim=16)


def _model(**overrides) -> FlowDiT:
    return FlowDiT(DiTConfig(**{**CFG, **overrides}))


def _perturb_zero_init(model: nn.Module) -> None:
    """adaLN-Zero starts with zero modulation and output: give those layers small random values."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _inputs(batch=2, text_len=5, ref_hw=(8, 8)):
    x = torch.randn(batch, 4, 8, 8)
    ref = None if ref_hw is None else torch.randn(batch, 4, *ref_hw)
    return x, torch.rand(batch), torch.randn(batch, text_len, 16), ref


@pytest.mark.parametrize("ref_hw", [None, (8, 8), (4, 6)])
@pytest.mark.parametrize("text_len", [1, 7])
def test_output_shape_is_the_target(ref_hw, text_len):
    model = _model()
    x, t, text, ref = _inputs(text_len=text_len, ref_hw=ref_hw)
    assert model(x, t, text, ref).shape == x.shape


def test_zero_init_outputs_zero():
    x, t, text, ref = _inputs()
    assert not _model()(x, t, text, ref).any()


def test_gradients_reach_inputs_and_every_parameter():
    model = _model()
    _perturb_zero_init(model)
    x, t, text, ref = _inputs()
    x.requires_grad_(True)
    ref.requires_grad_(True)
    model(x, t, text, ref).square().mean().backward()
    assert x.grad.abs().sum() > 0 and ref.grad.abs().sum() > 0
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient reaches {missing}"


def test_every_parameter_trains_from_zero_init():
    # adaLN-Zero: step 1 trains only the output projection, step 2 also the modulations, step 3 everything
    model = _model()
    x, t, text, ref = _inputs()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(x, t, text, ref).sub(x).square().mean().backward()
        opt.step()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient reaches {missing}"


def test_reference_and_text_change_the_output():
    model = _model()
    _perturb_zero_init(model)
    x, t, text, ref = _inputs()
    out = model(x, t, text, ref)
    assert not torch.allclose(out, model(x, t, text, ref + 1))
    assert not torch.allclose(out, model(x, t, text))
    assert not torch.allclose(out, model(x, t, text + 1, ref))
    assert not torch.allclose(out, model(x, 1 - t, text, ref))


def test_reference_tokens_carry_the_clean_timestep():
    model = _model()
    x, t, text, ref = _inputs(text_len=5, ref_hw=(4, 6))
    seen = {}
    model.blocks[0].register_forward_hook(lambda mod, args, out: seen.update(args=args))
    model(x, t, text, ref)
    tokens, conds, token_cond = seen["args"]
    num_text, num_ref, num_target = 5, 2 * 3, 4 * 4
    assert tokens.shape[1] == num_text + num_ref + num_target
    assert token_cond.tolist() == [0] * num_text + [1] * num_ref + [0] * num_target
    model(x, t, text)
    assert seen["args"][2] is None
    torch.testing.assert_close(conds[:, 0], seen["args"][1][:, 0])  # text and target: cond(t)
    model(x, torch.zeros_like(t), text)
    torch.testing.assert_close(conds[:, 1], seen["args"][1][:, 0])  # reference: cond(0)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_matches_no_checkpointing(mode):
    model = _model()
    _perturb_zero_init(model)
    x, t, text, ref = _inputs()
    results = []
    for checkpointing in ("none", mode):
        model.checkpointing = checkpointing
        model.zero_grad()
        xg, refg = x.clone().requires_grad_(True), ref.clone().requires_grad_(True)
        out = model(xg, t, text, refg)
        out.square().mean().backward()
        results.append([out, xg.grad, refg.grad] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_rms_norm_variant_and_bf16_weights():
    model = _model(norm="rms", dim=64, heads=4)
    _perturb_zero_init(model)
    x, t, text, ref = _inputs()
    out32 = model(x, t, text, ref)
    model.to(torch.bfloat16)
    out16 = model(x, t, text, ref)  # fp32 inputs are cast to the weights' dtype, output in x's dtype
    assert out16.dtype == torch.float32
    assert (out16 - out32).abs().max() < 0.1 * out32.abs().max()


def test_bad_inputs_and_config_are_clear_errors():
    model = _model()
    x, t, text, ref = _inputs()
    with pytest.raises(ValueError, match="x_t must be"):
        model(x[:, :3], t, text)
    with pytest.raises(ValueError, match="ref must be"):
        model(x, t, text, ref[:, :3])
    with pytest.raises(ValueError, match="text must be"):
        model(x, t, text[..., :8])
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:1].expand(3), text)
    assert model(x, 0.5, text).shape == x.shape  # a scalar t is broadcast
    with pytest.raises(ValueError, match="checkpoint mode"):
        model.checkpointing = "some"
        model(x, t, text)
    with pytest.raises(ValueError, match="norm"):
        DiTConfig(norm="batch")
    with pytest.raises(ValueError, match="sample_size"):
        DiTConfig(sample_size=15)


def test_reference_skip_widens_a_model_without_changing_its_function():
    model = _model()
    _perturb_zero_init(model)
    model.checkpointing = "selective"
    x, t, text, ref = _inputs()
    rng = torch.random.get_rng_state()
    widened = model.with_reference_skip()
    assert torch.equal(torch.random.get_rng_state(), rng)          # the caller's RNG is untouched
    assert widened.config.reference_skip and not model.config.reference_skip
    assert widened.checkpointing == "selective" and widened.training == model.training
    assert not widened.embed.reference_skip.weight.any() and not widened.embed.reference_skip.bias.any()
    torch.testing.assert_close(widened(x, t, text, ref), model(x, t, text, ref), rtol=0, atol=0)
    assert widened.with_reference_skip() is widened


def test_reference_skip_adds_the_same_position_reference_patch_to_each_target_token():
    """Target token i gains reference_skip(patch i of the reference): channel concatenation in effect."""
    from npedit.models.layers import patchify

    widened = _model().with_reference_skip()
    _perturb_zero_init(widened)
    x, t, text, ref = _inputs(text_len=3)
    plain_tokens, _ = widened.embed(x, t, text, None)
    tokens, _ = widened.embed(x, t, text, ref)
    num_target = 16
    expected = plain_tokens[:, -num_target:] + widened.embed.reference_skip(patchify(ref, 2))
    torch.testing.assert_close(tokens[:, -num_target:], expected)
    torch.testing.assert_close(tokens[:, :3], plain_tokens[:, :3])                  # text tokens unchanged
    out = widened(x, t, text, ref)
    out.square().mean().backward()
    assert widened.embed.reference_skip.weight.grad.abs().sum() > 0
    assert widened(x, t, text).shape == x.shape                                      # text-only calls still work


def test_reference_skip_needs_same_size_latents_and_survives_save_and_load(tmp_path):
    widened = _model(reference_skip=True)
    assert not widened.embed.reference_skip.weight.any()                              # zero-initialised when built
    _perturb_zero_init(widened)
    x, t, text, ref = _inputs(ref_hw=(4, 6))
    with pytest.raises(ValueError, match="reference_skip needs the reference and target latents the same size"):
        widened(x, t, text, ref)
    x, t, text, ref = _inputs()
    widened.save_pretrained(tmp_path / "student")
    loaded = FlowDiT.from_pretrained(tmp_path / "student")
    assert loaded.config.reference_skip
    torch.testing.assert_close(loaded(x, t, text, ref), widened(x, t, text, ref))
