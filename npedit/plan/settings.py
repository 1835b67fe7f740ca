"""Planner presets for published settings (known configs; no weights needed), on top of the trainer's.

- `paper`: the paper's scale, a 2B DiT + 7B VLM: SD3.5-medium student + Qwen2.5-VL-7B judge, 512 px,
  batch 1 per GPU, bf16, ZeRO-3, selective checkpointing, instruction-style questions (two images
  each), 5 critic updates, 128 T5 tokens.
- `open`: the open reimplementation's scale, a 6B DiT + 14B VLM: the Z-Image-6B stand-in
  (zimage-6b-standin) + InternVL3-14B, 512 px, otherwise as `paper`.
"""
from __future__ import annotations

from collections.abc import Callable

from npedit.config import Config, ConfigError, apply_overrides

__all__ = ["PLAN_PRESETS", "plan_config"]

_COMMON = ["data.kind=manifest", "data.manifest=(planner: synthetic replace-edit requests)", "data.image_size=512", "data.batch_size=1",
           "train.precision=bf16", "train.zero_stage=3", "student.checkpointing=selective",
           "method.question_style=instruction", "method.fake_updates=5", "text.max_length=128"]


def _published(student: str, judge: str) -> Callable[[], Config]:
    def preset() -> Config:
        from npedit.presets import shapes
        return apply_overrides(shapes(), _COMMON + [f"student.pretrained={student}", "student.teacher=",
                                                    f"vlm.pretrained={judge}", "text.pretrained=",
                                                    "vlm.max_text_len=32"])
    preset.__doc__ = f"{student} + {judge} (planner preset)"
    return preset


PLAN_PRESETS: dict[str, Callable[[], Config]] = {
    "paper": _published("sd3.5-medium", "qwen2.5-vl-7b"),
    "open": _published("zimage-6b-standin", "internvl3-14b"),
}


def plan_config(preset: str, overrides: list[str]) -> Config:
    """A trainer preset or a planner preset, with `--set` overrides applied."""
    from npedit.presets import PRESETS, get_preset

    if preset in PLAN_PRESETS:
        cfg = PLAN_PRESETS[preset]()
    elif preset in PRESETS:
        cfg = get_preset(preset)
    else:
        raise ConfigError(f"unknown preset {preset!r}; trainer presets: {sorted(PRESETS)}, planner presets: "
                          f"{sorted(PLAN_PRESETS)}")
    return apply_overrides(cfg, overrides)
