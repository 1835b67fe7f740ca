"""FLUX.1 / FLUX.1 Kontext (diffusers `FluxTransformer2DModel`) as an NP-Edit student or score network.

Conventions (diffusers FluxPipeline / FluxKontextPipeline): latents [B, C, h, w] are packed into
2x2 patches [B, (h/2)(w/2), 4C]; the transformer is called with `timestep = sigma` in [0, 1]
(it multiplies by 1000 itself) and predicts eps - x0 for x_sigma = (1 - sigma) x0 + sigma eps,
npedit's convention with t = sigma. Guidance-distilled checkpoints (FLUX.1-dev, Kontext-dev:
`guidance_embeds: true`) also take the embedded guidance scale (`student.guidance`, 3.5 in the
pipelines).

Reference conditioning is FLUX Kontext's: the reference latents are packed and concatenated after
the target tokens along the sequence, their RoPE ids carry 1 in the first (frame) axis where the
target's carry 0, and the prediction is cropped to the target tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from npedit.adapters.diffusers_editor import DiffusersEditor


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C] (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, (h/2)(w/2), 4C] -> [B, C, h, w] (FluxPipeline._unpack_latents)."""
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, frame: int, device, dtype=torch.float32) -> torch.Tensor:
    """RoPE ids [(h/2)(w/2), 3] = (frame, row, col) of packed latents of size h x w."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 0] = frame
    ids[..., 1] = torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


class FluxEditor(DiffusersEditor):
    """forward(x_t [B,C,h,w], t [B] in [0,1], tokens [B,L,D], pooled [B,P], ref [B,C,h,w] | None) -> v [B,C,h,w]."""

    family = "flux"

    def __init__(self, transformer: nn.Module, guidance: float = 3.5):
        super().__init__(transformer)
        self.guidance = float(guidance)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor,
                ref: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x_t.shape
        hidden = pack(x_t)                                                # [B, S, 4C]
        ids = image_ids(h, w, 0, x_t.device)
        if ref is not None:
            hidden = torch.cat([hidden, pack(ref)], dim=1)                # [B, 2S, 4C]
            ids = torch.cat([ids, image_ids(ref.shape[-2], ref.shape[-1], 1, x_t.device)])
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance, device=x_t.device, dtype=torch.float32)
        txt_ids = torch.zeros(tokens.shape[1], 3, device=x_t.device, dtype=torch.float32)
        out = self.transformer(hidden_states=hidden, encoder_hidden_states=tokens, pooled_projections=pooled,
                               timestep=t, img_ids=ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        return unpack(out[:, :(h // 2) * (w // 2)], h, w)                 # crop to the target tokens
