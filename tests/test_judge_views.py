"""Random views shown to the judge: one shift for the edited image and its reference, noise, gradient."""
import pytest
import torch
import torch.nn.functional as F

from npedit.config import ConfigError, MethodConfig
from npedit.method.judge_views import judge_views


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_off_returns_the_images_unchanged():
    edited, refs = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    a, b = judge_views(edited, refs, 0.0, 0, gen())
    assert torch.equal(a, edited) and torch.equal(b, refs)


def test_edited_and_reference_get_the_same_shift_per_sample():
    edited = torch.rand(5, 3, 9, 7)
    refs = edited.clone() * 0.5
    a, b = judge_views(edited, refs, 0.0, 2, gen())
    torch.testing.assert_close(b, a * 0.5)   # same crop of the same picture
    padded = F.pad(edited, (2, 2, 2, 2), mode="replicate")
    crops = [[padded[i, :, dy:dy + 9, dx:dx + 7] for dy in range(5) for dx in range(5)] for i in range(5)]
    for i in range(5):   # each view is one of the 25 shifted crops
        assert any(torch.equal(a[i], c) for c in crops[i])
    assert any(not torch.equal(judge_views(edited, refs, 0.0, 2, gen(s))[0], edited) for s in range(3))


def test_noise_has_the_stated_std_and_is_independent_per_image():
    edited = torch.zeros(4, 3, 32, 32)
    a, b = judge_views(edited, edited.clone(), 0.06, 0, gen())
    assert a.std().item() == pytest.approx(0.06, rel=0.05) and b.std().item() == pytest.approx(0.06, rel=0.05)
    assert not torch.allclose(a, b)


def test_gradient_reaches_every_edited_pixel_it_shows():
    edited = torch.rand(3, 3, 6, 6, requires_grad=True)
    a, _ = judge_views(edited, torch.rand(3, 3, 6, 6), 0.05, 1, gen())
    a.sum().backward()
    # replicate padding: every output pixel comes from exactly one input pixel
    assert edited.grad.sum().item() == pytest.approx(a.numel())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="same shape"):
        judge_views(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8), 0.1, 1, gen())
    with pytest.raises(ConfigError, match="judge_view_noise"):
        MethodConfig(judge_view_noise=-0.1)
    with pytest.raises(ConfigError, match="judge_view_shift"):
        MethodConfig(judge_view_shift=-1)
