"""The replay benchmark runs end to end against the real server."""

import json
import os
import subprocess
import sys

import pytest


def replay(model_dir, tmp_path, code: str, *args: str) -> dict:
    """Run the replay on a file holding `code` (extra arguments after the model) and read its summary."""
    source = tmp_path / "code.py"
    source.write_text(code)
    out = tmp_path / "summary.json"
    env = {**os.environ, "MTP_ASSISTANT_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "assistant.completion.replay", str(source), "--model", str(model_dir), *args,
         "--json", str(out)],
        check=True, env=env, capture_output=True, timeout=300,
    )
    return json.loads(out.read_text())


@pytest.mark.slow
def test_replay_types_through_a_file(tiny_model_dir, tmp_path):
    code = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(10))
    summary = replay(tiny_model_dir, tmp_path, code, "--lines", "3", "--settings", '{"maxTokens": 8}')
    typed = len("def f5(x):\n    return x + 5\n\n")
    assert summary["chars_typed"] == typed and summary["requests"] == typed
    assert summary["latency_ms"]["p50"] > 0 and summary["errors"] == 0
    assert 0 <= summary["cache_hit_rate"] <= 1 and summary["tokens_per_forward"] >= 1
    calls = summary["model_calls"]
    assert 0 < calls <= typed and round(calls * summary["new_tokens_per_call"]) >= calls
    assert summary["prefill_ms"] > 0 and summary["decode_ms"] >= 0


@pytest.mark.slow
def test_replay_feeds_two_servers_the_same_keystrokes(tiny_model_dir, tmp_path):
    code = "".join(f"def g{i}(y):\n    return y * {i}\n\n" for i in range(6))
    summary = replay(tiny_model_dir, tmp_path, code, "--lines", "2", "--settings", '{"maxTokens": 8}',
                     "--settings", '{"maxTokens": 8, "heads": 1}')
    first, second = summary["servers"]
    assert first["requests"] == second["requests"] == first["chars_typed"] == second["chars_typed"] > 5
    assert first["errors"] == second["errors"] == 0
    assert second["settings"] == {"maxTokens": 8, "heads": 1} and "vs_first" not in first
    assert second["vs_first"]["median_ratio"] > 0 and second["vs_first"]["total_ratio"] > 0
