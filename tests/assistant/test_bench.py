import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.bench import (
    BenchConfig,
    BenchEngines,
    BenchRow,
    bench_engines,
    directory_prompts,
    humaneval_prompts,
    implied_tokens_per_forward,
    run_bench,
)
from assistant.errors import UserError
from assistant.engine.base import GenerationConfig
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
    result = run_bench(engine, loaded.tokenizer, prompts, BenchConfig(max_new_tokens=32, warmup=1),
                       accuracy_model=loaded.model)
    assert result.mismatches == 0
    assert [r.k for r in result.rows] == [1, 2, 3, 4]
    assert result.rows[0].tokens_per_forward == 1.0 and result.rows[0].speedup == 1.0
    assert result.rows[0].step_cost == 1.0 and all(r.step_cost > 0 for r in result.rows)
    assert result.rows[-1].tokens_per_forward > 1.2
    assert len(result.head_accuracy) == 4 and result.head_accuracy[0] == 1.0  # head 1 made the continuation
    assert "| 4 |" in result.table()


def test_repeats_run_every_decoder_again_and_keep_its_fastest_run(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    calls = []
    generate = engine.generate

    def counted(prompt, config):
        calls.append(config.k)
        return generate(prompt, config)

    engine.generate = counted
    prompts = [body[:150], body[400:550]]
    result = run_bench(engine, loaded.tokenizer, prompts, BenchConfig(max_new_tokens=8, ks=(1, 2), warmup=0, repeats=3))
    assert calls == [1, 2] * 6  # interleaved rounds: every decoder, then every decoder again
    assert result.mismatches == 0 and [r.k for r in result.rows] == [1, 2]
    with pytest.raises(UserError, match="repeats"):
        BenchConfig(repeats=0)


def test_bench_json_rows_keep_their_format(trained_model):
    """A run's rows as JSON: the keys a bench file has always had, only measured optional
    ones, and from_dict reads them (and an older file's rows) back as they were."""
    loaded, body = trained_model
    result = run_bench(TorchEngine(loaded.model, loaded.tokenizer), loaded.tokenizer, [body[:150]],
                       BenchConfig(max_new_tokens=8, warmup=0), accuracy_model=loaded.model)
    rows = json.loads(json.dumps(result.to_json()))["rows"]
    assert list(rows[1]) == ["engine", "k", "tokens_per_forward", "implied_tokens_per_forward", "tokens_per_s",
                             "wall_ms", "decode_tokens_per_s", "speedup", "step_cost", "acceptance", "loop_overhead"]
    assert [BenchRow.from_dict(r) for r in rows] == result.rows
    shipped = json.loads((PROJECT / "models" / "default" / "card.json").read_text())["bench"]["rows"]
    assert "wall_ms" not in shipped[0] and "speedup_vs_baseline" in shipped[0]  # written before wall_ms existed
    assert [BenchRow.from_dict(r).to_dict() for r in shipped] == shipped
    with pytest.raises(ValueError, match="missing speedup; unknown speed"):
        BenchRow.from_dict({**{k: v for k, v in shipped[0].items() if k != "speedup"}, "speed": 1.0})


def test_bench_engines_refuses_an_unknown_drafter_before_loading(tmp_path):
    with pytest.raises(UserError, match="unknown drafter 'lookahead'; choose from heads, lookup"):
        bench_engines(tmp_path / "no-model-here", BenchEngines(drafters=("heads", "lookahead")))


def test_bench_engines_torch_with_drafters(trained_model, tmp_path):
    from models.checkpoint import save_model

    loaded, body = trained_model
    model_dir = save_model(tmp_path / "m", loaded.model, loaded.tokenizer)
    setup = bench_engines(model_dir, BenchEngines(engine="torch", drafters=("heads", "lookup")))
    assert list(setup.engines) == ["torch", "torch lookup"] and setup.baseline is None
    assert setup.engines["torch lookup"].plain_of == "torch"
    hits, scored = setup.scorer(loaded.tokenizer.encode(body[:100]), loaded.tokenizer.encode(body[100:120]))
    assert len(hits) == len(scored) == 4 and scored[0] > 0
    auto = bench_engines(model_dir)  # no GGUF export: the torch engine, under its own label
    assert list(auto.engines) == [auto.first.label] and auto.first.label.startswith("torch")


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
                         runs_by_engine={"llama q8_0": 60, "torch": 60, "llama f16": 60, "llama q4_k_m": 60},
                         exact_engines={"llama q8_0": False, "torch": True, "llama f16": False, "llama q4_k_m": True})
    report = dict(result.mismatch_report())
    assert report == {
        "llama q8_0: 2 of 60 speculative runs part from plain greedy decoding at a near-tie (fast mode: a k-token "
        "verify rounds differently from a 1-token step; exact mode makes them equal)": False,
        "ERROR: 1 of 60 speculative runs of torch differ from its plain greedy decoding (exact mode)": True,
        "llama f16: 0 of 60 speculative runs part from plain greedy decoding at a near-tie (fast mode: a k-token "
        "verify rounds differently from a 1-token step; exact mode makes them equal)": False,
        "llama q4_k_m: all 60 speculative runs equal plain greedy decoding (exact mode)": False,
    }


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    """The trained model with an f32 GGUF export: llama.cpp and llama-cpp-python read the same file."""
    from models.checkpoint import save_model
    from models.gguf_export import export_model

    loaded, body = trained_model
    model_dir = save_model(tmp_path_factory.mktemp("exported") / "m", loaded.model, loaded.tokenizer)
    export_model(model_dir, "f32")
    return model_dir, loaded, body


