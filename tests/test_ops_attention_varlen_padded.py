"""The padded (loop-free) PyTorch path of variable-length attention against the per-segment reference."""
import pytest
import torch

from npedit.ops.attention import attention_varlen_ref
from npedit.ops.attention_varlen_padded import (
    fits_padded,
    varlen_bwd_padded,
    varlen_fwd_padded,
)

CASES = [  # (query lengths, key lengths, q heads, kv heads); zero-length and unequal segments, GQA, MQA
    ([1, 5, 0, 7], [3, 5, 2, 1], 4, 2),
    ([6, 6, 6], [6, 6, 6], 2, 2),
    ([4, 9], [9, 4], 4, 1),
    ([47], [47], 3, 3),
]


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_dlse", [False, True])
def test_padded_varlen_matches_reference(case, causal, with_dlse):
    lq, lk, hq, hk = case
    cq, ck = _cu(lq), _cu(lk)
    torch.manual_seed(len(lq) + hq)
    q = torch.randn(sum(lq), hq, 24, dtype=torch.float64, requires_grad=True)
    k = torch.randn(sum(lk), hk, 24, dtype=torch.float64, requires_grad=True)
    v = torch.randn(sum(lk), hk, 24, dtype=torch.float64, requires_grad=True)
    scale = 0.2

    # reference: per segment, lse from the segment's scores, gradients by autograd (float64)
    ref = attention_varlen_ref(q, k, v, cq, ck, max(lq), max(lk), causal, scale)
    lse_ref = torch.full((hq, sum(lq)), float("-inf"), dtype=torch.float64)
    for i in range(len(lq)):
        if lq[i] == 0:
            continue
        qs, ks = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
        s = torch.einsum("qhd,khd->hqk", q[qs], k[ks].repeat_interleave(hq // hk, 1)) * scale
        if causal:
            keep = torch.ones(lq[i], lk[i], dtype=torch.bool).tril(lk[i] - lq[i])
            s = s.masked_fill(~keep, float("-inf"))
        lse_ref[:, qs] = torch.logsumexp(s, -1)
    dout = torch.randn_like(ref)
    dlse = torch.randn(hq, sum(lq), dtype=torch.float64) if with_dlse else None
    finite = torch.isfinite(lse_ref)
    target = (ref * dout).sum() + ((torch.where(finite, lse_ref, 0) * dlse).sum() if with_dlse else 0)
    grads_ref = torch.autograd.grad(target, (q, k, v))

    out, lse = varlen_fwd_padded(q.detach(), k.detach(), v.detach(), cq, ck, max(lq), max(lk), causal, scale)
    grads = varlen_bwd_padded(dout, dlse, q.detach(), k.detach(), v.detach(), out, lse, cq, ck, max(lq), max(lk),
                              causal, scale)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    assert torch.equal(torch.isfinite(lse), finite)      # rows with no visible key: -inf
    torch.testing.assert_close(lse[finite].double(), lse_ref[finite], atol=2e-6, rtol=1e-5)
    for name, g, r in zip("qkv", grads, grads_ref):
        torch.testing.assert_close(g, r, atol=5e-6, rtol=1e-5, msg=lambda m, n=name: f"d{n}: {m}")


def test_rows_past_the_last_segment_are_left_empty():
    cq = ck = _cu([3, 2])                                 # 5 covered rows of 7
    q, k, v = (torch.randn(7, 2, 8) for _ in range(3))
    out, lse = varlen_fwd_padded(q, k, v, cq, ck, 3, 3, False, 0.3)
    assert out[5:].abs().sum() == 0 and torch.isinf(lse[:, 5:]).all()
    dq, dk, dv = varlen_bwd_padded(torch.ones_like(out), None, q, k, v, out, lse, cq, ck, 3, 3, False, 0.3)
    assert dq[5:].abs().sum() == 0 and dk[5:].abs().sum() == 0 and dv[5:].abs().sum() == 0


def test_fits_padded_refuses_wasteful_padding():
    assert fits_padded(_cu([32] * 128), _cu([32] * 128), 32, 32)          # a batch of captions
    one_long = [4096] + [8] * 200
    assert not fits_padded(_cu(one_long), _cu(one_long), 4096, 4096)      # padding 200 short rows to 4096


def test_text_encoder_batches_run_one_padded_pass(monkeypatch):
    """A batch of captions goes through the padded pass (no per-segment loop) and gives the same
    encodings and gradients as the per-segment reference (NPEDIT_OPS=ref)."""
    import importlib

    from npedit.models.text_encoder import TextEncoder, TextEncoderConfig

    attention_mod = importlib.import_module("npedit.ops.attention")    # the module (npedit.ops exports the function)

    calls = []
    real = attention_mod.varlen_fwd_padded
    monkeypatch.setattr(attention_mod, "varlen_fwd_padded", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(vocab_size=50, dim=32, depth=2, max_length=16))
    ids = torch.randint(1, 50, (64, 16))
    mask = torch.arange(16)[None, :] < torch.randint(1, 17, (64, 1))

    def run():
        enc.zero_grad()
        out = enc(ids, mask)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in enc.parameters() if p.grad is not None]

    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    out, grads = run()
    assert len(calls) == enc.config.depth                   # one padded pass per layer
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    out_ref, grads_ref = run()
    assert len(calls) == enc.config.depth                   # the reference loops per segment
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, atol=1e-5 * float(r.abs().max()), rtol=1e-4)  # fp32 sums in another order
