"""npedit's attention processors in diffusers students (SD3 / SD3.5, FLUX) against diffusers' stock ones:
outputs and gradients (inputs and every parameter) of tiny random transformers, on the PyTorch reference
backend and, under the Triton interpreter (TRITON_INTERPRET=1 from conftest), on the Triton kernels; every
attention module switched; unsupported models refused; the masked call's fallback; student.attention."""
import copy

import pytest
import torch

from npedit import ops
from npedit.ops.triton import available as triton_available
from npedit.ops.triton import interpreting

pytest.importorskip("diffusers")  # the "hf" extra; diffusers-dependent imports are local below

TOL = {"rtol": 1e-5, "atol": 1e-5}


def use_npedit_attention(transformer):
    from npedit.adapters.diffusers_attention import use_npedit_attention

    return use_npedit_attention(transformer)


def _processor_classes():
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    from npedit.adapters.diffusers_attention import (
        NpeditFluxAttnProcessor,
        NpeditJointAttnProcessor,
    )

    return {"JointAttnProcessor2_0": JointAttnProcessor2_0, "FluxAttnProcessor": FluxAttnProcessor,
            "NpeditJointAttnProcessor": NpeditJointAttnProcessor, "NpeditFluxAttnProcessor": NpeditFluxAttnProcessor}


