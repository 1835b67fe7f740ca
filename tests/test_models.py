"""Built-in models: tokenizer, text encoder, codec, save/load round trips, registry and its errors."""
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from torch import nn

from npedit.models import (MODEL_CLASSES, CodecConfig, DiTConfig, FlowDiT, PatchCodec, PretrainedModel, TextEncoder,
                           TextEncoderConfig, TinyVLM, VLMConfig, WordTokenizer, load_pretrained)
from npedit.models.serialization import check_config_fields

WORDS = ["Is there a red circle?", "Make the square blue.", "yes", "no"]


@pytest.fixture
def tokenizer():
    return WordTokenizer.from_words(WORDS)


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_vocab_sorted_after_specials(tokenizer):
    assert tokenizer.vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    words = tokenizer.vocab[4:]
    assert words == sorted(set(words)) and "circle" in words and "?" in words and "Make" not in words
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == len(tokenizer.vocab) == len(tokenizer)


def test_tokenizer_encode_decode_and_padding(tokenizer):
    ids, mask = tokenizer.encode(["Is there a RED circle?", "yes"], max_length=8)
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [6, 1]
    assert (ids[~mask] == tokenizer.pad_id).all()
    assert tokenizer.decode(ids[0]) == "is there a red circle?"
    assert tokenizer.decode(ids[1].tolist()) == "yes"
    short, short_mask = tokenizer.encode(["Is there a RED circle?", "yes"], max_length=8, pad_to_max=False)
    assert short.shape == (2, 6) and torch.equal(short, ids[:, :6]) and torch.equal(short_mask, mask[:, :6])
    bos, bos_mask = tokenizer.encode(["yes"], max_length=3, add_bos=True)
    assert bos[0].tolist() == [tokenizer.bos_id, tokenizer.token_id("yes"), tokenizer.pad_id]
    assert bos_mask[0].tolist() == [True, True, False]


def test_tokenizer_unknown_words_and_errors(tokenizer):
    ids, _ = tokenizer.encode(["is there a purple circle"], max_length=5)
    assert ids[0, 3] == tokenizer.unk_id
    assert tokenizer.decode(ids[0]) == "is there a <unk> circle"
    assert tokenizer.token_id("Yes") == tokenizer.token_id("yes")
    with pytest.raises(KeyError, match="purple"):
        tokenizer.token_id("purple")
    with pytest.raises(ValueError, match="is there a red circle"):
        tokenizer.encode(["yes", "is there a red circle"], max_length=4)


def test_tokenizer_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = WordTokenizer.from_pretrained(tmp_path)
    assert loaded.vocab == tokenizer.vocab
    texts = ["make the square blue.", "no"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(texts, 6), tokenizer.encode(texts, 6)))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        WordTokenizer.from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------- text encoder

def test_text_encoder_shapes_pads_and_padding_independence(tokenizer):
    enc = TextEncoder(TextEncoderConfig(tokenizer.vocab_size, dim=32, depth=2, heads=4, max_length=10))
    texts = ["is there a red circle?", "yes", ""]
    ids, mask = tokenizer.encode(texts, max_length=10)
    out = enc(ids, mask)
    assert out.shape == (3, 10, 32)
    assert (out[~mask] == 0).all() and (out[mask] != 0).any(dim=-1).all()
    short_ids, short_mask = tokenizer.encode(texts, max_length=10, pad_to_max=False)
    torch.testing.assert_close(enc(short_ids, short_mask), out[:, :short_ids.shape[1]])
    with pytest.raises(ValueError, match="max_length"):
        enc(*tokenizer.encode(texts, max_length=11))
    holes = mask.clone()
    holes[0, 1] = False
    with pytest.raises(ValueError, match="right-padded"):
        enc(ids, holes)


# ---------------------------------------------------------------- codec

def test_codec_round_trip_shapes_and_gradient():
    codec = PatchCodec(CodecConfig(factor=2))
    assert codec.latent_channels == 12
    x = torch.rand(2, 3, 8, 12, requires_grad=True)  # torch.rand draws on a 2^-24 grid: exact
    z = codec.encode(x)
    assert z.shape == (2, 12, 4, 6) and z.min() >= -1 and z.max() <= 1
    y = codec.decode(z)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    grid = torch.arange(256.0).div(256).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(codec.decode(codec.encode(grid)), grid)
    uint8 = torch.randint(0, 256, (1, 3, 16, 16)) / 255.0  # not dyadic: one rounding of 2x - 1
    assert (codec.decode(codec.encode(uint8)) - uint8).abs().max() <= 2.0 ** -26
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(torch.rand(1, 3, 7, 8))


