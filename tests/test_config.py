import pytest

from npedit.config import Config, ConfigError, apply_overrides
from npedit.engine.ds_config import DeepSpeedConfigError, base_ds_config, frozen_ds_config, trainable_ds_config
from npedit.presets import PRESETS, get_preset


def test_presets_build_and_round_trip():
    for name in PRESETS:
        cfg = get_preset(name)
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_overrides_are_typed():
    cfg = apply_overrides(get_preset("shapes"), ["method.vlm_weight=0.5", "train.max_steps=7",
                                                 "train.tensorboard=false", "method.timesteps=1.0,0.5",
                                                 "student.pretrained=/x"])
    assert cfg.method.vlm_weight == 0.5 and cfg.train.max_steps == 7 and cfg.train.tensorboard is False
    assert cfg.method.timesteps == [1.0, 0.5] and cfg.student.pretrained == "/x"


@pytest.mark.parametrize("text", ["color,background", "[color, background]", '["color", "background"]'])
def test_list_overrides_accept_plain_or_json_lists(text):
    assert apply_overrides(get_preset("shapes"), [f"data.categories={text}"]).data.categories == ["color", "background"]


@pytest.mark.parametrize("override, fragment", [
    ("method.vlm_wieght=1", "vlm_wieght"),
    ("nosuch.x=1", "nosuch"),
    ("method=1", "section"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.precision=fp16", "train.precision"),
    ("method.timesteps=0.5,0.75", "decreasing"),
    ("noequals", "key=value"),
    ("data.categories=color,pink", "data.categories"),
    ("data.categories=color,color", "distinct"),
    ("method.timesteps=[a]", "expected a list"),
])
def test_bad_overrides_name_the_cause(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides(get_preset("shapes"), [override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="available"):
        get_preset("nope")


def test_unknown_key_in_dict():
    data = get_preset("shapes").to_dict()
    data["train"]["bogus"] = 1
    with pytest.raises(ConfigError, match="train.bogus"):
        Config.from_dict(data)


def test_ds_config_generated_and_checked():
    cfg = get_preset("shapes")
    base = base_ds_config(cfg, world_size=2)
    assert base["train_micro_batch_size_per_gpu"] == cfg.data.batch_size
    assert base["train_batch_size"] == 2 * cfg.data.batch_size
    assert base["zero_optimization"]["stage"] == 3 and base["bf16"]["enabled"] is False
    opt = trainable_ds_config(base, cfg.student_optim)
    assert opt["optimizer"]["params"]["lr"] == cfg.student_optim.lr
    frozen = frozen_ds_config(base)
    assert frozen["zero_optimization"]["stage"] == 3 and "optimizer" not in frozen


def test_unset_bucket_sizes_never_exceed_the_engine():
    cfg = get_preset("shapes")
    small = trainable_ds_config(base_ds_config(cfg, 1), cfg.student_optim, num_params=1_234_567)
    assert small["zero_optimization"]["reduce_bucket_size"] == 1_234_567
    assert small["zero_optimization"]["allgather_bucket_size"] == 1_234_567
    large = trainable_ds_config(base_ds_config(cfg, 1), cfg.student_optim, num_params=10**10)
    assert large["zero_optimization"]["reduce_bucket_size"] == 5 * 10**8     # DeepSpeed's default
    user = {"zero_optimization": {"reduce_bucket_size": 7_000_000, "allgather_bucket_size": "auto"}}
    mine = trainable_ds_config(base_ds_config(cfg, 1, user), cfg.student_optim, num_params=1000)
    assert mine["zero_optimization"]["reduce_bucket_size"] == 7_000_000       # the user's value is kept
    assert mine["zero_optimization"]["allgather_bucket_size"] == 1000


@pytest.mark.parametrize("user, field", [
    ({"train_micro_batch_size_per_gpu": 3}, "train_micro_batch_size_per_gpu"),
    ({"train_batch_size": 5}, "train_batch_size"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
    ({"bf16": {"enabled": True}}, "bf16.enabled"),
    ({"fp16": {"enabled": True}}, "fp16.enabled"),
    ({"zero_optimization": {"stage": 2}}, "zero_optimization.stage"),
    ({"optimizer": {"type": "Adam"}}, "optimizer"),
])
def test_ds_json_disagreeing_with_config_is_refused(user, field):
    with pytest.raises(DeepSpeedConfigError, match=field.replace(".", r"\.")):
        base_ds_config(get_preset("shapes"), world_size=1, user=user, source="my.json")


def test_ds_json_auto_values_are_filled():
    base = base_ds_config(get_preset("shapes"), 1, {"train_micro_batch_size_per_gpu": "auto",
                                                    "zero_optimization": {"stage": "auto", "stage3_param_persistence_threshold": 0}})
    assert base["train_micro_batch_size_per_gpu"] == 4
    assert frozen_ds_config(base)["zero_optimization"]["stage3_param_persistence_threshold"] == 0


def test_dmd_caption_keep_is_checked():
    from npedit.config import ConfigError, DataConfig
    assert DataConfig(dmd_caption_keep=0.5).dmd_caption_keep == 0.5
    with pytest.raises(ConfigError, match="dmd_caption_keep"):
        DataConfig(dmd_caption_keep=1.2)
    with pytest.raises(ConfigError, match="dmd_caption_keep < 1 needs data.kind=shapes"):
        DataConfig(kind="manifest", manifest="m.jsonl", dmd_caption_keep=0.5)
