"""Transformers VLM judges: torch preprocessing vs the HF image processors, prompts vs the HF
processors' image-token expansion, answer-position logits vs the plain `model(**inputs).logits`,
gradient to the edited image, and the checks that stop a bad judge before training."""
import numpy as np
import pytest
import torch
from fixtures_hf import VLM_FAMILIES, save_qwen_vl, save_vlm
from PIL import Image

from npedit.adapters.hf_judge import HFJudge, HFJudgeSpec, natural_question
from npedit.adapters.vlm_preprocess import RESIZE_TOLERANCE
from npedit.config import ConfigError
from npedit.method.questions import Question

SIZES = {"qwen2_vl": 56, "qwen2_5_vl": 56, "llava_onevision": 28, "internvl": 56}
QUESTIONS = [
    Question(0, ("ref", "edit"), 'the first image is the input . was the edit " make the circle red " carried out '
                                 "in the second image ?", "yes"),
    Question(0, ("edit",), "is there a blue square in the image ?", "no"),
    Question(1, ("ref", "edit"), "apart from the circle , are the two images the same ?", "yes"),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    return {name: save_vlm(name, root / name) for name in VLM_FAMILIES}


@pytest.fixture(scope="module")
def judges(folders):
    out = {}
    for name, folder in folders.items():
        spec = HFJudgeSpec(str(folder), image_size=SIZES[name])
        out[name] = HFJudge(spec.build(torch.float32, None), spec)
    return out


def _uint8_images(n, size, seed=0, smooth=False):
    """Random RGB images; smooth ones (8x8 colours upsampled) are closer to photographs than pixel noise."""
    rng = np.random.default_rng(seed)
    if not smooth:
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    small = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]
    return [np.array(im.resize((size, size), Image.BILINEAR)) for im in small]


def _tensor(arrays):
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])


def _hf_pixels(folder, arrays, **kwargs):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    return processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt", **kwargs)


