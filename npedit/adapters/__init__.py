"""Adapters between the method and model families.

The method talks to models only through two small interfaces:
- a *diffusion family* (`encode_text`, `velocity`, `encode_images`, `decode_latents`): the student,
  real score and fake score share one text encoder and one latent codec;
- a *judge* (`answer_losses`): the VLM asked Yes/No questions about reference and edited images.
Built-in models: `npedit.adapters.builtin`. Real diffusers / transformers models get their own
adapter per family: `select` (family from a folder's config files), `zero_load` (sharded loading),
`sd3` / `flux` (students with reference tokens), `text_cond`, `diffusers_family` (pipeline loading,
the diffusion adapter), `vlm_preprocess`, `vlm_families`, `hf_judge` (judges).
"""
