import json
import resource

import pytest
import torch

from models.checkpoint import ModelFileError, available_memory, check_weights_header, load_model, read_config, save_model
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
        (lambda p: edit_config(p, lambda c: c["model"].update(max_seq_len=10**12)), "config.json",
         "max_seq_len 1000000000000 is beyond any usable context .* would take 768.0 TB"),
        (lambda p: edit_config(p, lambda c: c["model"].update(max_seq_len=-1)), "config.json", "max_seq_len must be a positive"),
        (lambda p: edit_config(p, lambda c: c["model"].update(rope_theta=float("nan"))), "config.json",
         "rope_theta must be a finite positive number, got nan"),
        (lambda p: edit_config(p, lambda c: c["model"].update(norm_eps=float("inf"))), "config.json",
         "norm_eps must be a finite positive number, got inf"),
        (lambda p: edit_config(p, lambda c: c["model"].update(n_heads=5)), "config.json", "divisible by n_heads"),
        (lambda p: _poison(p, "layers.1.attention.wq.weight"), "model.safetensors",
         "tensor layers.1.attention.wq.weight holds 1 non-finite values"),
    ],
)
def test_bad_directory_names_the_file_and_the_problem(saved, damage, file, message):
    path, _ = saved
    damage(path)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(path)
    assert file in str(info.value)


def _poison(model_dir, name):
    """One NaN in one tensor of the saved weights."""
    model = load_model(model_dir).model
    with torch.no_grad():
        model.get_parameter(name)[0, 0] = float("nan")
    save_model(model_dir, model, ByteTokenizer())


def test_context_too_large_for_memory_is_refused_before_allocating(saved):
    """Below the absolute cap on max_seq_len, but a KV cache of 563 TB: refused
    with the figure, before the RoPE tables or any tensor are allocated."""
    path, _ = saved
    edit_config(path, lambda c: c["model"].update(dim=1 << 16, n_layers=1024, n_heads=1024, max_seq_len=1 << 20))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelFileError, match=r"config.json: max_seq_len 1048576: a context of 1048576 positions "
                       r"needs 563\.5 TB \(KV cache 562\.9 TB\), more than 50% of the .* available: lower max_seq_len"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kb < 100_000  # no 100 MB more at the peak
    assert 0 < available_memory() < 1 << 50


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFileError, match="not a directory"):
        load_model(tmp_path / "file")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors: missing"),
        (lambda p: _truncate(p / "model.safetensors"), "model.safetensors: not a readable safetensors"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"),
         "model.safetensors: not a readable safetensors"),
        (lambda p: save_model(p, MTPTransformer(ModelConfig(dim=32, n_layers=3, n_heads=4, n_future_tokens=3,
                                                            max_seq_len=64)), ByteTokenizer()) and None,
         "model.safetensors: does not match config.json"),
    ],
)
def test_weights_header_check_names_the_file(saved, damage, message):
    """What the llama.cpp engine checks of the weights it does not read: cheaply, the header."""
    path, _ = saved
    config = read_config(path)[0]
    assert check_weights_header(path, config) == path / "model.safetensors"
    damage(path)
    with pytest.raises(ModelFileError, match=message):
        check_weights_header(path, config)
