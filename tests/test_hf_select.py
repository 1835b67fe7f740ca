"""Model selection by config: the family comes from the folder's own config files, unsupported
architectures and unusable sources are clear errors raised before distributed initialisation."""
import json
import shutil
import sys

import pytest
import torch
from fixtures_hf import save_qwen_vl, save_student, save_vlm
from helpers import TRAIN, run

from npedit.adapters.select import detect_student, detect_vlm
from npedit.build import ModelPlan
from npedit.config import ConfigError, apply_overrides
from npedit.presets import get_preset


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    out = {"sd3": save_student("sd3", root / "flux-dev"),            # names that lie about the contents
           "flux": save_student("flux", root / "sd35"),
           "qwen2_vl": save_vlm("qwen2_vl", root / "llava-onevision-7b"),
           "llava_onevision": save_vlm("llava_onevision", root / "qwen"),
           "internvl": save_vlm("internvl", root / "internvl"),
           "qwen2_5_vl": save_vlm("qwen2_5_vl", root / "qwen25")}
    from npedit.build import build_models
    models = build_models(get_preset("shapes_tiny"))
    models.student.save_pretrained(root / "builtin_dit")
    models.vlm.save_pretrained(root / "builtin_vlm")
    out.update(builtin_dit=root / "builtin_dit", builtin_vlm=root / "builtin_vlm", root=root)
    return out


def test_architecture_is_read_from_the_config_not_the_name(folders):
    assert detect_student(str(folders["sd3"])) == "sd3"
    assert detect_student(str(folders["flux"])) == "flux"
    for name in ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl"):
        assert detect_vlm(str(folders[name])) == name
    assert detect_student(str(folders["builtin_dit"])) == "builtin" and detect_student("") == "builtin"
    assert detect_vlm(str(folders["builtin_vlm"])) == "builtin" and detect_vlm("") == "builtin"


def test_unsupported_student_architecture_lists_the_supported_ones(folders, tmp_path):
    pipe = tmp_path / "sana"
    shutil.copytree(folders["sd3"], pipe)
    index = json.loads((pipe / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "SanaTransformer2DModel"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="'SanaTransformer2DModel'.*supported students: SD3Transformer2DModel "
                                          "\\(sd3\\), FluxTransformer2DModel \\(flux\\)"):
        detect_student(str(pipe))
    with pytest.raises(ConfigError, match="bare SD3Transformer2DModel folder; give the pipeline folder"):
        detect_student(str(folders["sd3"] / "transformer"))
    with pytest.raises(ConfigError, match="unsupported architecture 'qwen2_vl'"):
        detect_student(str(folders["qwen2_vl"]))


def test_unsupported_judge_architecture_lists_the_supported_ones(folders):
    with pytest.raises(ConfigError, match="model_type=None.*supported judges: qwen2_vl \\(Qwen2VLForConditionalGeneration"
                                          "\\), qwen2_5_vl .*llava_onevision .*internvl"):
        detect_vlm(str(folders["sd3"] / "transformer"))
    with pytest.raises(ConfigError, match="config.json not found"):
        detect_vlm(str(folders["sd3"]))


def test_missing_folders_and_unreachable_hub_ids_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="student.pretrained='/no/such/pipeline': no such folder"):
        detect_student("/no/such/pipeline")
    with pytest.raises(ConfigError, match="not in the Hugging Face cache \\(offline\\?\\)"):  # HF_HUB_OFFLINE=1
        detect_vlm("npedit-tests/not-a-cached-repo")
    with pytest.raises(ConfigError, match="not a local folder; not on the hub or in its cache"):
        detect_student("npedit-tests/not-a-cached-repo")


def test_vlm_image_size_must_not_be_negative():
    with pytest.raises(ConfigError, match="vlm.image_size must be >= 0"):
        apply_overrides(get_preset("shapes_tiny"), ["vlm.image_size=-1"])


def test_plan_checks_everything_before_distributed_init(folders, tmp_path):
    """ModelPlan is what the trainer runs before init: bad judges fail there, good plans load nothing yet."""
    base = get_preset("shapes_tiny")
    plan = ModelPlan(apply_overrides(base, [f"student.pretrained={folders['sd3']}", "data.image_size=32",
                                            f"vlm.pretrained={folders['qwen2_vl']}", "vlm.image_size=56"]))
    assert plan.student_family == "sd3" and plan.vlm_family == "qwen2_vl" and plan.builtin is None
    bad = [("vlm.image_size=57", "cannot take"), ("data.image_size=36", "multiple of 8"),
           ("student.reference_skip=true", "reference_skip is a built-in DiT option")]
    for override, match in bad:
        cfg = apply_overrides(base, [f"student.pretrained={folders['sd3']}", f"vlm.pretrained={folders['qwen2_vl']}",
                                     "vlm.image_size=56", "data.image_size=32", override])
        with pytest.raises(ConfigError, match=match):
            ModelPlan(cfg)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("case", ["architecture", "image_size", "prompt_length", "yes_split"])
def test_train_refuses_a_bad_judge_before_training(folders, tmp_path, case):
    """Through the entry point users run: exit code 2 and the reason, before any output is written."""
    size = 70 if case == "image_size" else 56
    if case == "architecture":
        judge, match = folders["sd3"] / "transformer", "unsupported architecture"
    elif case == "image_size":
        judge, match = folders["qwen2_vl"], "vlm.image_size=70: the qwen2_vl judge cannot take it"
    elif case == "prompt_length":
        judge, match = save_qwen_vl(tmp_path / "short", max_position_embeddings=96), "longer than the model's limit"
    else:
        judge, match = save_qwen_vl(tmp_path / "split", answer_words=("No",)), "splits the answer 'Yes'"
    out = tmp_path / "run"
    proc = run([sys.executable, TRAIN, "--preset", "shapes_tiny", "--output_dir", str(out),
                "--set", f"vlm.pretrained={judge}", "--set", f"vlm.image_size={size}"], check=False)
    assert proc.returncode == 2 and match in proc.stderr
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