def _sd3(num_layers=2, qk_norm="rms_norm"):
    """SD3.5-like MMDiT: dual attention (attn2) in block 0, context_pre_only in the last block."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=num_layers,
                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                 caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
                                 pos_embed_max_size=16, qk_norm=qk_norm, dual_attention_layers=(0,))


def _flux(num_layers=2, num_single_layers=2):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=num_layers,
                                  num_single_layers=num_single_layers, attention_head_dim=8, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                                  axes_dims_rope=(2, 2, 4))


def _sd3_inputs(batch=2, size=8, text=5):
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(batch, 4, size, size, generator=g),
            "encoder_hidden_states": torch.randn(batch, text, 32, generator=g),
            "pooled_projections": torch.randn(batch, 32, generator=g),
            "timestep": torch.rand(batch, generator=g) * 1000}


def _flux_inputs(batch=2, h=4, w=4, text=5):
    g = torch.Generator().manual_seed(1)
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1], img_ids[..., 2] = torch.arange(h)[:, None], torch.arange(w)[None, :]
    return {"hidden_states": torch.randn(batch, h * w, 16, generator=g),
            "encoder_hidden_states": torch.randn(batch, text, 32, generator=g),
            "pooled_projections": torch.randn(batch, 16, generator=g),
            "timestep": torch.rand(batch, generator=g),
            "guidance": torch.full((batch,), 3.5),
            "img_ids": img_ids.reshape(-1, 3), "txt_ids": torch.zeros(text, 3)}


DIFFERENTIABLE = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")


def _run(model, inputs):
    """-> [output, d/d(each float input), d/d(each parameter)] for a fixed random output gradient."""
    inputs = {k: v.clone().requires_grad_(k in DIFFERENTIABLE) for k, v in inputs.items()}
    out = model(**inputs, return_dict=False)[0]
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    leaves = [v for k, v in inputs.items() if k in DIFFERENTIABLE] + list(model.parameters())
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return [out.detach()] + [g if g is None else g.detach() for g in grads]


def _compare(stock, inputs):
    ours = copy.deepcopy(stock)
    use_npedit_attention(ours)
    expected, got = _run(stock, inputs), _run(ours, inputs)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert (a is None) == (b is None), i
        if a is not None:
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, i=i: f"result {i}: {m}")


@pytest.fixture
def count_calls(monkeypatch):
    calls = []
    real = ops.attention
    monkeypatch.setattr(ops, "attention", lambda *a, **k: (calls.append(a[0].shape), real(*a, **k))[1])
    return calls


# ------------------------------------------------------------------------------------------- reference backend


@pytest.mark.parametrize("qk_norm", ["rms_norm", None])
def test_sd3_outputs_and_gradients_equal_the_stock_processor(monkeypatch, count_calls, qk_norm):
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    _compare(_sd3(qk_norm=qk_norm), _sd3_inputs())
    # 2 joint attentions (16 image + 5 text tokens) and block 0's image-only attn2 (16 tokens)
    assert sorted(s[1] for s in count_calls) == [16, 21, 21]


def test_flux_outputs_and_gradients_equal_the_stock_processor(monkeypatch, count_calls):
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    _compare(_flux(), _flux_inputs())
    assert [s[1] for s in count_calls] == [21] * 4  # 2 double + 2 single blocks, text tokens first


# ------------------------------------------------------------------------------------------- Triton kernels


@pytest.mark.skipif(not (interpreting() and triton_available()),
                    reason="runs the Triton kernels in the interpreter (TRITON_INTERPRET=1 and Triton installed)")
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_triton_kernel_matches_the_stock_processor(monkeypatch, count_calls, family):
    monkeypatch.setenv("NPEDIT_OPS", "triton")  # forced: an error, not a silent fallback, if Triton cannot run
    if family == "sd3":
        _compare(_sd3(num_layers=1), _sd3_inputs(batch=1, text=3))
    else:
        _compare(_flux(num_layers=1, num_single_layers=1), _flux_inputs(batch=1, h=2, w=4, text=3))
    assert count_calls


# ------------------------------------------------------------------------------------------- installation


def test_fused_flux_projections_match_too(monkeypatch):
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    stock = _flux(num_layers=1, num_single_layers=1)
    ours = copy.deepcopy(stock)
    use_npedit_attention(ours)
    for model in (stock, ours):
        model.fuse_qkv_projections()
    assert ours.transformer_blocks[0].attn.fused_projections
    inputs = _flux_inputs(batch=1)
    torch.testing.assert_close(_run(ours, inputs)[0], _run(stock, inputs)[0], **TOL)


def test_every_attention_module_is_switched():
    c = _processor_classes()
    NpeditJointAttnProcessor, NpeditFluxAttnProcessor = c["NpeditJointAttnProcessor"], c["NpeditFluxAttnProcessor"]
    sd3, flux = _sd3(), _flux()
    assert use_npedit_attention(sd3) == 3  # attn of both blocks + block 0's attn2
    assert all(isinstance(p, NpeditJointAttnProcessor) for p in sd3.attn_processors.values())
    assert len(sd3.attn_processors) == 3
    assert use_npedit_attention(flux) == 4
    assert all(isinstance(p, NpeditFluxAttnProcessor) for p in flux.attn_processors.values())
    assert len(flux.attn_processors) == 4
    assert use_npedit_attention(flux) == 4  # idempotent


def test_unsupported_transformers_and_custom_processors_are_refused():
    from diffusers.models.attention_processor import (
        FusedJointAttnProcessor2_0,
        JointAttnProcessor2_0,
    )

    with pytest.raises(ValueError, match="Linear is not supported"):
        use_npedit_attention(torch.nn.Linear(2, 2))
    sd3 = _sd3(num_layers=1)
    sd3.transformer_blocks[0].attn.set_processor(FusedJointAttnProcessor2_0())
    with pytest.raises(ValueError, match="FusedJointAttnProcessor2_0"):
        use_npedit_attention(sd3)
    assert type(sd3.transformer_blocks[0].attn2.processor) is JointAttnProcessor2_0  # nothing half-switched


def test_a_masked_call_runs_the_stock_processor(monkeypatch):
    c = _processor_classes()
    monkeypatch.setattr(ops, "attention", lambda *a, **k: pytest.fail("the fused op got a masked call"))
    flux = _flux(num_layers=1, num_single_layers=0)
    attn = flux.transformer_blocks[0].attn
    x, ctx = torch.randn(1, 6, 16), torch.randn(1, 3, 16)
    mask = torch.ones(1, 1, 9, 9, dtype=torch.bool).tril()
    expected = c["FluxAttnProcessor"]()(attn, x, ctx, attention_mask=mask)
    got = c["NpeditFluxAttnProcessor"]()(attn, x, ctx, attention_mask=mask)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    sd3 = _sd3(num_layers=1)
    attn = sd3.transformer_blocks[0].attn
    mask = torch.ones(1, 9, dtype=torch.bool)
    expected = c["JointAttnProcessor2_0"]()(attn, x, ctx, attention_mask=mask)
    got = c["NpeditJointAttnProcessor"]()(attn, x, ctx, attention_mask=mask)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------- config switch


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    from fixtures_hf import save_student

    return save_student("sd3", tmp_path_factory.mktemp("students") / "sd3")


@pytest.mark.parametrize("attention, processor", [("npedit", "NpeditJointAttnProcessor"),
                                                  ("sdpa", "JointAttnProcessor2_0")])
def test_student_attention_config_switch(sd3_folder, attention, processor):
    from npedit.build import ModelPlan
    from npedit.config import Config, apply_overrides

    overrides = [f"student.pretrained={sd3_folder}", "text.max_length=16"]
    if attention != "npedit":
        overrides.append(f"student.attention={attention}")
    cfg = apply_overrides(Config(), overrides)
    assert cfg.student.attention == attention
    spec = ModelPlan(cfg).student_spec
    assert spec.attention == attention
    editor = spec.load_transformer(spec.source, torch.float32, None)
    assert {type(p) for p in editor.transformer.attn_processors.values()} == {_processor_classes()[processor]}


def test_student_attention_is_validated():
    from npedit.config import Config, ConfigError, apply_overrides

    with pytest.raises(ConfigError, match="student.attention must be npedit|sdpa, got 'flash'"):
        apply_overrides(Config(), ["student.attention=flash"])
