"""Diffusers students (SD3, FLUX) against the diffusers pipelines they come from: text conditioning,
velocity and timestep conventions, the reference-token path, the VAE codec, sizes that do not fit."""
import pytest
import torch
from fixtures_hf import save_student

from npedit.adapters.diffusers_family import DiffusersStudentSpec
from npedit.adapters.text_cond import TextCond
from npedit.config import ConfigError

PROMPTS = ["make the red circle blue", "a green square"]
MAX_LEN = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    return {name: save_student(name, root / name) for name in ("sd3", "flux")}


@pytest.fixture(scope="module")
def loaded(folders):
    """family -> (spec, editor, diffusion, pipeline) loaded through npedit's path and through diffusers'."""
    from diffusers import DiffusionPipeline

    out = {}
    for name, folder in folders.items():
        spec = DiffusersStudentSpec(str(folder), "", image_size=32, max_length=MAX_LEN, guidance=3.5)
        editor = spec.load_transformer(str(folder), torch.float32, None).eval()
        diffusion = spec.diffusion(spec.load_frozen(torch.float32, None))
        out[name] = (spec, editor, diffusion, DiffusionPipeline.from_pretrained(folder))
    return out


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_text_conditioning_equals_the_pipelines_encode_prompt(loaded):
    _, _, diffusion, pipe = loaded["sd3"]
    cond = diffusion.encode_text(PROMPTS)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=MAX_LEN)
    torch.testing.assert_close(cond.tokens, embeds)
    torch.testing.assert_close(cond.pooled, pooled)
    _, _, diffusion, pipe = loaded["flux"]
    cond = diffusion.encode_text(PROMPTS)
    embeds, pooled, _ = pipe.encode_prompt(PROMPTS, None, max_sequence_length=MAX_LEN)
    torch.testing.assert_close(cond.tokens, embeds)
    torch.testing.assert_close(cond.pooled, pooled)


def test_text_conditioning_slices_and_concatenates(loaded):
    cond = loaded["sd3"][2].encode_text(PROMPTS + ["low quality, artifacts"])
    assert len(cond) == 3 and len(cond[1:]) == 2
    both = TextCond.cat([cond[:1], cond[2:]])
    torch.testing.assert_close(both.tokens, cond.tokens[[0, 2]])
    torch.testing.assert_close(both.pooled, cond.pooled[[0, 2]])


def test_sd3_text_only_velocity_is_the_pipelines_transformer_call(loaded):
    _, editor, diffusion, pipe = loaded["sd3"]
    x, t = _randn(2, 4, 8, 8), torch.tensor([0.3, 0.9])
    cond = diffusion.encode_text(PROMPTS)
    # StableDiffusion3Pipeline: timestep = scheduler sigma * 1000, the output is eps - x0
    expected = pipe.transformer(hidden_states=x, encoder_hidden_states=cond.tokens, pooled_projections=cond.pooled,
                                timestep=t * 1000).sample
    torch.testing.assert_close(diffusion.velocity(editor, x, t, cond), expected)


def test_flux_text_only_velocity_is_the_pipelines_transformer_call(loaded):
    from diffusers import FluxKontextPipeline as P

    _, editor, diffusion, pipe = loaded["flux"]
    x, t = _randn(2, 4, 8, 8), torch.tensor([0.3, 0.9])
    cond = diffusion.encode_text(PROMPTS)
    out = pipe.transformer(hidden_states=P._pack_latents(x, 2, 4, 8, 8), timestep=t, guidance=torch.full((2,), 3.5),
                           pooled_projections=cond.pooled, encoder_hidden_states=cond.tokens,
                           txt_ids=torch.zeros(MAX_LEN, 3), img_ids=P._prepare_latent_image_ids(2, 4, 4, "cpu",
                                                                                                 torch.float32)).sample
    torch.testing.assert_close(diffusion.velocity(editor, x, t, cond), P._unpack_latents(out, 32, 32, 4))


