"""Real-model presets and the 8-GPU DeepSpeed files: registered, consistent with each other, printable."""
import json
import sys

import pytest
from helpers import REPO, TRAIN, run

from npedit.adapters.vlm_preprocess import qwen_size_problem
from npedit.engine.ds_config import base_ds_config, frozen_ds_config, load_ds_json
from npedit.presets import PRESETS, get_preset

REAL = ("sd35_qwen25vl", "flux_llava_ov")
FILES = ("configs/zero3_8gpu_bf16.json", "configs/zero3_8gpu_bf16_offload.json")


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("ds_file", FILES)
def test_presets_agree_with_the_8_gpu_deepspeed_files(name, ds_file):
    cfg = get_preset(name)
    base = base_ds_config(cfg, 8, load_ds_json(REPO / ds_file), ds_file)
    assert base["train_batch_size"] == 8 * cfg.data.batch_size and base["bf16"]["enabled"] is True
    assert base["zero_optimization"]["stage"] == 3
    frozen = frozen_ds_config(base)["zero_optimization"]
    assert ("offload_param" in frozen) == ds_file.endswith("offload.json")


def test_presets_name_published_models_and_sizes_they_take():
    assert set(REAL) <= set(PRESETS)
    sd35, flux = get_preset("sd35_qwen25vl"), get_preset("flux_llava_ov")
    assert sd35.student.pretrained == "stabilityai/stable-diffusion-3.5-medium"
    assert sd35.vlm.pretrained == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert qwen_size_problem(sd35.vlm.image_size, 14, 2, 56 * 56, 28 * 28 * 1280) is None
    assert flux.student.pretrained == "black-forest-labs/FLUX.1-dev"
    assert flux.vlm.pretrained == "llava-hf/llava-onevision-qwen2-7b-ov-hf" and flux.vlm.image_size == 0
    for cfg in (sd35, flux):
        assert cfg.data.image_size % 16 == 0 and cfg.train.precision == "bf16" and cfg.train.zero_stage == 3


def test_print_config_of_a_real_preset():
    proc = run([sys.executable, TRAIN, "--preset", "sd35_qwen25vl", "--output_dir", "unused", "--print_config",
                "--set", "data.manifest=/data/edits.jsonl"])
    cfg = json.loads(proc.stdout)
    assert cfg["data"]["manifest"] == "/data/edits.jsonl" and cfg["text"]["max_length"] == 256
