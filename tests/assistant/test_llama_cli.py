"""The CLI around the llama.cpp engine: models export, complete (auto engine), bench."""

import json
import shutil

import pytest

from assistant.cli import main


@pytest.fixture
def model_copy(trained_model, tmp_path, monkeypatch):
    """The session's trained model, copied: exporting into it would switch other tests to llama.cpp."""
    monkeypatch.setenv("MTP_ASSISTANT_HOME", str(tmp_path / "home"))
    loaded, body = trained_model
    model_dir = tmp_path / "model"
    shutil.copytree(loaded.path, model_dir)
    return model_dir, body


def test_export_complete_and_bench(model_copy, tmp_path, capsys):
    model_dir, body = model_copy
    assert main(["models", "export", str(model_dir), "--quant", "q8_0,f16"]) == 0
    out = capsys.readouterr().out
    assert "q8_0: 4 files" in out and "f16: 4 files" in out
    assert (model_dir / "gguf" / "q8_0" / "head-4.gguf").is_file()

    source = tmp_path / "example.py"
    source.write_text(body[:300])
    line = body[:300].count("\n") + 1
    assert main(["complete", str(source), "--line", str(line), "--col", "1", "--model", str(model_dir),
                 "--max-tokens", "24", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "per forward" in err and "engine llama.cpp q8_0" in err  # auto picked llama.cpp, q8_0 first
    assert main(["complete", str(source), "--line", str(line), "--col", "1", "--model", str(model_dir),
                 "--max-tokens", "24", "--engine", "torch"]) == 0
    assert "engine torch" in capsys.readouterr().err

    result = tmp_path / "bench.json"
    assert main(["bench", "--model", str(model_dir), "--engine", "llama", "--quant", "f16,q8_0", "--with-torch",
                 "--threads", "1", "--limit", "2", "--max-new", "16", "--out", str(result)]) == 0
    table = capsys.readouterr().out
    assert "| llama q8_0 | 4 |" in table and "| torch | 1 |" in table and "speedup vs torch k=1" in table
    data = json.loads(result.read_text())
    assert data["mismatches"] == 0 and {r["engine"] for r in data["rows"]} == {"llama f16", "llama q8_0", "torch"}


def test_export_errors_are_one_line(model_copy, capsys):
    model_dir, _ = model_copy
    assert main(["models", "export", str(model_dir), "--quant", "q3"]) == 1
    assert "unknown quantization q3" in capsys.readouterr().err
    assert main(["complete", str(model_dir / "config.json"), "--line", "1", "--col", "1", "--model", str(model_dir),
                 "--engine", "llama"]) == 1
    assert "no GGUF export" in capsys.readouterr().err