def test_flux_reference_path_is_kontexts(loaded):
    """Reference latents packed after the target, RoPE frame id 1, output cropped to the target tokens."""
    from diffusers import FluxKontextPipeline as P

    _, editor, diffusion, pipe = loaded["flux"]
    x, ref, t = _randn(1, 4, 8, 8), _randn(1, 4, 8, 8, seed=1), torch.tensor([0.6])
    cond = diffusion.encode_text(PROMPTS[:1])
    ids = P._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    ref_ids = ids.clone()
    ref_ids[..., 0] = 1
    out = pipe.transformer(hidden_states=torch.cat([P._pack_latents(x, 1, 4, 8, 8), P._pack_latents(ref, 1, 4, 8, 8)], 1),
                           timestep=t, guidance=torch.full((1,), 3.5), pooled_projections=cond.pooled,
                           encoder_hidden_states=cond.tokens, txt_ids=torch.zeros(MAX_LEN, 3),
                           img_ids=torch.cat([ids, ref_ids])).sample[:, :16]
    v = diffusion.velocity(editor, x, t, cond, ref)
    torch.testing.assert_close(v, P._unpack_latents(out, 32, 32, 4))
    assert not torch.allclose(v, diffusion.velocity(editor, x, t, cond, ref * 0.5))  # the reference matters


