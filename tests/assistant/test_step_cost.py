"""bench-cost: the step-cost table of a random model it builds (and reuses), the perfect-heads
ceiling (every draft accepted: tokens per forward is k exactly), a copy with perfect heads of a
model given by path, the JSON report, and the errors for bad settings. Tiny sizes only."""

import json

import pytest
from safetensors import safe_open

from assistant.cli import main
from assistant.engine.base import GenerationConfig
from assistant.engine.llama_engine import LlamaEngine
from assistant.errors import UserError
from assistant.step_cost import StepCostReport, StepCostSettings, format_report, run_step_cost
from models.checkpoint import save_model
from models.gguf_export import export_model
from models.tokenizer import ByteTokenizer
from tests.assistant.engine.helpers import random_model

FAST = dict(prefix=32, rows=(1, 2, 4), repeats=2, new_tokens=12, ceiling_repeats=1, threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    return work, run_step_cost(StepCostSettings(random=("tiny",), work=work, **FAST))


def test_the_table_has_the_rows_asked_for_and_the_ceilings_k(tiny):
    _, report = tiny
    (model,) = report.models
    assert (model.label, model.quant, model.built) == ("random tiny", "q8_0", True)
    assert report.rows == [1, 2, 4]
    assert [c.rows for c in model.costs] == [1, 2, 3, 4]  # 3: the ceiling's k = 3 needs cost(3)
    assert all(c.ms > 0 and len(c.times_ms) == 2 for c in model.costs)
    assert model.costs[0].relative == 1.0
    assert [c.rows for c in model.head_costs] == [2, 3, 4] and all(c.ms > 0 for c in model.head_costs)
    assert 0 < model.main_params < model.params
    table = format_report(report)
    assert "R=1" in table and "R=4" in table and "random tiny" in table and "peak resident memory" in table


def test_perfect_heads_commit_k_tokens_every_forward(tiny):
    _, report = tiny
    ceiling = report.models[0].ceiling
    assert [c.k for c in ceiling] == [1, 2, 3, 4]
    for c in ceiling:
        assert c.tokens == 12 and c.forwards == 12 // c.k  # every draft accepted
        assert c.tokens_per_forward == c.k
        assert c.tokens_per_s > 0 and c.predicted > 0 and c.ratio == pytest.approx(c.speedup / c.predicted)
    assert ceiling[0].speedup == 1.0 and ceiling[0].predicted == 1.0


def test_a_built_model_is_reused_and_gets_the_exports_it_lacks(tiny):
    work, report = tiny
    weights = next(work.glob("random-tiny-*/model.safetensors"))
    before = weights.stat().st_mtime_ns
    again = run_step_cost(StepCostSettings(random=("tiny",), quants=("q8_0", "f16"), work=work, ceiling=False, **FAST))
    assert [(m.quant, m.built, m.path) for m in again.models] == [(q, False, report.models[0].path) for q in ("q8_0", "f16")]
    assert (weights.parent / "gguf" / "f16" / "main.gguf").is_file()  # a quantization asked for later: added
    assert again.models[0].ceiling == []
    assert weights.stat().st_mtime_ns == before
    assert [p.name for p in work.iterdir()] == [weights.parent.name]  # no temporary left behind


def test_the_json_report_round_trips(tiny):
    _, report = tiny
    assert StepCostReport.from_json(json.loads(json.dumps(report.to_json()))) == report


def test_a_model_given_by_path_is_timed_as_it_is_and_its_ceiling_runs_on_a_perfect_copy(tmp_path, capsys):
    source = tmp_path / "model"
    save_model(source, random_model(dim=64, seed=3), ByteTokenizer())
    export_model(source, "q8_0")
    files = sorted(p.relative_to(source) for p in source.rglob("*"))
    plain = LlamaEngine.from_dir(source, quant="q8_0", threads=1)
    try:  # random heads: most drafts rejected, so the copy is what makes them agree
        stats = plain.generate(list(range(40)), GenerationConfig(max_new_tokens=13, k=4, stop_token_ids=())).stats
        assert (stats.new_tokens - 1) / (stats.forward_passes - 1) < 4
    finally:
        plain.close()
    work = tmp_path / "work"
    args = ["bench-cost", "--model", str(source), "--work", str(work), "--prefix", "32", "--rows", "1,2", "--repeats", "1",
            "--new", "12", "--ceiling-repeats", "1", "--threads", "1", "--json", "--out", str(tmp_path / "report.json")]
    assert main(args) == 0
    report = StepCostReport.from_json(json.loads(capsys.readouterr().out))
    assert StepCostReport.from_json(json.loads((tmp_path / "report.json").read_text())) == report
    (model,) = report.models
    assert model.path == str(source) and not model.built
    assert [c.tokens_per_forward for c in model.ceiling] == [1, 2, 3, 4]
    with safe_open(f"{model.ceiling_path}/model.safetensors", framework="pt") as f:
        assert not f.get_tensor("output.weight").any()
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == files  # the source is only read


@pytest.mark.parametrize("option,value,message", [
    ("--random", "huge", "unknown random model size 'huge'; choose from tiny, 150m, 1b"),
    ("--rows", "1,x", "--rows must be comma-separated integers, got '1,x'"),
    ("--quant", "q3", "unknown quantization 'q3'"),
    ("--prefix", "0", "prefix must be >= 1"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, option, value, message):
    assert main(["bench-cost", "--work", str(tmp_path), option, value]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was built


def test_a_model_without_the_export_asked_for_is_refused_before_its_copy_is_built(tmp_path):
    source = tmp_path / "model"
    save_model(source, random_model(dim=64), ByteTokenizer())
    export_model(source, "q8_0")
    with pytest.raises(UserError, match="no f16 export in .*models export .* --quant f16"):
        run_step_cost(StepCostSettings(models=(str(source),), quants=("q8_0", "f16"), work=tmp_path / "work", **FAST))
    assert not (tmp_path / "work").exists()


def test_a_prefix_past_the_context_is_refused(tiny):
    work, _ = tiny
    with pytest.raises(UserError, match="context is 512"):
        run_step_cost(StepCostSettings(random=("tiny",), work=work, **{**FAST, "prefix": 500}))