def test_codec_factor_one_is_identity():
    codec = PatchCodec(CodecConfig(factor=1))
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(codec.encode(x), 2 * x - 1) and torch.equal(codec.decode(codec.encode(x)), x)


# ---------------------------------------------------------------- save / load, registry

def _tiny_models(vocab_size):
    dit = FlowDiT(DiTConfig(in_channels=4, sample_size=4, patch_size=2, dim=32, depth=2, heads=2, text_dim=16))
    for p in dit.parameters():  # adaLN-Zero leaves the output at 0: make it a real function
        if not p.any():
            nn.init.normal_(p, std=0.1)
    text = TextEncoder(TextEncoderConfig(vocab_size, dim=16, depth=1, heads=2, max_length=8))
    vlm = TinyVLM(VLMConfig(vocab_size, image_size=8, patch_size=4, vision_dim=16, vision_depth=1, dim=32, depth=1,
                            heads=2, max_text_len=8, image_mean=(0.4, 0.5, 0.6)))
    return {"dit": dit, "text": text, "vlm": vlm, "codec": PatchCodec(CodecConfig())}


def _outputs(name, model, tokenizer):
    g = torch.Generator().manual_seed(1)
    ids, mask = tokenizer.encode(["is there a red circle?", "no"], max_length=8)
    if name == "dit":
        x, ref = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 6, generator=g)
        return model(x, torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g), ref)
    if name == "text":
        return model(ids, mask)
    if name == "vlm":
        return model(torch.rand(2, 2, 3, 8, 8, generator=g), torch.tensor([[True, True], [True, False]]), ids, mask)
    return model.encode(torch.rand(2, 3, 4, 4, generator=g))


@pytest.mark.parametrize("name", ["dit", "text", "vlm", "codec"])
def test_round_trip_identical_outputs(name, tokenizer, tmp_path):
    model = _tiny_models(tokenizer.vocab_size)[name]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model.model_type
    for loaded in (type(model).from_pretrained(tmp_path), load_pretrained(tmp_path)):
        assert type(loaded) is type(model) and loaded.config == model.config
        assert torch.equal(_outputs(name, loaded, tokenizer), _outputs(name, model, tokenizer))


def test_round_trip_keeps_saved_dtype_unless_asked(tokenizer, tmp_path):
    model = _tiny_models(tokenizer.vocab_size)["dit"].to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert load_pretrained(tmp_path).dtype == torch.bfloat16
    as_fp32 = FlowDiT.from_pretrained(tmp_path, torch_dtype=torch.float32)
    assert as_fp32.dtype == torch.float32
    assert all(torch.equal(a.float(), b) for a, b in zip(model.state_dict().values(), as_fp32.state_dict().values()))
    assert FlowDiT.from_pretrained(tmp_path, torch_dtype="float32").dtype == torch.float32


def test_loading_leaves_the_global_rng_alone(tokenizer, tmp_path):
    _tiny_models(tokenizer.vocab_size)["vlm"].save_pretrained(tmp_path)
    state = torch.random.get_rng_state()
    load_pretrained(tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)


@dataclass
class _TiedConfig:
    vocab_size: int = 7
    dim: int = 3

    def __post_init__(self):
        check_config_fields(self)


class _TiedModel(PretrainedModel):
    config_class = _TiedConfig
    model_type = "test-tied"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_saved_once_and_stay_tied(tmp_path):
    model = _TiedModel(_TiedConfig())
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["embed.weight"]
    loaded = _TiedModel.from_pretrained(tmp_path)
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)


def test_registry_dispatch_and_unknown_type(tokenizer, tmp_path):
    assert set(MODEL_CLASSES) == {"npedit-text-encoder", "npedit-flow-dit", "npedit-tiny-vlm", "npedit-patch-codec"}
    _tiny_models(tokenizer.vocab_size)["text"].save_pretrained(tmp_path)
    assert isinstance(load_pretrained(tmp_path), TextEncoder)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match=r"'bert'.*npedit-flow-dit.*npedit-text-encoder"):
        load_pretrained(tmp_path)


def test_bad_folders_give_clear_errors(tokenizer, tmp_path):
    models = _tiny_models(tokenizer.vocab_size)
    models["text"].save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match=r"npedit-text-encoder.*FlowDiT loads 'npedit-flow-dit'"):
        FlowDiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"config.json.*unknown key.*hidden_size"):
        TextEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "heads": 3}))
    with pytest.raises(ValueError, match=r"config.json.*divisible by heads"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "depth": "two"}))
    with pytest.raises(ValueError, match=r"TextEncoderConfig.depth must be of type int"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "vocab_size"}))
    with pytest.raises(ValueError, match=r"missing required key.*vocab_size"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "depth": 2}))
    with pytest.raises(RuntimeError, match=r"model.safetensors: weights do not match"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TextEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
