"""Tiny random versions of the supported Hugging Face architectures, saved the way they are published.

Everything is built offline from configs (hidden sizes 16-64, one or two layers) with tiny
tokenizers that carry the right special tokens and chat templates; `save_*` functions write a
folder that the real loading path (`from_pretrained`, our family detection) reads back.

Students (diffusers pipeline folders, `model_index.json` + component subfolders):
  sd3  - SD3Transformer2DModel, AutoencoderKL, 2 x CLIPTextModelWithProjection, T5EncoderModel
  flux - FluxTransformer2DModel, AutoencoderKL, CLIPTextModel, T5EncoderModel
Judges (transformers model folders with their processor):
  qwen2_vl, qwen2_5_vl, llava_onevision, internvl
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# ------------------------------------------------------------------------------------------------ tokenizers


def _byte_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary (all 256 byte symbols) plus merges that make each word one token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(sorted(set(b2u.values())))}
    merges: list[tuple[str, str]] = []
    for word in words:
        cur = [b2u[b] for b in word.encode()]
        while len(cur) > 1:
            merged = cur[0] + cur[1]
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((cur[0], cur[1]))
            cur = [merged] + cur[2:]
    return vocab, merges


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def qwen_tokenizer(answer_words=("Yes", "No"), extra_specials: tuple[str, ...] = ()):
    """A Qwen2-style byte-level BPE tokenizer; `answer_words` become single tokens."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _byte_bpe(list(answer_words))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS + list(extra_specials)})
    return tok


QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}"
    "{% endif %}")


def _tiny_text_config(tok, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, bos_token_id=None,
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id, **extra)


# ------------------------------------------------------------------------------------------------ VLM judges


def _save(path: Path, model, tokenizer, image_processor, chat_template: str, processor_config: dict | None = None):
    """Write a model folder as published: weights + config, tokenizer (with the chat template), the image
    processor's preprocessor_config.json and processor_config.json. (The HF processor classes need
    torchvision for their video part, so the processor object itself is not built here.)"""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    if processor_config:
        (path / "processor_config.json").write_text(json.dumps(processor_config, indent=2))
    return path

VLM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl")


def save_qwen_vl(path: Path, version: str = "2.5", answer_words=("Yes", "No"), seed: int = 0,
                 max_position_embeddings: int = 512) -> Path:
    """Tiny Qwen2-VL (version "2") or Qwen2.5-VL ("2.5") with its processor; images 56 px -> 4 tokens."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = qwen_tokenizer(answer_words)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = _tiny_text_config(tok, rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2],
                                                        "rope_theta": 10000.0})
    text["max_position_embeddings"] = max_position_embeddings
    if version == "2":
        vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2}
        config, model_cls = Qwen2VLConfig(text_config=text, vision_config=vision, **ids), Qwen2VLForConditionalGeneration
    else:
        vision = {"depth": 2, "hidden_size": 32, "out_hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "window_size": 56, "fullatt_block_indexes": [1]}
        config, model_cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids), \
            Qwen2_5_VLForConditionalGeneration
    model = model_cls(config).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=112 * 112)
    return _save(path, model, tok, image_processor, QWEN2_VL_TEMPLATE)


def save_llava_onevision(path: Path, seed: int = 0) -> Path:
    """Tiny LLaVA-OneVision (SigLIP 28 px / patch 14 -> 4 tokens, Qwen2 LM) with its processor."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = qwen_tokenizer(extra_specials=("<image>", "<video>"))
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    text = dict(model_type="qwen2", **_tiny_text_config(tok))
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"))
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints,
                                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return _save(path, model, tok, image_processor, LLAVA_OV_TEMPLATE,
                 {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 4,
                  "vision_feature_select_strategy": "full"})