def _ours(judge, images):
    return judge.spec.family.pixels(images)


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_preprocessing_equals_the_hf_processor_at_the_target_size(folders, judges, name):
    arrays = _uint8_images(2, SIZES[name])
    ours, hf = _ours(judges[name], _tensor(arrays)), _hf_pixels(folders[name], arrays)
    if name.startswith("qwen"):
        torch.testing.assert_close(ours["pixel_values"], hf["pixel_values"], atol=1e-5, rtol=1e-5)
        assert torch.equal(ours["image_grid_thw"], hf["image_grid_thw"])
    elif name == "llava_onevision":  # [N, patches, 3, S, S]: base image and its single anyres tile
        assert hf["pixel_values"].shape[1] == 2
        for patch in range(2):
            torch.testing.assert_close(ours["pixel_values"], hf["pixel_values"][:, patch], atol=1e-5, rtol=1e-5)
    else:  # one tile per image
        torch.testing.assert_close(ours["pixel_values"], hf["pixel_values"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, source_size", [("qwen2_5_vl", 64), ("llava_onevision", 40), ("internvl", 70)])
def test_resized_preprocessing_is_within_the_bicubic_tolerance(folders, judges, name, source_size):
    arrays = _uint8_images(2, source_size, seed=1, smooth=True)
    family = judges[name].spec.family
    ours = _ours(judges[name], _tensor(arrays))["pixel_values"]
    kwargs = {"crop_to_patches": False} if name == "internvl" else {}
    hf = _hf_pixels(folders[name], arrays, **kwargs)["pixel_values"]
    if name == "llava_onevision":
        hf = hf[:, 0]  # the base image: the whole picture resized to the tile size
    std = torch.tensor(family.std)
    if name.startswith("qwen"):  # rows of (3, T, 14, 14)
        diff = (ours - hf).view(ours.shape[0], 3, -1) * std.view(1, 3, 1)
    else:
        diff = (ours - hf) * std.view(1, 3, 1, 1)
    assert ours.shape == hf.shape
    assert diff.abs().max() < RESIZE_TOLERANCE
    assert diff.abs().max() > 0  # really resized


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_preprocessing_passes_gradients_to_the_image(judges, name):
    images = torch.rand(2, 3, 40, 40, requires_grad=True)
    _ours(judges[name], images)["pixel_values"].square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def _processor_text(name, folder, spec, question):
    """The prompt as the HF processor would expand it (its own replace_image_token on a bare instance)."""
    from transformers import (
        InternVLProcessor,
        LlavaOnevisionProcessor,
        Qwen2VLProcessor,
    )

    content = [{"type": "image"} for _ in question.images] + [
        {"type": "text", "text": spec.prompt(question).split("<|im_start|>user")[-1] and
         natural_question(question.text) + " Answer with Yes or No."}]
    text = spec.tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=spec.chat_template,
                                              add_generation_prompt=True, tokenize=False)
    arrays = _uint8_images(len(question.images), SIZES[name])
    pixels = _hf_pixels(folder, arrays)
    if name.startswith("qwen"):
        proc = object.__new__(Qwen2VLProcessor)
        proc.image_token, proc.image_processor = "<|image_pad|>", type("IP", (), {"merge_size": 2})()
        inputs = {"image_grid_thw": pixels["image_grid_thw"]}
    elif name == "llava_onevision":
        from transformers import AutoImageProcessor
        proc = object.__new__(LlavaOnevisionProcessor)
        proc.image_token, proc.num_image_tokens, proc.vision_feature_select_strategy = "<image>", 4, "full"
        proc.vision_aspect_ratio, proc.image_processor = "anyres_max_9", AutoImageProcessor.from_pretrained(folder)
        inputs = {"batch_num_images": [len(arrays)], "image_sizes": pixels["image_sizes"],
                  "pixel_values": pixels["pixel_values"]}
    else:
        proc = object.__new__(InternVLProcessor)
        proc.start_image_token, proc.end_image_token, proc.image_token = "<img>", "</img>", "<IMG_CONTEXT>"
        proc.image_seq_length = 4
        inputs = {"num_patches": [1] * len(arrays)}
    parts = text.split(spec.family.image_token)
    out = parts[0]
    for i, part in enumerate(parts[1:]):
        out += proc.replace_image_token(inputs, i) + part
    return out


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_prompt_tokens_match_the_hf_processor_expansion(folders, judges, name):
    spec = judges[name].spec
    ids, mask, pos = spec.tokenize(QUESTIONS)
    for i, q in enumerate(QUESTIONS):
        expected = spec.tokenizer.encode(_processor_text(name, folders[name], spec, q), add_special_tokens=False)
        assert ids[i, :int(mask[i].sum())].tolist() == expected
        assert int(pos[i]) == len(expected) - 1
    assert spec.tokenizer.decode(ids[0, :int(mask[0].sum())]).endswith("assistant\n")


def _plain_inputs(name, judge, edited, refs):
    """model(**inputs) inputs for the same questions: every image of every question, processor layout."""
    spec = judge.spec
    ids, mask, pos = spec.tokenize(QUESTIONS)
    images = torch.stack([refs[q.sample] if n == "ref" else edited[q.sample] for q in QUESTIONS for n in q.images])
    pixels = spec.family.pixels(images)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if name.startswith("qwen"):
        kwargs.update(pixels, mm_token_type_ids=(ids == spec.family.image_token_id).int())
    elif name == "llava_onevision":
        pv = pixels["pixel_values"]
        kwargs.update(pixel_values=torch.stack([pv, pv], 1), image_sizes=torch.tensor([[spec.family.size] * 2] * len(pv)),
                      batch_num_images=torch.tensor([len(q.images) for q in QUESTIONS]))
    else:
        kwargs.update(pixels)
    return kwargs, pos


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_answer_position_logits_equal_the_plain_forward(judges, name):
    judge = judges[name]
    size = judge.spec.family.size
    edited, refs = torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)
    ours = judge.yes_no_logits(QUESTIONS, edited, refs)
    kwargs, pos = _plain_inputs(name, judge, edited, refs)
    with torch.no_grad():
        logits = judge.module.vlm(**kwargs).logits                            # [Q, T, V]
    expected = logits[torch.arange(len(QUESTIONS)), pos][:, [judge.spec.yes_id, judge.spec.no_id]]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_token_embeddings_are_read_row_by_row(judges, name):
    """The judge's token table is read through zero_rows (never gathered whole under ZeRO-3); without
    ZeRO-3 that is the plain lookup, and the table keeps its weights and stays a registered parameter."""
    from npedit.adapters.hf_judge import RowEmbedding

    vlm = judges[name].module.vlm
    emb = vlm.get_input_embeddings()
    assert isinstance(emb, RowEmbedding) and type(emb.table) is torch.nn.Embedding
    assert any(p is emb.weight for p in judges[name].module.parameters())
    ids = torch.tensor([[0, 5, 5, emb.num_embeddings - 1]])
    torch.testing.assert_close(emb(ids), torch.nn.functional.embedding(ids, emb.table.weight), rtol=0, atol=0)


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_answer_loss_reaches_the_edited_image_only(judges, name):
    judge = judges[name]
    edited = torch.rand(2, 3, 32, 32, requires_grad=True)
    refs = torch.rand(2, 3, 32, 32, requires_grad=True)
    losses = judge.answer_losses(QUESTIONS, edited, refs, scale=0.5)
    assert losses.shape == (3,) and losses.dtype == torch.float32
    logits = judge.yes_no_logits(QUESTIONS, edited.detach(), refs.detach())
    correct = torch.tensor([0 if q.answer == "yes" else 1 for q in QUESTIONS])
    margin = logits.gather(1, correct[:, None]) - logits.gather(1, 1 - correct[:, None])
    torch.testing.assert_close(losses.detach(), -torch.nn.functional.logsigmoid(0.5 * margin[:, 0]), atol=1e-5,
                               rtol=1e-4)
    losses.sum().backward()
    assert edited.grad is not None and edited.grad.abs().sum() > 0
    assert refs.grad is None  # reference features are computed without gradient
    assert all(p.grad is None for p in judge.module.parameters())


