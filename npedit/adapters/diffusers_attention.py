"""npedit's fused attention inside diffusers students (SD3 / SD3.5 MMDiT, FLUX.1 / Kontext).

`use_npedit_attention(transformer)` swaps the attention processor of every attention module of an
`SD3Transformer2DModel` or `FluxTransformer2DModel` for the npedit one below; the run config selects it
with `student.attention=npedit` (default; `sdpa` keeps diffusers' stock processors).

- `NpeditJointAttnProcessor` replicates diffusers 0.42's `JointAttnProcessor2_0` (SD3's joint attention
  over image then context tokens, optional q/k norms, `context_pre_only`, `to_add_out`; SD3.5's second,
  image-only `attn2` too);
- `NpeditFluxAttnProcessor` replicates `FluxAttnProcessor` (fused or separate projections, RMS q/k
  norms, context tokens concatenated first, rotary embeddings through diffusers' `apply_rotary_emb`;
  double and single blocks).

Both keep the projections, norms and rotary embeddings of the stock processors line for line and
only replace `F.scaled_dot_product_attention` / `dispatch_attention_fn` by `npedit.ops.attention` (q, k,
v in [batch, seqlen, heads, head_dim], no mask, not causal, default scale 1/sqrt(head_dim) like SDPA),
so the projections run in the flash-attn layout without the [B, H, S, D] transposes. They subclass
the stock processors: code that checks `isinstance(processor, JointAttnProcessor2_0 | FluxAttnProcessor)`
still matches, and every call the fused op cannot express goes to the stock `__call__`:
an attention mask (neither SD3 nor FLUX passes one in training; `JointAttnProcessor2_0` takes one and
ignores it, `FluxAttnProcessor` hands it to SDPA), and for FLUX an attention backend or a
context-parallel config set on the processor by diffusers' `set_attention_backend` /
`enable_parallelism`.

Why processors and not an "npedit" backend in diffusers' `attention_dispatch` registry: the registry is
keyed by the closed enum `AttentionBackendName`, which `set_attention_backend` validates names against,
so registering a new backend means patching that enum and the registry's private tables; and SD3's
`JointAttnProcessor2_0` calls `F.scaled_dot_product_attention` directly, never `dispatch_attention_fn`,
so a backend would not reach SD3 students at all. Processors use only the public
`set_processor` API and cover both families.
"""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from npedit import ops

NAME = "npedit"


class NpeditJointAttnProcessor(JointAttnProcessor2_0):
    """diffusers' `JointAttnProcessor2_0` (SD3 / SD3.5) with the attention run by `npedit.ops.attention`."""

    def __call__(self, attn, hidden_states: torch.FloatTensor, encoder_hidden_states: torch.FloatTensor = None,
                 attention_mask: torch.FloatTensor | None = None, *args, **kwargs) -> torch.FloatTensor:
        if attention_mask is not None:
            # Not used by SD3 (its blocks pass no mask). The fused op takes no mask, so the stock processor
            # answers, exactly as without npedit (diffusers 0.42's JointAttnProcessor2_0 ignores the mask).
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        batch_size, num_image = hidden_states.shape[0], hidden_states.shape[1]

        # `sample` projections, [B, S, H, D] (the stock processor transposes to [B, H, S, D]; the q/k norms
        # act on head_dim only, so the layout does not change them)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim)
        key = key.view(batch_size, -1, attn.heads, head_dim)
        value = value.view(batch_size, -1, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # `context` projections, concatenated after the image tokens
        if encoder_hidden_states is not None:
            context_query = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim)
            context_key = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim)
            context_value = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim)
            if attn.norm_added_q is not None:
                context_query = attn.norm_added_q(context_query)
            if attn.norm_added_k is not None:
                context_key = attn.norm_added_k(context_key)
            query = torch.cat([query, context_query], dim=1)
            key = torch.cat([key, context_key], dim=1)
            value = torch.cat([value, context_value], dim=1)

        hidden_states = ops.attention(query, key, value, causal=False)  # [B, S, H, D]
        hidden_states = hidden_states.reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :num_image], hidden_states[:, num_image:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        hidden_states = attn.to_out[0](hidden_states)  # linear
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def _flux_projections(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None):
    """q, k, v and the context's q, k, v (None without context) of a FluxAttention, fused or not
    (transformer_flux._get_qkv_projections, kept here rather than imported: it is private)."""
    if attn.fused_projections:
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        context = (None, None, None)
        if encoder_hidden_states is not None and hasattr(attn, "to_added_qkv"):
            context = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        return (query, key, value, *context)
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    context = (None, None, None)
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        context = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                   attn.add_v_proj(encoder_hidden_states))
    return (query, key, value, *context)


class NpeditFluxAttnProcessor(FluxAttnProcessor):
    """diffusers' `FluxAttnProcessor` (FLUX double and single blocks) with the attention run by
    `npedit.ops.attention`."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None or self._attention_backend is not None or self._parallel_config is not None:
            # A mask (FLUX passes none in training), or a diffusers attention backend / context parallelism
            # chosen for this processor: the fused op expresses none of these, so the stock
            # dispatch_attention_fn path (SDPA by default) runs them.
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, encoder_query, encoder_key, encoder_value = _flux_projections(
            attn, hidden_states, encoder_hidden_states)

        query = query.unflatten(-1, (-1, attn.head_dim))  # [B, S, H, D]
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)

        if attn.added_kv_proj_dim is not None:  # double blocks: context tokens first
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        hidden_states = ops.attention(query, key, value, causal=False)  # [B, S, H, D]
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


def _processors(transformer: torch.nn.Module) -> tuple[type, type]:
    """(stock processor class, npedit processor class) for this transformer, or a clear error."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if isinstance(transformer, SD3Transformer2DModel):
        return JointAttnProcessor2_0, NpeditJointAttnProcessor
    if isinstance(transformer, FluxTransformer2DModel):
        return FluxAttnProcessor, NpeditFluxAttnProcessor
    raise ValueError(f"use_npedit_attention: {type(transformer).__name__} is not supported; npedit's attention "
                     "processors cover SD3Transformer2DModel (SD3 / SD3.5) and FluxTransformer2DModel (FLUX.1 / "
                     "Kontext). Use student.attention=sdpa to keep the stock processors.")


def use_npedit_attention(transformer: torch.nn.Module) -> int:
    """Install npedit's processor on every attention module of a diffusers SD3 / FLUX transformer.

    -> the number of attention modules that now run npedit's attention (idempotent: modules already on it
    are counted too). ValueError for another transformer class, or for a module whose processor is neither
    the stock one nor npedit's (an IP-adapter or fused-QKV processor, say), so no custom math is dropped.
    """
    stock, ours = _processors(transformer)
    modules = [(name, m) for name, m in transformer.named_modules()
               if hasattr(m, "set_processor") and hasattr(m, "processor")]
    for name, module in modules:
        current = module.processor
        if not (type(current) is stock or isinstance(current, ours)):
            raise ValueError(f"use_npedit_attention: {type(transformer).__name__}.{name} runs "
                             f"{type(current).__name__}, not diffusers' {stock.__name__}; npedit does not replace "
                             "custom attention processors (use student.attention=sdpa to keep them)")
    processor = ours()  # stateless: one instance for every module, as diffusers' set_attn_processor does
    for _, module in modules:
        if not isinstance(module.processor, ours):
            module.set_processor(processor)
    return len(modules)
