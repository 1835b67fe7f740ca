"""Load published models so that, under ZeRO-3, no rank ever holds a full copy.

- diffusers models: the module is created from its config inside `deepspeed.zero.Init` (each
  parameter is partitioned as it is created), then the weights are copied in module by module:
  rank 0 reads one tensor at a time from the safetensors files inside `GatheredParameters(...,
  modifier_rank=0)`, which re-partitions on exit. Buffers are not partitioned; every rank reads them.
- transformers models: `from_pretrained` while an `HfDeepSpeedConfig` is alive, which makes
  transformers do the same (zero.Init + gathered per-module loading).
Without a ZeRO-3 config both are plain `from_pretrained` calls.
`source` is a local folder or a hub id (passed through to from_pretrained / the hub cache).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


@contextlib.contextmanager
def zero_init(ds_config: dict | None):
    """deepspeed.zero.Init for `ds_config` (a stage-3 config), or nothing when None.

    torch.arange keeps its explicit dtype inside (RoPE / sin-cos tables would otherwise be built in
    bf16 when the config enables bf16)."""
    if ds_config is None:
        yield
        return
    import deepspeed
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    with prevent_arange_dtype_change(), deepspeed.zero.Init(config_dict_or_path=ds_config):
        yield


def _subfolder_files(source: str, subfolder: str) -> Path:
    """Local folder holding the component: `source`/`subfolder`, or its hub snapshot."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local / subfolder if subfolder else local
    from huggingface_hub import snapshot_download

    pattern = f"{subfolder}/*" if subfolder else "*"
    return Path(snapshot_download(source, allow_patterns=[pattern, "model_index.json"])) / subfolder


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a saved model (single file or sharded with an index)."""
    for name in WEIGHT_NAMES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"{folder}: no {' / '.join(WEIGHT_NAMES)} (or sharded index) found; npedit loads "
                            "safetensors weights only")


def load_sharded_state(module: nn.Module, files: list[Path], where: str) -> None:
    """Copy the weights in `files` into a (possibly ZeRO-3 partitioned) module; strict about names."""
    import deepspeed
    from safetensors import safe_open

    handles = [safe_open(str(f), framework="pt") for f in files]
    key_file = {k: h for h in handles for k in h.keys()}  # noqa: SIM118 (safe_open handles)
    dist = torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(key_file))
    unexpected = sorted(set(key_file) - expected)
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the model built from its config: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    for prefix, sub in module.named_modules():
        stem = f"{prefix}." if prefix else ""
        params = dict(sub.named_parameters(recurse=False))
        if params:
            gathered = [p for p in params.values() if hasattr(p, "ds_id")]
            ctx = deepspeed.zero.GatheredParameters(gathered, modifier_rank=0) if gathered else \
                contextlib.nullcontext()
            with ctx, torch.no_grad():
                if rank == 0 or not gathered:
                    for name, p in params.items():
                        p.copy_(key_file[stem + name].get_tensor(stem + name))
        with torch.no_grad():
            for name, buf in sub.named_buffers(recurse=False):
                key = stem + name
                if key in key_file and buf is not None:
                    buf.copy_(key_file[key].get_tensor(key))


def load_diffusers(cls, source: str, subfolder: str, dtype: torch.dtype, ds_config: dict | None) -> nn.Module:
    """A diffusers ModelMixin class from `source`/`subfolder`; created sharded when ds_config is given."""
    if ds_config is None:
        return cls.from_pretrained(source, subfolder=subfolder or None, torch_dtype=dtype)
    folder = _subfolder_files(source, subfolder)
    config = cls.load_config(folder)
    with zero_init(ds_config):
        model = cls.from_config(config)
    load_sharded_state(model, weight_files(folder), f"{source}/{subfolder}")
    return model  # its dtype is the ZeRO-3 config's (bf16 when enabled)


def load_transformers(cls, source: str, subfolder: str, dtype: torch.dtype, ds_config: dict | None,
                      **kwargs) -> nn.Module:
    """A transformers PreTrainedModel class; `from_pretrained` under an HfDeepSpeedConfig when ds_config is given."""
    if subfolder:
        kwargs["subfolder"] = subfolder
    if ds_config is None:
        return cls.from_pretrained(source, dtype=dtype, **kwargs)
    from transformers.integrations.deepspeed import (
        HfDeepSpeedConfig,
        unset_hf_deepspeed_config,
    )

    keep_alive = HfDeepSpeedConfig(ds_config)  # transformers reads it through a weak reference
    try:
        return cls.from_pretrained(source, dtype=dtype, **kwargs)
    finally:
        del keep_alive
        unset_hf_deepspeed_config()