def test_vocab_answer_loss_is_cross_entropy_over_the_vocabulary(folders):
    spec = HFJudgeSpec(str(folders["qwen2_vl"]), image_size=56, answer_loss="vocab")
    judge = HFJudge(spec.build(torch.float32, None), spec)
    edited, refs = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 56, 56)
    kwargs, pos = _plain_inputs("qwen2_vl", judge, edited, refs)
    with torch.no_grad():
        logits = judge.module.vlm(**kwargs).logits[torch.arange(3), pos]
    target = torch.tensor([spec.yes_id if q.answer == "yes" else spec.no_id for q in QUESTIONS])
    expected = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(judge.answer_losses(QUESTIONS, edited, refs, 1.0).detach(), expected,
                               atol=1e-5, rtol=1e-4)


def test_questions_read_as_ordinary_text():
    assert natural_question(QUESTIONS[0].text) == ('The first image is the input. Was the edit "make the circle red" '
                                                   "carried out in the second image?")
    assert natural_question("apart from the circle , are the two images the same ?") == \
        "Apart from the circle, are the two images the same?"


# ---------------------------------------------------------------------------------------------------- bad judges


@pytest.mark.parametrize("name, size, match", [
    ("qwen2_vl", 100, "not a positive multiple of patch_size \\* merge_size = 28"),
    ("qwen2_5_vl", 140, "outside the processor's \\[min_pixels, max_pixels\\]"),
    ("llava_onevision", 56, "takes 28x28 tiles"),
    ("internvl", 28, "takes 56x56 tiles"),
])
def test_image_size_the_vlm_cannot_take_is_a_clear_error(folders, name, size, match):
    with pytest.raises(ConfigError, match=f"vlm.image_size={size}: .*{match}"):
        HFJudgeSpec(str(folders[name]), image_size=size)


