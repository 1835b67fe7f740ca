"""Built-in models of the shapes world (and test fixtures of the engine): small, pure PyTorch.

Each saves to / loads from a folder (config.json + model.safetensors); `load_pretrained` picks the
class from the folder's "model_type".
"""
from npedit.models.codec import CodecConfig, PatchCodec
from npedit.models.dit import DiTConfig, FlowDiT
from npedit.models.registry import MODEL_CLASSES, load_pretrained
from npedit.models.serialization import PretrainedModel
from npedit.models.text_encoder import TextEncoder, TextEncoderConfig
from npedit.models.tokenizer import WordTokenizer
from npedit.models.vlm import LMHead, TinyVLM, VLMConfig

__all__ = [
    "CodecConfig", "DiTConfig", "FlowDiT", "LMHead", "MODEL_CLASSES", "PatchCodec", "PretrainedModel", "TextEncoder",
    "TextEncoderConfig", "TinyVLM", "VLMConfig", "WordTokenizer", "load_pretrained",
]
