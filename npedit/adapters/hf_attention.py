"""npedit's fused attention as a transformers attention implementation ("npedit").

`register_transformers_attention()` adds it to transformers' `AttentionInterface`; models loaded
with `attn_implementation="npedit"` then run their attention through `npedit.ops.attention`
(varlen through `npedit.ops.attention_varlen` when the caller packs sequences with cu_seqlens,
as Qwen2.5-VL's windowed vision tower does for flash-attention implementations). Calls the fused op
cannot express (an explicit mask, dropout, softcap, returned weights) fall back to transformers'
SDPA function, so results never depend on which path ran.
"""
from __future__ import annotations

import torch

from npedit import ops

NAME = "npedit"


def npedit_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, Hq, Sq, D], key/value [B, Hk, Sk, D] (transformers layout) -> ([B, Sq, Hq, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    unsupported = (attention_mask is not None or dropout or kwargs.get("softcap") is not None
                   or kwargs.get("output_attentions") or kwargs.get("position_bias") is not None
                   or kwargs.get("s_aux") is not None or kwargs.get("sliding_window") is not None)
    if unsupported:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and query.shape[2] > 1
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, S, H, D]
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None and q.shape[0] == 1:
        max_q = int(kwargs.get("max_length_q") or (cu_q[1:] - cu_q[:-1]).max())
        max_k = int(kwargs.get("max_length_k") or (cu_k[1:] - cu_k[:-1]).max())
        out = ops.attention_varlen(q[0], k[0], v[0], cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k,
                                   causal=causal, softmax_scale=scaling)[None]
    else:
        out = ops.attention(q, k, v, causal=causal, softmax_scale=scaling)
    return out, None


def register_transformers_attention() -> str:
    """Register the "npedit" attention implementation with transformers (idempotent); -> its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, npedit_attention_forward)
    # SDPA's mask builder: None when the pattern is plain causal (no padding), which the fused op handles
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
