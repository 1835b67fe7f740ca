"""npedit's fused attention registered as a transformers attention implementation."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from npedit import ops  # noqa: E402
from npedit.adapters.hf_attention import npedit_attention_forward, register_transformers_attention  # noqa: E402


class _Module(torch.nn.Module):
    def __init__(self, groups: int, causal: bool):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


@pytest.mark.parametrize("causal, hq, hk, sq", [(False, 4, 4, 7), (True, 4, 2, 9), (True, 2, 1, 1)])
def test_matches_transformers_sdpa(causal, hq, hk, sq):
    q, k, v = torch.randn(2, hq, sq, 8), torch.randn(2, hk, sq, 8), torch.randn(2, hk, sq, 8)
    module = _Module(hq // hk, causal)
    ours, _ = npedit_attention_forward(module, q, k, v, None, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.3)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_varlen_packing_matches_per_segment_attention():
    cu = torch.tensor([0, 3, 10, 16])
    q, k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    module = _Module(1, False)
    ours, _ = npedit_attention_forward(module, q, k, v, None, is_causal=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                       max_length_q=7, max_length_k=7)
    parts = [sdpa_attention_forward(module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, is_causal=False)[0]
             for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    torch.testing.assert_close(ours, torch.cat(parts, dim=1), rtol=1e-5, atol=1e-6)


def test_a_masked_call_falls_back_to_sdpa():
    q = torch.randn(1, 2, 5, 8)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    mask[..., 0] = False
    mask[..., 0, 0] = True
    module = _Module(1, True)
    ours, _ = npedit_attention_forward(module, q, q, q, mask)
    ref, _ = sdpa_attention_forward(module, q, q, q, mask)
    torch.testing.assert_close(ours, ref)


def test_a_transformers_model_runs_on_the_fused_op(monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    name = register_transformers_attention()
    config = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    plain = Qwen2ForCausalLM(config).eval()
    config_ours = Qwen2Config(**{**config.to_dict(), "_attn_implementation": name})
    ours = Qwen2ForCausalLM(config_ours).eval()
    ours.load_state_dict(plain.state_dict())
    assert ours.config._attn_implementation == name
    calls = []
    real = ops.attention
    monkeypatch.setattr(ops, "attention", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    ids = torch.randint(0, 50, (2, 11))
    torch.testing.assert_close(ours(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-5)
    assert len(calls) == 2  # one fused call per layer