def test_prompt_longer_than_the_model_limit_is_a_clear_error(tmp_path):
    folder = save_qwen_vl(tmp_path / "short", max_position_embeddings=96)
    spec = HFJudgeSpec(str(folder), image_size=56)
    with pytest.raises(ConfigError, match="longer than the model's limit max_position_embeddings=96"):
        spec.check_questions(QUESTIONS)


def test_judge_whose_tokenizer_splits_yes_is_a_clear_error(tmp_path):
    folder = save_qwen_vl(tmp_path / "split", answer_words=("No",))
    with pytest.raises(ConfigError, match="splits the answer 'Yes' into 3 tokens"):
        HFJudgeSpec(str(folder), image_size=56)


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_layer_checkpointing_of_the_judge(judges, name):
    """The judge in the student loss with its vision blocks and decoder layers checkpointed: the three
    modes give the same losses and image gradient; full re-runs in backward the attention forwards that
    had grad (the edited images' vision blocks, every LM layer; not the references'), selective none;
    full keeps less for backward than none, and selective exactly those attentions' outputs more."""
    from npedit.ops.checkpoint import CHECKPOINT_MODES, AttentionCalls
    from npedit.ops.memory import SavedTensorCounter

    judge = judges[name]
    edited, refs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.rand(2, 3, 32, 32)
    losses, grads, saved, forward, backward = {}, {}, {}, {}, {}
    try:
        for mode in CHECKPOINT_MODES:
            judge.module.set_checkpointing(mode)
            image = edited.clone().requires_grad_(True)
            with SavedTensorCounter() as counter, AttentionCalls() as forward[mode]:
                out = judge.answer_losses(QUESTIONS, image, refs, scale=0.5)
            saved[mode] = counter.saved_bytes(exclude=out)
            with AttentionCalls() as backward[mode]:
                (grads[mode],) = torch.autograd.grad(out.sum(), [image])
            losses[mode] = out.detach()
            del out
    finally:
        judge.module.set_checkpointing("none")
    reruns = {mode: calls.calls for mode, calls in backward.items()}
    assert 0 < reruns["full"] < forward["full"].calls and reruns["none"] == reruns["selective"] == 0
    for mode in ("full", "selective"):
        torch.testing.assert_close(losses[mode], losses["none"], rtol=0, atol=0)
        torch.testing.assert_close(grads[mode], grads["none"], rtol=1e-6, atol=1e-7)
    assert saved["none"] > saved["full"]
    assert saved["selective"] == saved["full"] + backward["full"].output_bytes


def test_patch_projection_is_the_qwen_patch_convolution():
    """Qwen's patch embedding (Conv3d, kernel = stride = one patch) as a matmul: same output and pixel
    gradient as the convolution, the same parameter; anything but a one-kernel input is refused."""
    from npedit.adapters.vlm_families import PatchProjection

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 24, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=False)
    proj = PatchProjection(conv)
    assert proj.weight is conv.weight
    x = torch.randn(37, 3, 2, 14, 14, requires_grad=True)
    out = proj(x)
    expected = conv(x)
    assert out.shape == expected.shape == (37, 24, 1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expected, x, g)[0],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one kernel"):
        proj(torch.randn(2, 3, 2, 28, 14))
    with pytest.raises(ValueError, match="kernel = stride"):
        PatchProjection(torch.nn.Conv3d(3, 8, kernel_size=3, stride=1))


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_judges_embed_patches_by_matmul(judges, name):
    from npedit.adapters.vlm_families import PatchProjection

    assert isinstance(judges[name].module.vlm.model.visual.patch_embed.proj, PatchProjection)
