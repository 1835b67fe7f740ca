"""The shapes world's text encoder pretrained alone (caption parsing), and the teacher on top of it."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from npedit.data.shapes import Scene, ShapeObject
from npedit.models.text_encoder import TextEncoder
from npedit.pretrain import cli
from npedit.pretrain.teacher import TeacherConfig, load_teacher, train_teacher
from npedit.pretrain.text import IGNORE, CaptionParser, TextPretrainConfig, scene_targets, train_text_encoder

TINY_TEXT = TextPretrainConfig(dim=32, depth=1, heads=2, steps=300, batch_size=16, warmup=10, eval_examples=40)


def tiny_teacher(**kw) -> TeacherConfig:
    return TeacherConfig(image_size=16, dim=32, depth=1, heads=2, text_dim=32, text_depth=1, steps=3, batch_size=4,
                         warmup=1, eval_examples=2, save_every=0, **kw)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    return out, train_text_encoder(TINY_TEXT, out, log_every=10)


def test_scene_targets_name_every_cell():
    scene = Scene("gray", (ShapeObject("circle", "red", "top left", "small"),
                           ShapeObject("diamond", "blue", "bottom right", "large")))
    t = scene_targets([scene])
    assert t["shape"].tolist() == [[1, 0, 0, 0, 0, 0, 0, 0, 4]]
    assert t["color"][0, 0] == 0 and t["color"][0, 8] == 2 and (t["color"][0, 1:8] == IGNORE).all()
    assert t["size"][0, 0] == 0 and t["size"][0, 8] == 1
    assert t["background"].tolist() == [2]


def test_parser_ignores_padding():
    torch.manual_seed(0)
    parser = CaptionParser(8)
    tokens, mask = torch.randn(1, 6, 8), torch.tensor([[True] * 4 + [False] * 2])
    padded = tokens.clone()
    padded[:, 4:] = 100.0
    a, b = parser(tokens, mask), parser(padded, mask)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_text_pretraining_learns_and_saves_a_loadable_encoder(text_run):
    out, report = text_run
    assert report["final_loss"] < 0.8 * report["first_loss"]
    assert set(report["parse"]) == {"cells", "background", "scenes", "n"} and report["parse"]["n"] == 40
    assert 0.0 <= report["parse"]["scenes"] <= report["parse"]["cells"] <= 1.0
    encoder = TextEncoder.from_pretrained(out / "text_encoder")
    assert encoder.config.dim == 32
    assert json.loads((out / "text_report.json").read_text())["parse"] == report["parse"]


@pytest.mark.parametrize("train_text", [False, True])
def test_teacher_starts_from_the_pretrained_encoder(text_run, tmp_path, train_text):
    src, _ = text_run
    train_teacher(tiny_teacher(text_encoder=str(src / "text_encoder"), train_text=train_text), tmp_path)
    before = TextEncoder.from_pretrained(src / "text_encoder").state_dict()
    after = TextEncoder.from_pretrained(tmp_path / "text_encoder").state_dict()
    same = all(torch.equal(before[k], after[k]) for k in before)
    assert same != train_text   # frozen: bit-equal; trained further: changed
    dit, text, codec, image_size = load_teacher(tmp_path)   # what it wrote loads back for sampling
    assert image_size == tiny_teacher().image_size and not dit.training and not text.encoder.training
    assert all(torch.equal(text.encoder.state_dict()[k], v) for k, v in after.items())


def test_teacher_refuses_an_encoder_that_does_not_fit(text_run, tmp_path):
    src, _ = text_run
    wider = dataclasses.replace(tiny_teacher(text_encoder=str(src / "text_encoder")), text_dim=64)
    with pytest.raises(ValueError, match="text_dim 64"):
        train_teacher(wider, tmp_path)
    with pytest.raises(FileNotFoundError, match="npedit pretrain text"):
        train_teacher(tiny_teacher(text_encoder=str(tmp_path / "missing")), tmp_path)
    assert not (tmp_path / "teacher").exists()


def test_cli_text_and_bool_flags(tmp_path, capsys):
    rc = cli.main(["text", "--out", str(tmp_path), "--dim", "16", "--depth", "1", "--heads", "2", "--steps", "2",
                   "--batch_size", "4", "--eval_examples", "4"])
    assert rc == 0 and (tmp_path / "text_encoder" / "config.json").is_file()
    assert '"scenes"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["teacher", "--out", str(tmp_path), "--train_text", "maybe"])
