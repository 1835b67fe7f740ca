"""SD3 / SD3.5 MMDiT (diffusers `SD3Transformer2DModel`) as an NP-Edit student or score network.

Conventions (diffusers StableDiffusion3Pipeline + FlowMatchEulerDiscreteScheduler): the model is
called with `timestep = 1000 * sigma` and predicts the flow velocity eps - x0 for
x_sigma = (1 - sigma) x0 + sigma eps, exactly npedit's convention with t = sigma.

Reference conditioning (student mode): SD3 has no reference path, so the reference latents are
patch-embedded with the same projection and concatenated after the noisy target tokens along the
sequence. Their absolute sin-cos position embedding is a crop of the same table shifted by the image
width (the reference sits beside the target in position space), so it never coincides with a target
position; the target tokens keep exactly the teacher's positions. The output is cropped to the
target tokens. SD3's timestep conditioning is global (AdaLN), so the reference tokens share the
noisy timestep (as in FLUX Kontext), not a clean one.
"""
from __future__ import annotations

import torch

from npedit.adapters.diffusers_editor import DiffusersEditor


class SD3Editor(DiffusersEditor):
    """forward(x_t [B,C,h,w], t [B] in [0,1], tokens [B,L,D], pooled [B,P], ref [B,C,h,w] | None) -> v [B,C,h,w]."""

    family = "sd3"

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor,
                ref: torch.Tensor | None = None) -> torch.Tensor:
        timestep = t * 1000.0
        if ref is None:
            return self.transformer(hidden_states=x_t, encoder_hidden_states=tokens, pooled_projections=pooled,
                                    timestep=timestep, return_dict=False)[0]
        return self._forward_with_reference(x_t, timestep, tokens, pooled, ref)

    # ------------------------------------------------------------------------------------ reference path
    def _patch_tokens(self, x: torch.Tensor, shift: int) -> torch.Tensor:
        """[B,C,h,w] -> [B, (h/p)(w/p), inner] with the sin-cos positions of a crop shifted right by `shift` patches."""
        embed = self.transformer.pos_embed
        tokens = embed.proj(x).flatten(2).transpose(1, 2)
        if embed.layer_norm:
            tokens = embed.norm(tokens)
        return tokens + self._positions(x.shape[-2], x.shape[-1], shift).to(tokens.dtype)

    def _positions(self, height: int, width: int, shift: int) -> torch.Tensor:
        embed = self.transformer.pos_embed
        size = embed.pos_embed_max_size
        if size is None:
            raise ValueError("SD3 student: the transformer has no pos_embed_max_size; the reference path needs "
                             "SD3's croppable position table")
        gh, gw = height // embed.patch_size, width // embed.patch_size
        top, left = (size - gh) // 2, (size - gw) // 2 + shift
        if left + gw > size:  # no room on the right: put the reference on the left of the target
            left = (size - gw) // 2 - shift
        if left < 0 or gh > size:
            raise ValueError(f"SD3 student: a {gh}x{gw}-patch target and its reference do not fit side by side "
                             f"in the {size}x{size} position table (pos_embed_max_size); use smaller images")
        table = embed.pos_embed.reshape(1, size, size, -1)
        return table[:, top:top + gh, left:left + gw, :].reshape(1, gh * gw, -1)

    def _forward_with_reference(self, x_t, timestep, tokens, pooled, ref) -> torch.Tensor:
        tr = self.transformer
        b, _, h, w = x_t.shape
        p = tr.config.patch_size
        n_target = (h // p) * (w // p)
        hidden = torch.cat([self._patch_tokens(x_t, 0), self._patch_tokens(ref, w // p)], dim=1).contiguous()
        temb = tr.time_text_embed(timestep, pooled)
        context = tr.context_embedder(tokens)
        for block in tr.transformer_blocks:
            if torch.is_grad_enabled() and tr.gradient_checkpointing:
                context, hidden = tr._gradient_checkpointing_func(block, hidden, context, temb, None)
            else:
                context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        hidden = tr.proj_out(tr.norm_out(hidden, temb))[:, :n_target]     # crop to the target tokens
        out = hidden.reshape(b, h // p, w // p, p, p, tr.out_channels)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(b, tr.out_channels, h, w)