def test_llama_cpp_python_peers_side_by_side(exported):
    from assistant.bench import PEER_LOOKUP, PEER_PLAIN, llama_cpp_peers
    from assistant.engine.llama_engine import LlamaEngine, LlamaSettings
    from tests.near_ties import GreedyAgreement, model_logits

    model_dir, loaded, body = exported
    ours = LlamaEngine(model_dir, LlamaSettings(threads=1))
    peers = llama_cpp_peers(ours.files[0], ours.max_seq_len, threads=1)
    # The peer decodes greedily from the ids it is given: the torch model's argmax, but at
    # near-ties (its f16 KV cache rounds; tests/near_ties.py).
    agreement = GreedyAgreement(model_logits(loaded.model), tolerance=0.05)
    prompts = [body[i : i + 150] for i in (0, 333, 777)]
    for text in prompts:
        prompt = loaded.tokenizer.encode(text)
        for peer in peers.values():
            result = peer.generate(prompt, GenerationConfig(max_new_tokens=24))
            assert len(result.tokens) == result.stats.new_tokens == 24 and result.stats.forward_passes >= 1
            agreement.check(prompt, result.tokens, (peer.label, text))
    agreement.assert_few_skipped(0.1)

    result = run_bench({"llama f32": ours, **peers}, loaded.tokenizer, prompts, BenchConfig(max_new_tokens=24, warmup=1),
                       baseline=PEER_PLAIN)
    rows = {(r.engine, r.k): r for r in result.rows}
    assert set(rows) == {("llama f32", k) for k in (1, 2, 3, 4)} | {(PEER_PLAIN, 1), (PEER_LOOKUP, 1)}
    assert rows[(PEER_PLAIN, 1)].speedup_vs_baseline == 1.0
    assert rows[(PEER_PLAIN, 1)].tokens_per_forward == 1.0
    assert rows[(PEER_LOOKUP, 1)].tokens_per_forward > 1.1  # repetitive code: some lookup drafts are accepted
    assert all(rows[key].speedup_vs_baseline > 0 for key in rows)
    assert rows[(PEER_PLAIN, 1)].loop_overhead is None  # not measured for the peers
    table = result.table()
    assert "speedup vs llama-cpp-python k=1" in table and "| llama-cpp-python prompt lookup | 1 |" in table


def test_cli_bench_with_peers_in_fast_and_exact_mode(exported, tmp_path):
    model_dir, _, body = exported
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text(body[:2000])
    env = {**os.environ, "MTP_ASSISTANT_HOME": str(tmp_path / "home")}  # where the auto drafter's probe is kept
    for exact in ([], ["--exact", "--drafter", "heads,lookup,heads+lookup,both,auto", "--draft-len", "12"]):
        out = tmp_path / "bench.json"
        proc = subprocess.run(
            [sys.executable, "-m", "assistant.cli", "bench", "--model", str(model_dir), "--engine", "llama", "--peers",
             "--prompts", str(tmp_path / "code"), "--limit", "3", "--max-new", "12", "--threads", "1",
             "--out", str(out), *exact],
            capture_output=True, text=True, cwd=PROJECT, timeout=300, env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert "| llama-cpp-python | 1 |" in proc.stdout and "| llama f32 | 4 |" in proc.stdout
        report = json.loads(out.read_text())
        assert report["exact_engines"]["llama f32"] == bool(exact)
        if exact:
            assert report["mismatches"] == 0  # every drafter's output is plain decoding's
            assert report["meta"]["draft_len"] == 12
            for drafter in ("lookup", "heads+lookup", "both", "auto"):
                assert f"| llama f32 {drafter} | 1 |" in proc.stdout
                assert report["runs_by_engine"][f"llama f32 {drafter}"] == 3
            assert list((tmp_path / "home" / "probes").glob("probe-*.json"))
        else:  # fast mode counts the runs that part at near-ties, and says so
            assert f"{report['mismatches_by_engine'].get('llama f32', 0)} of " in proc.stdout


def test_llama_heads_score_head_accuracy_as_the_torch_model_does(exported):
    """engine_scorer (the GGUF's own heads, no torch weights) against torch_scorer on an f32
    export: the same predictions but where llama.cpp's rounding flips a near-tie."""
    from assistant.bench import engine_scorer, torch_scorer
    from assistant.engine.llama_engine import LlamaEngine, LlamaSettings

    model_dir, loaded, body = exported
    engine = LlamaEngine(model_dir, LlamaSettings(threads=1, exact=True))
    predictions = engine.head_predictions(loaded.tokenizer.encode(body[:200]))
    assert len(predictions) == 4 and all(len(p) == 200 for p in predictions)
    by_llama, by_torch = engine_scorer(engine), torch_scorer(loaded.model)
    for start in (0, 400, 900):
        prompt = loaded.tokenizer.encode(body[start : start + 120])
        continuation = loaded.tokenizer.encode(body[start + 120 : start + 160])
        (llama_hits, llama_scored), (torch_hits, torch_scored) = by_llama(prompt, continuation), by_torch(prompt, continuation)
        assert llama_scored == torch_scored == [40, 40, 40, 40]
        assert all(abs(a - b) <= 2 for a, b in zip(llama_hits, torch_hits)), (llama_hits, torch_hits)
    # The engine serves on afterwards, from a fresh cache.
    assert engine.generate(loaded.tokenizer.encode(body[:50]), GenerationConfig(max_new_tokens=8, k=4)).tokens
