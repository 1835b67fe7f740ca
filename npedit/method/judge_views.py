"""Random views of the images the judge is shown (off by default; the paper shows them as they are).

Gradients through a small judge into pixels are easily adversarial: tiny, high-frequency changes
that move its logits without changing what the image shows. Showing the judge a randomly shifted,
noised view each step averages the gradient over views (as CLIP-guided generation does with random
crops), which keeps the part that holds for every view: the content. The edited image and its
reference get the same shift, so "are the two images the same" keeps its answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def judge_views(edited: torch.Tensor, refs: torch.Tensor, noise_std: float, max_shift: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """edited [B,3,H,W] (with grad), refs [B,3,H,W] -> both shifted by the same random (dy, dx) in
    [-max_shift, max_shift] per sample (edges replicated), plus independent N(0, noise_std^2) pixel noise."""
    if edited.shape != refs.shape:
        raise ValueError(f"edited {tuple(edited.shape)} and refs {tuple(refs.shape)} must have the same shape")
    if noise_std < 0 or max_shift < 0:
        raise ValueError(f"noise_std and max_shift must be >= 0, got {noise_std}, {max_shift}")
    b, _, h, w = edited.shape
    if max_shift > 0:
        s = max_shift
        offsets = torch.randint(0, 2 * s + 1, (b, 2), generator=gen).tolist()
        both = F.pad(torch.cat([edited, refs.to(edited.dtype)]), (s, s, s, s), mode="replicate")
        crops = [both[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets + offsets)]
        shifted = torch.stack(crops)
        edited, refs = shifted[:b], shifted[b:].to(refs.dtype)
    if noise_std > 0:
        noise = torch.randn((2 * b, *edited.shape[1:]), generator=gen).to(edited.device) * noise_std
        edited = edited + noise[:b].to(edited.dtype)
        refs = refs + noise[b:].to(refs.dtype)
    return edited, refs
