"""DeepSpeed JSON: generated from the training config, or a user file checked against it.

The user's file supplies what npedit does not model (ZeRO bucket sizes, offload, communication
settings); fields that npedit does model must agree with the config, or training refuses to start
with a message naming the field. Optimizer and scheduler always come from the config.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from npedit.config import Config, ConfigError, OptimConfig


# DeepSpeed's default reduce / all-gather bucket (elements). ZeRO-3 allocates its reduce bucket in full
# per trainable engine (`contiguous_gradients`), 2 GB in fp32 even for a model of a few million weights.
DEEPSPEED_BUCKET = int(5e8)
_BUCKET_KEYS = ("reduce_bucket_size", "allgather_bucket_size")


class DeepSpeedConfigError(ConfigError):
    """The DeepSpeed JSON disagrees with the training config, or cannot be read."""


def load_ds_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DeepSpeedConfigError(f"--ds_config {path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigError(f"--ds_config {path}: not valid JSON ({exc})") from exc


def base_ds_config(config: Config, world_size: int, user: dict | None = None, source: str = "generated") -> dict:
    """The DeepSpeed config shared by all engines (before per-engine optimizer / ZeRO settings).

    Checks the user's JSON against `config`: micro batch, train batch, accumulation, precision,
    clipping and ZeRO stage must agree. Values "auto" are filled in from the config.
    """
    user = copy.deepcopy(user or {})
    micro = config.data.batch_size
    expected = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "gradient_clipping": config.student_optim.clip,
    }
    for key, value in expected.items():
        got = user.get(key, "auto")
        if got != "auto" and got != value:
            raise DeepSpeedConfigError(
                f"{source}: '{key}' is {got} but the training config implies {value} "
                f"(data.batch_size={micro}, world size {world_size}, student_optim.clip={config.student_optim.clip}; "
                "npedit does not use gradient accumulation). Fix the JSON or use --set.")
        user[key] = value
    bf16 = config.train.precision == "bf16"
    if user.get("fp16", {}).get("enabled", False) is True:
        raise DeepSpeedConfigError(f"{source}: 'fp16.enabled' is true; npedit trains in fp32 or bf16 "
                                   "(set train.precision=bf16 and use the 'bf16' section)")
    user_bf16 = user.get("bf16", {}).get("enabled", "auto")
    if user_bf16 != "auto" and bool(user_bf16) != bf16:
        raise DeepSpeedConfigError(f"{source}: 'bf16.enabled' is {user_bf16} but train.precision is "
                                   f"{config.train.precision!r}")
    user["bf16"] = {**user.get("bf16", {}), "enabled": bf16}
    zero = user.setdefault("zero_optimization", {})
    stage = zero.get("stage", "auto")
    if stage != "auto" and stage != config.train.zero_stage:
        raise DeepSpeedConfigError(f"{source}: 'zero_optimization.stage' is {stage} but train.zero_stage is "
                                   f"{config.train.zero_stage}")
    zero["stage"] = config.train.zero_stage
    for key in ("optimizer", "scheduler"):
        if key in user:
            raise DeepSpeedConfigError(f"{source}: remove the '{key}' section; npedit builds it from the config "
                                       f"(student_optim / fake_optim)")
    user.setdefault("steps_per_print", 10**9)
    user.setdefault("wall_clock_breakdown", False)
    return user


def trainable_ds_config(base: dict, optim: OptimConfig, num_params: int | None = None) -> dict:
    """Per trainable engine: the base plus its optimizer (scheduler is passed as a client callable).

    Bucket sizes the JSON leaves out (or sets to "auto") become min(DeepSpeed's 5e8, the engine's
    `num_params`): a bucket never needs to hold more than the whole model."""
    cfg = copy.deepcopy(base)
    if num_params is not None:
        zero = cfg.setdefault("zero_optimization", {})
        for key in _BUCKET_KEYS:
            if zero.get(key, "auto") == "auto":
                zero[key] = int(min(DEEPSPEED_BUCKET, max(1, num_params)))
    cfg["gradient_clipping"] = optim.clip
    cfg["optimizer"] = {"type": "AdamW", "params": {
        "lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps,
        "weight_decay": optim.weight_decay, "torch_adam": True}}
    return cfg


def frozen_ds_config(base: dict) -> dict:
    """Frozen models: optimizer-less ZeRO-3 (ZeRO-1/2 engines without an optimizer are refused)."""
    cfg = copy.deepcopy(base)
    zero = cfg["zero_optimization"]
    cfg["zero_optimization"] = {"stage": 3, **{k: v for k, v in zero.items()
                                             if k.startswith("stage3_") or k in ("offload_param",)}}
    cfg["zero_optimization"]["stage"] = 3
    cfg.pop("gradient_clipping", None)
    return cfg
