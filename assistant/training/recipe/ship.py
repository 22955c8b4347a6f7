"""Shipping: copy the last stage's model into models/default and measure its card."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from assistant.training.config import METRICS_FILE, TRAIN_CONFIG_FILE
from assistant.training.metrics import read_records
from assistant.training.recipe.card import card_examples, render_card
from assistant.training.recipe.model_card import (
    CARD_FILE, SOURCES_FILE, Bench, HeldoutHeads, HumanEval, ModelCard, NextLine, NextLineExample, Sources,
    StageSummary, Training,
)
from assistant.training.recipe.stages import STAGES
from models import SHIPPED_MODEL_DIR
from models.config import ModelConfig

# The llama.cpp export shipped next to the safetensors (the engine every command picks).
SHIPPED_QUANT = "q8_0"


def _stage_summary(run_dir: Path) -> StageSummary:
    """What one training run did, from its train_config.json and metrics.jsonl."""
    import statistics

    train_config = json.loads((run_dir / TRAIN_CONFIG_FILE).read_text())
    records = read_records(run_dir / METRICS_FILE)
    train_records = [r for r in records if r.split == "train"]
    steps = train_records[-1].step
    return StageSummary(
        run=run_dir.name,
        base_model=train_config.get("base_model"),
        steps=steps,
        schedule_steps=train_config["steps"],  # more than steps: a run stopped early (--stop-after)
        tokens_seen=steps * train_config["batch_size"] * train_config["seq_len"],
        wall_hours=(train_records[-1].time - train_records[0].time) / 3600,
        median_tokens_per_s=statistics.median(r.tokens_per_s for r in train_records),
        lr=train_config["lr"],
        seed=train_config["seed"],
        window_lanes=train_config.get("window_lanes", 1),
        final_val=next((r.to_dict() for r in reversed(records) if r.split == "val"), None),
        threads=None,
        hardware=None,
    )


def _stage_summaries(stage_dirs: list[Path], dest: Path) -> list[StageSummary]:
    """Every stage's summary: from its run, or, for a stage trained on another machine (its run
    is gone), from the card shipped then."""
    shipped = ModelCard.read(dest / CARD_FILE).training.stages if (dest / CARD_FILE).is_file() else []
    stages = []
    for index, stage_run in enumerate(stage_dirs):
        if (stage_run / METRICS_FILE).is_file():
            stages.append(_stage_summary(stage_run))
        elif index < len(shipped):
            stages.append(shipped[index])
        else:
            raise FileNotFoundError(f"{stage_run}: no {METRICS_FILE}, and the shipped card does not describe stage {index + 1}")
    # Thread count and hardware are the recipe's, not in the run's files.
    if len(stages) != len(STAGES):
        return [dataclasses.replace(stage, threads=None, hardware=None) for stage in stages]
    return [dataclasses.replace(stage, threads=planned.threads, hardware=planned.hardware)
            for stage, planned in zip(stages, STAGES)]


def _copy_model(model_dir: Path, dest: Path, seq_len: int) -> ModelConfig:
    """Copy the weights, tokenizer and config into `dest` and export the llama.cpp files."""
    from models.gguf_export import export_model

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json"):
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, dest / name)
    config = json.loads((model_dir / "config.json").read_text())
    # RoPE tables are computed, not stored: the context the model was trained at is its context.
    config["model"]["max_seq_len"] = seq_len
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # The llama.cpp files of the previous weights no longer match: export the new ones.
    shutil.rmtree(dest / "gguf", ignore_errors=True)
    export_model(dest, SHIPPED_QUANT)
    return ModelConfig.from_dict(config["model"])


def ship(stage_dirs: list[Path], data_dir: Path, dest: Path = SHIPPED_MODEL_DIR, humaneval_limit: int | None = None,
         bench_limit: int = 40, next_line_cases: int = 200) -> ModelCard:
    """Copy the last stage's model into `dest` and measure everything its card reports."""
    import time

    from assistant.bench import BenchConfig, directory_prompts, run_bench
    from assistant.engine import load_engine
    from assistant.evals.humaneval import run_humaneval
    from assistant.evals.next_line import line_cases, run_next_line
    from assistant.training.evaluation import evaluate_on_repo

    run_dir = stage_dirs[-1]
    train_config = json.loads((run_dir / TRAIN_CONFIG_FILE).read_text())
    stages = _stage_summaries(stage_dirs, dest)
    sources = Sources.read(data_dir / SOURCES_FILE)
    model_config = _copy_model(run_dir / "model", dest, train_config["seq_len"])

    heldout = data_dir / "heldout"
    engine = load_engine(dest, "torch")
    started = time.time()
    heads = evaluate_on_repo(dest, heldout, "all", train_config["seq_len"], max_windows=256)
    lines = run_next_line(engine, line_cases(heldout, next_line_cases))
    humaneval = run_humaneval(engine, humaneval_limit)
    # Side by side on the same prompts: the default engine (llama.cpp) and the torch reference.
    engines = {f"llama {SHIPPED_QUANT}": load_engine(dest, "llama", quant=SHIPPED_QUANT, threads=1), "torch": engine}
    bench = run_bench(engines, engine.tokenizer, directory_prompts(heldout, bench_limit),
                      BenchConfig(max_new_tokens=64, max_prompt_tokens=256), accuracy_model=engine.model,
                      baseline="torch")
    card = ModelCard(
        sources=sources,
        model_config=model_config,
        train_config=train_config,
        training=Training(
            steps=sum(stage.steps for stage in stages),
            tokens_seen=sum(stage.tokens_seen for stage in stages),
            wall_hours=sum(stage.wall_hours for stage in stages),
            final_val=stages[-1].final_val,
            stages=stages,
        ),
        heldout_heads=HeldoutHeads(heads.tokens, heads.stats.loss.tolist(), heads.stats.accuracy.tolist()),
        next_line=NextLine(lines.total, lines.exact_match, [NextLineExample(**e) for e in lines.examples]),
        humaneval=HumanEval(len(humaneval.passed) + len(humaneval.failed), humaneval.pass_at_1, humaneval.passed),
        bench=Bench(**bench.to_json()),
        bench_table=bench.table(),
        examples=card_examples(engine),
        evaluation_minutes=(time.time() - started) / 60,
    )
    card.write(dest / CARD_FILE)
    (dest / "CARD.md").write_text(render_card(card))
    return card
