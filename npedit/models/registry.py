"""Load any built-in model folder by the "model_type" in its config.json."""
from __future__ import annotations

from pathlib import Path

import torch

from npedit.models.codec import PatchCodec
from npedit.models.dit import FlowDiT
from npedit.models.serialization import PretrainedModel, read_config_json
from npedit.models.text_encoder import TextEncoder
from npedit.models.vlm import TinyVLM

MODEL_CLASSES: dict[str, type[PretrainedModel]] = {
    cls.model_type: cls for cls in (TextEncoder, FlowDiT, TinyVLM, PatchCodec)
}


def load_pretrained(directory: str | Path, torch_dtype: torch.dtype | str | None = None) -> PretrainedModel:
    """The model saved in `directory`, of the class its config.json's "model_type" names."""
    path, data = read_config_json(directory)
    model_type = data.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{path}: model_type {model_type!r} is not a built-in model; "
                         f"supported: {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[model_type]
    return cls._load(Path(directory), cls.config_from_dict(data, str(path)), torch_dtype)