def save_internvl(path: Path, seed: int = 0) -> Path:
    """Tiny InternVL3 (ViT 56 px / patch 14, pixel shuffle 0.5 -> 4 tokens per tile, Qwen2 LM) with its processor."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = qwen_tokenizer(extra_specials=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"))
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": [56, 56], "patch_size": [14, 14]}
    text = dict(model_type="qwen2", **_tiny_text_config(tok))
    config = InternVLConfig(vision_config=vision, text_config=text, image_seq_length=4,
                            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True,
                                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return _save(path, model, tok, image_processor, INTERNVL_TEMPLATE,
                 {"processor_class": "InternVLProcessor", "image_seq_length": 4})


def save_vlm(family: str, path: Path, **kw) -> Path:
    if family == "qwen2_vl":
        return save_qwen_vl(path, "2", **kw)
    if family == "qwen2_5_vl":
        return save_qwen_vl(path, "2.5", **kw)
    if family == "llava_onevision":
        return save_llava_onevision(path, **kw)
    if family == "internvl":
        return save_internvl(path, **kw)
    raise ValueError(family)


# ------------------------------------------------------------------------------------------------ students

STUDENT_FAMILIES = ("sd3", "flux")
PROMPT_WORDS = ["a", "an", "the", "red", "blue", "green", "circle", "square", "triangle", "make", "do", "nothing", "low", "quality", "artifacts"]


def clip_tokenizer(words=PROMPT_WORDS):
    """A CLIP-style BPE tokenizer (end-of-word suffix) over bytes, with whole-word merges for `words`."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    base = sorted(set(bytes_to_unicode().values()))
    vocab = {c: i for i, c in enumerate(base)}
    for c in base:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words:
        cur = list(word[:-1]) + [word[-1] + "</w>"]
        while len(cur) > 1:
            merged = cur[0] + cur[1]
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((cur[0], cur[1]))
            cur = [merged] + cur[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    return tok


def t5_tokenizer(words=PROMPT_WORDS):
    """A T5-style unigram tokenizer: whole words plus single characters as fallback."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in words]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz,.?!'\""]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.model_max_length = 512
    return tok


def _clip(with_projection: bool, vocab_size: int, hidden: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def _t5(vocab_size: int, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                                   num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()


def _vae(latent_channels: int, scaling: float, shift: float, seed: int):
    """Tiny AutoencoderKL with a spatial factor of 4 (three blocks)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         block_out_channels=(8, 8, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
                         scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
                         use_post_quant_conv=False).eval()


def sd3_pipeline(seed: int = 0, with_t5: bool = True):
    """Tiny StableDiffusion3Pipeline (MMDiT with dual attention in block 0, like SD3.5-medium)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
                                        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, 1.5305, 0.0609, seed + 1),
        text_encoder=_clip(True, len(clip_tok), 16, seed + 2), tokenizer=clip_tok,
        text_encoder_2=_clip(True, len(clip_tok), 16, seed + 3), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5(len(t5_tok), 32, seed + 4) if with_t5 else None, tokenizer_3=t5_tok if with_t5 else None)


def flux_pipeline(seed: int = 0, guidance: bool = True, kontext: bool = True):
    """Tiny FLUX.1 pipeline (FluxKontextPipeline by default; guidance-embedded like FLUX.1-dev)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=guidance, axes_dims_rope=(2, 2, 4))
    cls = FluxKontextPipeline if kontext else FluxPipeline
    return cls(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
               vae=_vae(4, 0.3611, 0.1159, seed + 1),
               text_encoder=_clip(False, len(clip_tok), 16, seed + 2), tokenizer=clip_tok,
               text_encoder_2=_t5(len(t5_tok), 32, seed + 4), tokenizer_2=t5_tok)


def save_student(family: str, path: Path, **kw) -> Path:
    """A tiny diffusers pipeline folder (model_index.json + components), as published on the hub."""
    pipe = sd3_pipeline(**kw) if family == "sd3" else flux_pipeline(**kw)
    pipe.save_pretrained(path)
    return Path(path)


def save_all(root: Path, students=STUDENT_FAMILIES, judges=VLM_FAMILIES) -> dict[str, Path]:
    """Every tiny published-model folder under root/<family>; -> {family: folder}."""
    root = Path(root)
    folders = {name: save_student(name, root / name) for name in students}
    folders.update({name: save_vlm(name, root / name) for name in judges})
    return folders


if __name__ == "__main__":  # python tests/fixtures_hf.py DIR: write them for manual runs
    import sys

    for name, folder in save_all(Path(sys.argv[1])).items():
        print(name, folder)
