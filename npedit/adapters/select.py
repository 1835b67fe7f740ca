"""Which model family a `student.pretrained` / `vlm.pretrained` names, read from its config files.

The architecture comes from the folder's (or hub repository's) own config, never from its name:
- a diffusers pipeline: `model_index.json`, whose "transformer" entry names the transformer class;
- a bare diffusers model folder: `config.json` with "_class_name" (refused for students: the
  pipeline's VAE and text encoders are needed too, so the message asks for the pipeline folder);
- a transformers model: `config.json` "model_type" (and "architectures");
- a built-in npedit model: `config.json` "model_type" starting with "npedit-".
A hub id is read through the Hugging Face cache (downloading its config when online); tests only
use local folders. An unknown architecture is an error listing the supported ones.
"""
from __future__ import annotations

import json
from pathlib import Path

from npedit.config import ConfigError

# diffusers transformer class -> student family
STUDENT_FAMILIES = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}
# transformers model_type -> judge family (architectures: the class loaded)
VLM_FAMILIES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
}
BUILTIN_STUDENT_TYPE = "npedit-flow-dit"
BUILTIN_VLM_TYPE = "npedit-tiny-vlm"


def is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def looks_like_path(source: str) -> bool:
    """Strings that can only be meant as a folder (so a missing one is 'no such folder', not a hub miss)."""
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source


def read_json(source: str, filename: str, field: str, required: bool = True) -> dict | None:
    """`filename` of a local folder or hub repository, parsed; None when absent and not required."""
    if is_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{field}={source!r}: not a folder")
        path = folder / filename
        if not path.is_file():
            if required:
                raise ConfigError(f"{field}={source!r}: {path} not found")
            return None
    elif looks_like_path(source):
        raise ConfigError(f"{field}={source!r}: no such folder")
    else:
        path = _hub_file(source, filename, field, required)
        if path is None:
            return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{field}={source!r}: cannot read {filename} ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{field}={source!r}: {filename} is not a JSON object")
    return data


def _hub_file(repo: str, filename: str, field: str, required: bool) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return hf_hub_download(repo, filename)
    except LocalEntryNotFoundError as exc:  # (a subclass of EntryNotFoundError) offline and not cached
        if not required:
            return None
        raise ConfigError(f"{field}={repo!r}: not a local folder, and {filename} is not in the Hugging Face "
                          f"cache (offline?): {exc}") from None
    except EntryNotFoundError:
        if required:
            raise ConfigError(f"{field}={repo!r}: the hub repository has no {filename}") from None
        return None
    except (HFValidationError, RepositoryNotFoundError) as exc:
        raise ConfigError(f"{field}={repo!r}: neither a local folder nor a hub repository ({exc})") from None


def detect_student(source: str, field: str = "student.pretrained") -> str:
    """'builtin' | 'sd3' | 'flux' for a student/teacher source ('' = a fresh built-in DiT)."""
    if not source:
        return "builtin"
    index = read_json(source, "model_index.json", field, required=False)
    if index is not None:
        entry = index.get("transformer")
        name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        if name not in STUDENT_FAMILIES:
            raise ConfigError(f"{field}={source!r}: the pipeline's transformer is {name!r} "
                              f"({index.get('_class_name')}); supported students: {_supported_students()}")
        return STUDENT_FAMILIES[name]
    config = read_json(source, "config.json", field, required=False)
    if config is None:
        where = "" if is_local(source) else " (not a local folder; not on the hub or in its cache when offline)"
        raise ConfigError(f"{field}={source!r}: neither model_index.json (a diffusers pipeline) nor config.json "
                          f"found{where}; supported students: {_supported_students()}")
    if config.get("model_type") == BUILTIN_STUDENT_TYPE:
        return "builtin"
    name = config.get("_class_name")
    if name in STUDENT_FAMILIES:
        raise ConfigError(f"{field}={source!r} is a bare {name} folder; give the pipeline folder (with "
                          "model_index.json, vae/, text_encoder*/, tokenizer*/) or its hub id")
    kind = name or config.get("model_type")
    raise ConfigError(f"{field}={source!r}: unsupported architecture {kind!r}; supported students: "
                      f"{_supported_students()}")


def detect_vlm(source: str, field: str = "vlm.pretrained") -> str:
    """'builtin' | one of VLM_FAMILIES for a judge source ('' = a fresh built-in TinyVLM)."""
    if not source:
        return "builtin"
    config = read_json(source, "config.json", field)
    model_type = config.get("model_type")
    if model_type == BUILTIN_VLM_TYPE:
        return "builtin"
    if model_type not in VLM_FAMILIES:
        raise ConfigError(f"{field}={source!r}: unsupported architecture model_type={model_type!r} "
                          f"(architectures {config.get('architectures')}); supported judges: "
                          f"{', '.join(f'{k} ({v})' for k, v in VLM_FAMILIES.items())}, or a built-in "
                          f"{BUILTIN_VLM_TYPE} folder")
    return model_type


def _supported_students() -> str:
    return ", ".join(f"{cls} ({fam})" for cls, fam in STUDENT_FAMILIES.items()) + \
        f" in a diffusers pipeline, or a built-in {BUILTIN_STUDENT_TYPE} folder"
