"""TinyVLM judge and LMHead: shapes, answer position, absent slots, gradients to pixels, answer losses."""
import pytest
import torch
import torch.nn.functional as F

from npedit.models import LMHead, TinyVLM, VLMConfig, WordTokenizer

TOKENIZER = WordTokenizer.from_words(["is there a red circle ?", "was the instruction followed", "yes no"])


def _model(**overrides) -> TinyVLM:
    cfg = dict(vocab_size=TOKENIZER.vocab_size, image_size=16, patch_size=4, vision_dim=32, vision_depth=1, dim=32,
               depth=2, heads=2, max_images=2, max_text_len=12)
    return TinyVLM(VLMConfig(**{**cfg, **overrides}))


def _batch(pad_to_max=True):
    texts = ["was the instruction followed ?", "is there a red circle ?", "yes"]
    ids, mask = TOKENIZER.encode(texts, max_length=12, pad_to_max=pad_to_max)
    images = torch.rand(3, 2, 3, 20, 20)  # resized to 16 by preprocess
    present = torch.tensor([[True, True], [False, True], [True, False]])
    return images, present, ids, mask


def _answer_hidden(model, images, present, ids, mask):
    feats = model.encode_images(images.flatten(0, 1)).unflatten(0, images.shape[:2])
    return model.answer_hidden(feats, present, ids, mask)


def test_shapes():
    model = _model()
    images, present, ids, mask = _batch()
    assert model.preprocess(images[:, 0]).shape == (3, 3, 16, 16)
    assert model.encode_images(images[:, 0]).shape == (3, 16, 32)
    assert model(images, present, ids, mask).shape == (3, 12, TOKENIZER.vocab_size)
    assert _answer_hidden(model, images, present, ids, mask).shape == (3, 32)


def test_preprocess_normalises_and_skips_resize_at_size():
    model = _model(image_mean=(0.25, 0.5, 0.75), image_std=(0.5, 0.25, 0.5))
    flat = torch.full((1, 3, 16, 16), 0.5)
    expected = torch.tensor([0.5, 0.0, -0.5]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    torch.testing.assert_close(model.preprocess(flat), expected)
    torch.testing.assert_close(model.preprocess(torch.full((1, 3, 40, 24), 0.5)), expected)
    with pytest.raises(ValueError, match="images must be"):
        model.preprocess(torch.rand(1, 4, 16, 16))


def test_answer_hidden_matches_forward_logits_at_answer_position():
    model = _model()
    images, present, ids, mask = _batch()
    logits = model(images, present, ids, mask)
    answer = mask.sum(1) - 1
    from_hidden = model.lm_head(_answer_hidden(model, images, present, ids, mask))
    torch.testing.assert_close(from_hidden, logits[torch.arange(3), answer], rtol=1e-5, atol=1e-5)
    # causal attention: the pads after the answer position do not change it
    short = _batch(pad_to_max=False)
    torch.testing.assert_close(_answer_hidden(model, images, present, *short[2:]),
                               _answer_hidden(model, images, present, ids, mask), rtol=1e-5, atol=1e-5)


def test_absent_slots_ignore_their_image():
    model = _model()
    images, present, ids, mask = _batch()
    other = images.clone()
    other[~present] = torch.rand_like(other[~present])
    base = model(images, present, ids, mask)
    torch.testing.assert_close(model(other, present, ids, mask), base, rtol=0, atol=0)
    changed = model(images, torch.ones_like(present), ids, mask)
    assert not torch.allclose(changed[~present.all(1)], base[~present.all(1)])
    torch.testing.assert_close(changed[present.all(1)], base[present.all(1)])


def test_gradient_reaches_the_edited_pixels():
    model = _model()
    images, present, ids, mask = _batch()
    edited = images[:, 1].clone().requires_grad_(True)
    with torch.no_grad():
        reference = model.encode_images(images[:, 0])
    feats = torch.stack([reference, model.encode_images(edited)], dim=1)
    hidden = model.answer_hidden(feats, present, ids, mask)
    yes, no = TOKENIZER.token_id("yes"), TOKENIZER.token_id("no")
    loss = model.lm_head(hidden, pos_ids=torch.full((3,), yes), neg_ids=torch.full((3,), no), scale=0.5).mean()
    loss.backward()
    assert edited.grad[present[:, 1]].abs().sum() > 0
    assert not edited.grad[~present[:, 1]].any()  # slot 1 of question 2 is absent


def test_lm_head_loss_modes_match_full_logits():
    head = LMHead(dim=8, vocab_size=13)
    hidden = torch.randn(5, 8)
    pos, neg, target = torch.randint(0, 13, (5,)), torch.randint(0, 13, (5,)), torch.randint(0, 13, (5,))
    logits = head(hidden)
    assert logits.shape == (5, 13)
    torch.testing.assert_close(head(hidden, pos_ids=pos, neg_ids=neg, scale=0.3),
                               -F.logsigmoid(0.3 * (logits.gather(1, pos[:, None]) - logits.gather(1, neg[:, None]))
                                             ).squeeze(1))
    torch.testing.assert_close(head(hidden, target_ids=target, scale=0.3),
                               F.cross_entropy(0.3 * logits, target, reduction="none"))
    with pytest.raises(ValueError, match="together"):
        head(hidden, pos_ids=pos)
    with pytest.raises(ValueError, match="not both"):
        head(hidden, pos_ids=pos, neg_ids=neg, target_ids=target)


def test_bad_inputs_are_clear_errors():
    model = _model()
    images, present, ids, mask = _batch()
    feats = model.encode_images(images.flatten(0, 1)).unflatten(0, images.shape[:2])
    holes = mask.clone()
    holes[0, 0] = False
    with pytest.raises(ValueError, match="right-padded"):
        model.answer_hidden(feats, present, ids, holes)
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match="at least 1"):
        model.answer_hidden(feats, present, ids, empty)
    with pytest.raises(ValueError, match="image_feats must be"):
        model.answer_hidden(feats[:, :1], present, ids, mask)
    with pytest.raises(ValueError, match="image_present must be"):
        model.answer_hidden(feats, present.long(), ids, mask)
    long_ids, long_mask = TOKENIZER.encode(["yes"], max_length=13)
    with pytest.raises(ValueError, match="max_text_len"):
        model(images[:1], present[:1], long_ids, long_mask)
    with pytest.raises(ValueError, match="image_mean"):
        VLMConfig(vocab_size=5, image_mean=(0.5, 0.5))
