"""Bad model files and configs at engine load: each refused, or fallen back from, with one
line naming the file and the problem; never served as garbage, never allowed to grow the
process until the kernel kills it."""

import json
import logging
import shutil

import numpy as np
import pytest

from assistant.engine import load_engine
from assistant.engine.llama_engine import LlamaEngine, LlamaSettings
from assistant.engine.torch_engine import TorchEngine
from models.checkpoint import ModelFileError, save_model
from models.gguf_export import export_files, export_model
from models.tokenizer import ByteTokenizer

from .helpers import random_model

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random 4-head byte model of dim 64 (rows fit q8_0's 32-wide blocks), exported at f32 and q8_0."""
    model_dir = tmp_path_factory.mktemp("model") / "m"
    save_model(model_dir, random_model(n_future=4, dim=64, n_layers=5), ByteTokenizer())
    for quant in ("f32", "q8_0"):
        export_model(model_dir, quant)
    return model_dir


@pytest.fixture
def model_dir(exported, tmp_path):
    """A copy to damage."""
    return shutil.copytree(exported, tmp_path / "m")


def llama(model_dir, quant="q8_0") -> LlamaEngine:
    return LlamaEngine(model_dir, LlamaSettings(quant=quant, threads=1))


def edit_config(model_dir, **changes):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["model"].update(changes)
    path.write_text(json.dumps(config))


def poke_tensor(path, name, write):
    """Change a GGUF tensor's bytes in place (the file's layout stays valid)."""
    reader = gguf.GGUFReader(str(path), "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    write(tensor)
    reader.data.flush()


def test_the_intact_export_loads_and_has_no_warnings(model_dir):
    engine = llama(model_dir)
    assert engine.warnings == [] and engine.max_seq_len == 256
    assert load_engine(model_dir, threads=1).warnings == []


@pytest.mark.parametrize("engine", ["auto", "torch", "llama"])
def test_huge_context_is_refused_naming_config_json_and_the_memory(model_dir, engine):
    edit_config(model_dir, max_seq_len=10**12)
    with pytest.raises(ModelFileError, match=r"config.json: bad model config: max_seq_len 1000000000000 is beyond "
                       r"any usable context .*its KV cache alone would take 2.6 PB"):
        load_engine(model_dir, engine, threads=1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_theta": float("nan")}, "rope_theta must be a finite positive number, got nan"),
        ({"rope_theta": 0.0}, "rope_theta must be a finite positive number, got 0.0"),
        ({"norm_eps": float("nan")}, "norm_eps must be a finite positive number, got nan"),
        ({"n_heads": 3}, r"dim \(64\) must be divisible by n_heads \(3\)"),
        ({"dim": 10**7}, "dim 10000000 is larger than any model"),
        ({"max_seq_len": 256.5}, "max_seq_len must be a positive integer, got 256.5"),
    ],
)
@pytest.mark.parametrize("engine", ["auto", "llama"])
def test_nonsense_config_values_are_refused_by_every_engine(model_dir, engine, changes, message):
    edit_config(model_dir, **changes)
    with pytest.raises(ModelFileError, match=f"config.json: bad model config: {message}"):
        load_engine(model_dir, engine, threads=1)


def test_context_beyond_the_export_is_refused_naming_both_files(model_dir):
    edit_config(model_dir, max_seq_len=4096)
    with pytest.raises(ModelFileError, match=r"q8_0/main.gguf: exported for a context of 256 positions, config.json "
                       r"says max_seq_len 4096"):
        llama(model_dir)


@pytest.mark.parametrize("engine", ["auto", "torch", "llama"])
def test_tiny_context_is_refused_at_load_not_at_every_request(model_dir, engine):
    edit_config(model_dir, max_seq_len=4)
    with pytest.raises(ModelFileError, match=r"config.json: max_seq_len 4 is too small to serve completions: "
                       r"a prompt and its completion need a context of at least 32 positions"):
        load_engine(model_dir, engine, threads=1)


def test_lowering_the_context_below_the_export_is_fine(model_dir):
    edit_config(model_dir, max_seq_len=64)
    engine = llama(model_dir)
    assert engine.max_seq_len == 64 and engine._step.main.n_ctx == 64
    assert engine.generate([5] * 10).tokens
    exact = LlamaEngine(model_dir, LlamaSettings(quant="q8_0", threads=1, exact=True))
    assert exact._step.main.n_ctx == 65  # + the padding slot
    assert exact.generate([5] * 10).tokens


def test_missing_head_falls_back_to_torch_with_a_warning_naming_it(model_dir, caplog):
    for quant in ("f32", "q8_0"):
        export_files(model_dir, quant, 4)[3].unlink()
    with caplog.at_level(logging.WARNING, logger="assistant.engine"):
        engine = load_engine(model_dir, "auto", threads=1)
    assert isinstance(engine, TorchEngine)
    assert len(engine.warnings) == 1
    assert "serving with the torch engine instead" in engine.warnings[0]
    assert "q8_0/head-4.gguf: missing" in engine.warnings[0]
    assert engine.warnings[0] in caplog.text
    with pytest.raises(ModelFileError, match="q8_0/head-4.gguf: missing"):
        load_engine(model_dir, "llama", threads=1)


def test_auto_without_any_export_is_torch_without_a_warning(model_dir):
    shutil.rmtree(model_dir / "gguf")
    engine = load_engine(model_dir, "auto")
    assert isinstance(engine, TorchEngine) and engine.warnings == []


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors: missing"),
        (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5000]),
         "model.safetensors: not a readable safetensors file"),
    ],
)
def test_llama_engine_notices_missing_or_damaged_weights(model_dir, damage, message):
    """llama.cpp runs the GGUF files, but a model directory without its weights is broken."""
    damage(model_dir)
    with pytest.raises(ModelFileError, match=message):
        llama(model_dir)


@pytest.mark.parametrize("file", ["main.gguf", "head-3.gguf"])
def test_corrupt_or_truncated_gguf_names_the_file(model_dir, file):
    path = model_dir / "gguf" / "q8_0" / file
    data = path.read_bytes()
    path.write_bytes(data[:64] + bytes(len(data) - 64))  # the header cut off after 64 bytes
    with pytest.raises(ModelFileError, match=f"q8_0/{file}: not a readable GGUF export"):
        llama(model_dir)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=f"q8_0/{file}: not a readable GGUF export, corrupt or truncated"):
        llama(model_dir)


def test_nan_in_an_f32_gguf_tensor_names_the_file_and_tensor(model_dir):
    path = export_files(model_dir, "f32", 4)[0]
    poke_tensor(path, "blk.1.attn_k.weight", lambda t: t.data.__setitem__((0, 3), np.nan))
    with pytest.raises(ModelFileError, match="f32/main.gguf: .*tensor blk.1.attn_k.weight holds non-finite values"):
        llama(model_dir, "f32")


@pytest.mark.parametrize("file", ["main.gguf", "head-3.gguf"])
def test_nan_in_a_quantized_gguf_tensor_is_caught_by_the_probe_forward(model_dir, file):
    """q8_0 blocks are an f16 scale and 32 int8s: a NaN scale poisons every value of its block."""
    path = model_dir / "gguf" / "q8_0" / file
    f16_nan = np.array([np.nan], dtype=np.float16).view(np.uint8)

    def nan_scale(tensor):
        assert tensor.tensor_type.name == "Q8_0"
        tensor.data[0, :2] = f16_nan  # the first block's scale

    poke_tensor(path, "blk.0.ffn_down.weight", nan_scale)
    with pytest.raises(ModelFileError, match=f"q8_0/{file}: a one-token forward gives non-finite"):
        llama(model_dir)
