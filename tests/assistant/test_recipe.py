import json
import shutil
from pathlib import Path

from assistant.training.recipe.card import CARD_EXAMPLES, render_card
from assistant.training.recipe.model_card import ModelCard
from assistant.training.recipe.ship import ship
from assistant.training.recipe.stages import STAGES, stage_config
from assistant.training.trainer import TrainConfig, train
from models.checkpoint import load_model


def test_card_examples_each_mark_one_cursor():
    assert len(CARD_EXAMPLES) == 10 and all(case.count("|") == 1 for case in CARD_EXAMPLES)


def test_every_stage_fixes_its_steps_and_seed_and_later_stages_start_from_the_previous():
    for index, stage in enumerate(STAGES):
        assert "steps" in stage.settings and "seed" in stage.settings and stage.threads >= 1
        config = stage_config(index, Path("DATA"), Path("RUNS"))
        assert config.out_dir == str(Path("RUNS") / f"stage-{index + 1}")
        if index > 0:
            assert config.base_model == str(Path("RUNS") / f"stage-{index}" / "model")
            assert "tokenizer" not in stage.settings  # the base model's tokenizer and shape carry over


def test_ship_copies_the_model_and_measures_its_card(tmp_path, code_repo):
    data = tmp_path / "data"
    (data / "heldout").mkdir(parents=True)
    (data / "heldout" / "held.py").write_text((code_repo / "pkg" / "config.py").read_text())
    (data / "sources.json").write_text(json.dumps({
        "train": [{"name": "pkg", "version": "0", "license": "MIT", "bytes": 1}],
        "heldout": [{"name": "held", "version": "0", "license": "MIT", "bytes": 1}],
    }))
    run = tmp_path / "run"
    config = TrainConfig(repo=str(code_repo), out_dir=str(run), tokenizer="bpe", bpe_vocab_size=300,
                         model_overrides={"dim": 32, "n_layers": 4, "n_heads": 2}, steps=3, batch_size=2,
                         seq_len=96, eval_every=1000, checkpoint_every=1000, device="cpu")
    train(config, show_progress=False)
    second = tmp_path / "run-2"  # a second stage starts from the first one's model
    train(TrainConfig(repo=str(code_repo), out_dir=str(second), base_model=str(run / "model"), steps=2,
                      batch_size=2, seq_len=96, eval_every=1000, checkpoint_every=1000, device="cpu"),
          show_progress=False)
    dest = tmp_path / "shipped"
    card = ship([run, second], data, dest, humaneval_limit=1, bench_limit=1, next_line_cases=3)

    shipped = load_model(dest)  # a loadable model, its context the one it trained at
    assert shipped.config.max_seq_len == 96
    assert (dest / "gguf" / "q8_0" / "main.gguf").is_file()  # the default engine's files, of these weights
    assert {row["engine"] for row in card.bench.rows} == {"llama q8_0", "torch"}
    assert card.training.steps == 5 and card.training.tokens_seen == 5 * 2 * 96
    assert [stage.steps for stage in card.training.stages] == [3, 2]
    assert card.next_line.cases == 3 and card.humaneval.problems == 1
    assert len(card.heldout_heads.accuracy_per_head) == 4 and len(card.examples) == 10
    text = (dest / "CARD.md").read_text()
    assert ModelCard.read(dest / "card.json") == card and text == render_card(card)
    assert "| heldout | held | 0 | MIT |" in text and "HumanEval pass@1" in text
    assert "| 1 | 3 | 0.0M |" in text and "| 2 | 2 | 0.0M |" in text


def test_train_stages_chains_the_stages_and_starts_after_the_last_finished_one(tmp_path, code_repo, monkeypatch):
    from assistant.training.recipe import stages as recipe

    tiny = dict(seq_len=48, batch_size=2, eval_every=1000, checkpoint_every=1000, device="cpu")
    monkeypatch.setattr(recipe, "STAGES", (
        recipe.Stage(threads=1, settings=dict(tokenizer="bpe", bpe_vocab_size=300, steps=2, **tiny,
                                              model_overrides=dict(dim=32, n_layers=4, n_heads=2))),
        recipe.Stage(threads=1, settings=dict(steps=1, **tiny)),
    ))
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    (data / "train").symlink_to(code_repo)

    final = recipe.train_stages(data, runs)
    assert final == runs / "stage-2" / "model" and (final / "model.safetensors").is_file()
    second = json.loads((runs / "stage-2" / "train_config.json").read_text())
    assert second["base_model"] == str(runs / "stage-1" / "model") and second["steps"] == 1

    # Another machine has only the shipped model of stage 2: nothing before it runs again.
    shutil.rmtree(runs / "stage-1")
    weights = (final / "model.safetensors").stat().st_mtime_ns
    assert recipe.train_stages(data, runs) == final
    assert not (runs / "stage-1").exists() and (final / "model.safetensors").stat().st_mtime_ns == weights


def test_a_time_boxed_stage_gets_the_steps_that_fit_and_records_them(tmp_path, code_repo, monkeypatch):
    from assistant.training.recipe import stages as recipe

    stage = recipe.Stage(threads=1, settings=dict(
        tokenizer="bpe", bpe_vocab_size=300, model_overrides=dict(dim=32, n_layers=4, n_heads=2, n_future_tokens=4),
        seq_len=48, batch_size=2, eval_every=1000, checkpoint_every=1000, device="cpu", data_workers=2, steps=1000,
    ))
    monkeypatch.setattr(recipe, "STAGES", (stage,))
    monkeypatch.setattr(recipe, "fitting_steps", lambda s, seconds: 3 if s is stage and seconds == 7 else 0)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train").symlink_to(code_repo)

    final = recipe.train_stages(data, tmp_path / "runs", seconds=7)
    config = json.loads((final.parent / "train_config.json").read_text())
    assert config["steps"] == 3 and config["data_workers"] == 2 and (final / "model.safetensors").is_file()


def test_fitting_steps_measures_the_stage_shape_on_its_device():
    from assistant.training.recipe import stages as recipe

    stage = recipe.Stage(threads=1, settings=dict(
        bpe_vocab_size=300, model_overrides=dict(dim=32, n_layers=4, n_heads=2, n_future_tokens=2),
        seq_len=32, batch_size=2, device="cpu", steps=1,
    ))
    few, many = recipe.fitting_steps(stage, 0.001), recipe.fitting_steps(stage, 1000.0)
    assert few == 1 and many > 100  # a step of this toy takes milliseconds


def test_a_gpu_stage_on_a_machine_without_one_says_so(tmp_path, monkeypatch):
    import pytest
    import torch

    from assistant.training.recipe import stages as recipe

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(recipe, "STAGES", (recipe.Stage(threads=1, device="cuda", settings=dict(steps=1)),))
    with pytest.raises(SystemExit, match="NVIDIA GPU"):
        recipe.train_stages(tmp_path / "data", tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