def test_sd3_reference_tokens_equal_a_side_by_side_latent(loaded, monkeypatch):
    """Our sequence concatenation == diffusers' own forward on [target | reference] side by side whose
    position crop starts where the target's does (attention does not see token order)."""
    _, editor, diffusion, _ = loaded["sd3"]
    tr = editor.transformer
    x, ref, t = _randn(1, 4, 8, 8), _randn(1, 4, 8, 8, seed=1), torch.tensor([0.6])
    cond = diffusion.encode_text(PROMPTS[:1])
    ours = diffusion.velocity(editor, x, t, cond, ref)
    embed = tr.pos_embed
    size, p = embed.pos_embed_max_size, embed.patch_size
    top = left = (size - 8 // p) // 2  # the teacher's crop of the 8x8 target

    def crop(height, width):
        table = embed.pos_embed.reshape(1, size, size, -1)[:, top:top + height // p, left:left + width // p]
        return table.reshape(1, -1, table.shape[-1])

    monkeypatch.setattr(embed, "cropped_pos_embed", crop)
    wide = tr(hidden_states=torch.cat([x, ref], dim=-1), encoder_hidden_states=cond.tokens,
              pooled_projections=cond.pooled, timestep=t * 1000).sample
    torch.testing.assert_close(ours, wide[..., :8], rtol=1e-4, atol=1e-5)
    assert ours.shape == x.shape


def test_sd3_reference_path_checkpointed_matches_and_passes_gradients(loaded):
    _, editor, diffusion, _ = loaded["sd3"]
    x, ref, t = _randn(1, 4, 8, 8), _randn(1, 4, 8, 8, seed=1), torch.tensor([0.6])
    cond = diffusion.encode_text(PROMPTS[:1])
    plain = diffusion.velocity(editor, x, t, cond, ref)
    editor.set_checkpointing("full")
    try:
        x.requires_grad_(True)
        out = diffusion.velocity(editor, x, t, cond, ref)
        out.square().sum().backward()
    finally:
        editor.transformer.disable_gradient_checkpointing()
    torch.testing.assert_close(out.detach(), plain)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in editor.transformer.transformer_blocks.parameters() if p.requires_grad)


def test_flow_convention_matches_the_scheduler():
    """x0 = x_t - t v is one FlowMatchEuler step to sigma 0 (the pipelines' sampler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=[0.7])
    x, v = _randn(1, 4, 8, 8), _randn(1, 4, 8, 8, seed=1)
    torch.testing.assert_close(sched.step(v, sched.timesteps[0], x).prev_sample, x - 0.7 * v)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_vae_codec_uses_scaling_and_shift_and_decodes_with_gradient(loaded, family):
    _, _, diffusion, pipe = loaded[family]
    images = torch.rand(2, 3, 32, 32)
    vae, cfg = pipe.vae, pipe.vae.config
    latents = diffusion.encode_images(images)
    expected = (vae.encode(2 * images - 1).latent_dist.mode() - (cfg.shift_factor or 0)) * cfg.scaling_factor
    torch.testing.assert_close(latents, expected)
    assert latents.shape == (2, 4, 8, 8)
    z = latents.clone().requires_grad_(True)
    decoded = diffusion.decode_latents(z)
    expected = vae.decode(z.detach() / cfg.scaling_factor + (cfg.shift_factor or 0)).sample / 2 + 0.5
    torch.testing.assert_close(decoded.detach(), expected)
    decoded.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("family, size", [("sd3", 36), ("flux", 20)])
def test_image_size_that_does_not_fit_the_pipeline_is_a_clear_error(folders, family, size):
    with pytest.raises(ConfigError, match=f"data.image_size={size} must be a multiple of 8"):
        DiffusersStudentSpec(str(folders[family]), "", image_size=size, max_length=MAX_LEN, guidance=3.5)


def test_teacher_of_another_family_is_refused(folders):
    with pytest.raises(ConfigError, match="student.teacher"):
        DiffusersStudentSpec(str(folders["sd3"]), str(folders["flux"]), image_size=32, max_length=MAX_LEN,
                             guidance=3.5)


@pytest.mark.parametrize("attention", ["npedit", "sdpa"])
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_selective_checkpointing_keeps_the_blocks_attention(folders, family, attention):
    """Every transformer block of a diffusers student is checkpointed in the run's mode: the three modes
    give the same gradients; full re-runs every attention forward in backward, selective none, and keeps
    exactly the attention outputs (and LSE) beyond what full keeps, with npedit's processors or
    diffusers' own SDPA ones."""
    from npedit.ops.checkpoint import CHECKPOINT_MODES, AttentionCalls
    from npedit.ops.memory import SavedTensorCounter

    folder = str(folders[family])
    spec = DiffusersStudentSpec(folder, "", image_size=32, max_length=MAX_LEN, guidance=3.5, attention=attention)
    editor = spec.load_transformer(folder, torch.float32, None)
    diffusion = spec.diffusion(spec.load_frozen(torch.float32, None))
    x, ref, t = _randn(1, 4, 8, 8), _randn(1, 4, 8, 8, seed=1), torch.tensor([0.6])
    cond = diffusion.encode_text(PROMPTS[:1])
    params = [p for p in editor.parameters() if p.requires_grad]
    grads, saved, forward, reruns = {}, {}, {}, {}
    for mode in CHECKPOINT_MODES:
        editor.set_checkpointing(mode)
        x_in = x.clone().requires_grad_(True)
        with SavedTensorCounter() as counter, AttentionCalls() as calls:
            out = diffusion.velocity(editor, x_in, t, cond, ref)  # student mode: target + reference tokens
        saved[mode], forward[mode] = counter.saved_bytes(exclude=out), calls
        with AttentionCalls() as calls:
            grads[mode] = torch.autograd.grad(out.square().sum(), [x_in, *params])
        reruns[mode] = calls.calls
        del out
    editor.set_checkpointing("none")
    blocks = forward["none"].calls
    assert blocks >= 2 and all(forward[mode].calls == blocks for mode in CHECKPOINT_MODES)
    assert reruns == {"none": 0, "full": blocks, "selective": 0}
    for mode in ("full", "selective"):
        for a, b in zip(grads["none"], grads[mode]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert saved["selective"] == saved["full"] + forward["selective"].output_bytes
    assert saved["none"] > saved["selective"] > saved["full"]
