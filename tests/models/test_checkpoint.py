import json

import pytest
import torch

from models.checkpoint import ModelFileError, load_model, save_model
from models.config import ModelConfig
from models.tokenizer import ByteTokenizer, train_bpe
from models.transformer import MTPTransformer


def tiny_model(vocab_size=261) -> MTPTransformer:
    torch.manual_seed(0)
    return MTPTransformer(ModelConfig(dim=32, n_layers=3, n_heads=4, vocab_size=vocab_size, n_future_tokens=2, max_seq_len=64))


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    save_model(tmp_path / "m", model, ByteTokenizer(), {"note": "test"})
    return tmp_path / "m", model


def test_round_trip(saved):
    path, model = saved
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.provenance == {"note": "test"}
    tokens = torch.randint(0, 261, (1, 10))
    torch.testing.assert_close(loaded.model(tokens), model.eval()(tokens))
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_bpe_round_trip(tmp_path):
    tokenizer = train_bpe(["def f(x):\n    return x + 1\n" * 20], 300)
    model = tiny_model(vocab_size=300)
    save_model(tmp_path / "m", model, tokenizer)
    loaded = load_model(tmp_path / "m")
    assert loaded.tokenizer.encode("def g(y): pass") == tokenizer.encode("def g(y): pass")


def test_half_precision_save_loads_as_float32(tmp_path):
    save_model(tmp_path / "m", tiny_model(), ByteTokenizer(), dtype=torch.bfloat16)
    assert load_model(tmp_path / "m").model.output.weight.dtype == torch.float32


def edit_config(path, fn):
    config = json.loads((path / "config.json").read_text())
    fn(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, file, message",
    [
        (lambda p: (p / "config.json").unlink(), "config.json", "missing"),
        (lambda p: (p / "config.json").write_text("{not json"), "config.json", "not valid JSON"),
        (lambda p: edit_config(p, lambda c: c.update(format="other/9")), "config.json", "unknown format"),
        (lambda p: edit_config(p, lambda c: c["model"].update(dim=48)), "model.safetensors", "has shape"),
        (lambda p: edit_config(p, lambda c: c["model"].update(wings=2)), "config.json", "unknown model config field"),
        (lambda p: edit_config(p, lambda c: c["model"].update(n_layers=4)), "model.safetensors", "missing tensors"),
        (lambda p: edit_config(p, lambda c: c["model"].update(vocab_size=100)), "config.json", "tokenizer has 261"),
        (lambda p: edit_config(p, lambda c: c.pop("tokenizer")), "config.json", "missing the 'tokenizer' section"),
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors", "missing"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 5), "model.safetensors", "not a readable safetensors"),
        (lambda p: _truncate(p / "model.safetensors"), "model.safetensors", "not a readable safetensors"),
    ],
)
def test_bad_directory_names_the_file_and_the_problem(saved, damage, file, message):
    path, _ = saved
    damage(path)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(path)
    assert file in str(info.value)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFileError, match="not a directory"):
        load_model(tmp_path / "file")
