import json
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.bench import BenchConfig, directory_prompts, humaneval_prompts, implied_tokens_per_forward, run_bench
from assistant.engine.torch_engine import TorchEngine

PROJECT = Path(__file__).resolve().parents[2]


def test_humaneval_prompts_come_from_the_package():
    prompts = humaneval_prompts()
    assert len(prompts) == 164
    assert prompts[0].lstrip().startswith("from typing import List")


def test_directory_prompts_are_deterministic():
    a = directory_prompts(PROJECT / "models", count=5)
    assert a == directory_prompts(PROJECT / "models", count=5)
    assert len(a) == 5 and all(p.endswith("\n") for p in a)


def test_implied_tokens_per_forward():
    assert implied_tokens_per_forward([0.9, 0.5, 0.5, 0.5], 1) == 1.0
    assert implied_tokens_per_forward([0.9, 0.5, 0.5, 0.5], 3) == pytest.approx(1.75)
    assert implied_tokens_per_forward([1.0, 1.0, 1.0, 1.0], 4) == 4.0


def test_run_bench_on_a_trained_model(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    prompts = [body[i : i + 150] for i in (0, 333, 777, 1200)]
    result = run_bench(engine, loaded.tokenizer, prompts, BenchConfig(max_new_tokens=32, warmup=1))
    assert result.mismatches == 0
    assert [r["k"] for r in result.rows] == [1, 2, 3, 4]
    assert result.rows[0]["tokens_per_forward"] == 1.0 and result.rows[0]["speedup"] == 1.0
    assert result.rows[0]["step_cost"] == 1.0 and all(r["step_cost"] > 0 for r in result.rows)
    assert result.rows[-1]["tokens_per_forward"] > 1.2
    assert len(result.head_accuracy) == 4 and result.head_accuracy[0] == 1.0  # head 1 made the continuation
    assert "| 4 |" in result.table()


def test_cli_complete_and_bench(trained_model, tmp_path):
    loaded, body = trained_model
    source = tmp_path / "example.py"
    source.write_text(body[:300])
    line = body[:300].count("\n")  # the last, partial line (1-based: count + 1)
    proc = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "complete", str(source), "--line", str(line + 1), "--col", "1",
         "--model", str(loaded.path), "--max-tokens", "40"],
        capture_output=True, text=True, cwd=PROJECT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\n" not in proc.stdout.rstrip("\n"), "single-line mode stops at the end of the line"
    assert "per forward" in proc.stderr

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "bench", "--model", str(loaded.path), "--limit", "2",
         "--max-new", "16", "--out", str(out)],
        capture_output=True, text=True, cwd=PROJECT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| 4 |" in proc.stdout
    assert json.loads(out.read_text())["mismatches"] == 0


def test_mismatch_report_fails_exact_engines_only():
    from assistant.bench import BenchResult

    result = BenchResult(mismatches=3, mismatches_by_engine={"llama q8_0": 2, "torch": 1},
                         runs_by_engine={"llama q8_0": 60, "torch": 60, "llama f16": 60},
                         exact_engines={"llama q8_0": False, "torch": True, "llama f16": False})
    report = dict(result.mismatch_report())
    assert report == {
        "llama q8_0: 2 of 60 speculative runs part from plain greedy decoding at a near-tie (fast mode: a k-token "
        "verify rounds differently from a 1-token step; exact mode makes them equal)": False,
        "ERROR: 1 of 60 speculative runs of torch differ from its plain greedy decoding (exact mode)": True,
        "llama f16: 0 of 60 speculative runs part from plain greedy decoding at a near-tie (fast mode: a k-token "
        "verify rounds differently from a 1-token step; exact mode makes them equal)": False,
    }
