"""Save / load of the built-in models: a folder with config.json and model.safetensors.

config.json holds the model's config dataclass plus "model_type"; model.safetensors holds the
state dict, each tied (shared) tensor stored once. Loading is strict: a config key the dataclass
does not know, a model_type of another class, a missing or unexpected weight are errors that name
the file.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def read_config_json(directory: str | Path) -> tuple[Path, dict]:
    """(path, parsed dict) of `directory`/config.json; FileNotFoundError / ValueError naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder {directory} does not exist")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a saved model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return path, data


def check_config_fields(config) -> None:
    """Type-check a config dataclass against its annotations (int, float, str, bool, tuple[float, ...]).

    Ints are accepted for floats, and lists (JSON) for tuples; both are converted in place.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        hint, value = hints[field.name], getattr(config, field.name)
        where = f"{type(config).__name__}.{field.name}"
        if hint is bool:
            ok = isinstance(value, bool)
        elif hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif hint is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                setattr(config, field.name, float(value))
        elif hint is str:
            ok = isinstance(value, str)
        elif typing.get_origin(hint) is tuple:
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            if ok:
                setattr(config, field.name, tuple(float(v) for v in value))
        else:
            raise TypeError(f"{where}: unsupported annotation {hint}")
        if not ok:
            raise ValueError(f"{where} must be of type {getattr(hint, '__name__', hint)}, got {value!r}")


def check_positive(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be > 0, got {getattr(config, name)}")


def _tied_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """name -> first earlier name holding the very same tensor view (tied weights)."""
    first, tied = {}, {}
    for name, t in state.items():
        view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in first:
            tied[name] = first[view]
        else:
            first[view] = name
    return tied


def _resolve_dtype(torch_dtype) -> torch.dtype | None:
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    dtype = getattr(torch, str(torch_dtype), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype must be a torch.dtype or its name (e.g. 'bfloat16'), got {torch_dtype!r}")
    return dtype


class PretrainedModel(nn.Module):
    """Base of the built-in models: `config` dataclass, `save_pretrained`, `from_pretrained`."""

    config_class: type
    model_type: str

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config

    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json (with "model_type") and model.safetensors (tied tensors stored once)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **dataclasses.asdict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = self.state_dict()
        tied = _tied_names(state)
        tensors, storages = {}, set()
        for name, t in state.items():
            if name in tied:
                continue
            storage = (t.device, t.untyped_storage().data_ptr())
            # safetensors refuses distinct tensors that share memory: copy such views
            if storage in storages or not t.is_contiguous():
                t = t.clone(memory_format=torch.contiguous_format)
            storages.add(storage)
            tensors[name] = t.detach()
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def config_from_dict(cls, data: dict, source: str = "config"):
        """Build `config_class` from a config.json dict; ValueError naming `source` on any mismatch."""
        data = dict(data)
        model_type = data.pop("model_type", None)
        if model_type != cls.model_type:
            raise ValueError(f"{source}: model_type is {model_type!r}, but {cls.__name__} loads {cls.model_type!r}")
        names = [f.name for f in dataclasses.fields(cls.config_class)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown} for {cls.config_class.__name__}; valid keys: {names}")
        required = [f.name for f in dataclasses.fields(cls.config_class)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {missing} for {cls.config_class.__name__}")
        try:
            return cls.config_class(**data)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype: torch.dtype | str | None = None):
        """Load a folder written by `save_pretrained`; weights keep their saved dtype unless `torch_dtype`."""
        path, data = read_config_json(directory)
        return cls._load(Path(directory), cls.config_from_dict(data, str(path)), torch_dtype)

    @classmethod
    def _load(cls, directory: Path, config, torch_dtype):
        dtype = _resolve_dtype(torch_dtype)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: the weights of {cls.__name__} are missing")
        with safe_open(str(weights), framework="pt") as f:
            state = {name: f.get_tensor(name) for name in f.keys()}
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG alone
            model = cls(config)
        for name, first in _tied_names(model.state_dict()).items():
            if name not in state and first in state:
                state[name] = state[first]
        if dtype is None:
            saved = {t.dtype for t in state.values() if t.is_floating_point()}
            dtype = saved.pop() if len(saved) == 1 else None
        if dtype is not None:
            model.to(dtype)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise RuntimeError(f"{weights}: weights do not match {cls.__name__}({config}): {exc}") from exc
        return model.eval()
