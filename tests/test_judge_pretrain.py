"""`npedit pretrain judge`: the question mix overrides (kind_weights) and continuing a judge (init_from)."""
from __future__ import annotations

import random
import shutil
from dataclasses import replace

import pytest
import torch

from npedit.models.vlm import TinyVLM
from npedit.pretrain import cli
from npedit.pretrain.common import shapes_tokenizer
from npedit.pretrain.judge import EASY_KINDS, JudgeConfig, kind_weights, question_batch, train_judge
from npedit.pretrain.judge_data import QUESTION_KINDS

TINY = JudgeConfig(vision_dim=16, vision_depth=1, dim=32, depth=1, heads=2, steps=3, batch_size=4, warmup=1,
                   vision_steps=2, vision_batch=4, eval_per_kind=4, save_every=0)
ONLY_SAME_EXCEPT = ",".join(f"{k}={int(k == 'same_except')}" for k in QUESTION_KINDS)


def test_kind_weights_override_the_mix_after_the_curriculum():
    cfg = replace(TINY, kind_weights=ONLY_SAME_EXCEPT, batch_size=32)
    assert kind_weights(0, cfg) == {k: EASY_KINDS.get(k, 0.0) for k in QUESTION_KINDS}   # curriculum start
    late = kind_weights(cfg.steps, cfg)
    assert late["same_except"] == 1.0 and sum(late.values()) == 1.0
    questions, _, _ = question_batch(cfg, random.Random(0), cfg.steps)
    assert {q.kind for q in questions} == {"same_except"}
    # only the named kinds change; a continued judge has no curriculum
    cfg = replace(TINY, kind_weights="same=0.5", init_from="somewhere")
    assert kind_weights(0, cfg) == {**QUESTION_KINDS, "same": 0.5}


@pytest.mark.parametrize("text, words", [("colour=1", "'colour=1'"), ("same", "KIND=WEIGHT"),
                                         ("same=x", "not a number"), ("same=-1", ">= 0"),
                                         (ONLY_SAME_EXCEPT.replace("same_except=1", "same_except=0"),
                                          "no question kind")])
def test_bad_kind_weights_are_named(text, words):
    with pytest.raises(ValueError, match="kind_weights") as err:
        JudgeConfig(kind_weights=text)
    assert words in str(err.value)
    code = cli.main(["judge", "--out", "unused", "--kind_weights", text])
    assert code == 2


def _weights(model: TinyVLM) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    report = train_judge(TINY, out, log_every=1)
    return out, report


def test_init_from_continues_the_saved_judge(tiny_judge, tmp_path):
    src, report = tiny_judge
    assert report["vision_stage_shape_accuracy"] is not None and report["steps"] == TINY.steps
    before = _weights(TinyVLM.from_pretrained(src / "judge"))
    # lr 0: a continued judge must come back as it was saved (a fresh build would be a new random init)
    cont = train_judge(replace(TINY, init_from=str(src), lr=0.0, seed=1), tmp_path)
    after = _weights(TinyVLM.from_pretrained(tmp_path / "judge"))
    assert cont["vision_stage_shape_accuracy"] is None          # stage 1 (cell probes) skipped
    assert cont["config"]["init_from"] == str(src)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6, msg=name)
    # and with a learning rate it trains on from there
    moved = train_judge(replace(TINY, init_from=str(src), lr=1e-2, seed=1), tmp_path / "moved")
    assert moved["steps"] == TINY.steps
    trained = _weights(TinyVLM.from_pretrained(tmp_path / "moved" / "judge"))
    assert any(not torch.equal(trained[k], before[k]) for k in before)


def test_init_from_checks_the_folder_and_the_architecture(tiny_judge, tmp_path):
    src, _ = tiny_judge
    with pytest.raises(FileNotFoundError, match="judge/config.json"):
        train_judge(replace(TINY, init_from=str(tmp_path / "missing")), tmp_path)
    with pytest.raises(ValueError, match="dim 32 != 48"):
        train_judge(replace(TINY, init_from=str(src), dim=48), tmp_path)
    other = tmp_path / "other_words"
    shutil.copytree(src / "judge", other / "judge")
    shapes_tokenizer().save_pretrained(other / "judge")   # the trainer's words, without the judge's templates
    with pytest.raises(ValueError, match="its tokenizer differs"):
        train_judge(replace(TINY, init_from=str(other)), tmp_path)
