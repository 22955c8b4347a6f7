import json
import math

import pytest
import torch

from assistant.training.metrics import read_metrics
from assistant.training.trainer import TrainConfig, TrainError, learning_rate, train
from models.checkpoint import load_model

TINY = {"dim": 32, "n_layers": 4, "n_heads": 4, "n_future_tokens": 4, "max_seq_len": 128}


def config(repo, out, **changes) -> TrainConfig:
    settings = dict(
        repo=str(repo), out_dir=str(out), model_overrides=TINY, steps=6, batch_size=4, seq_len=48,
        lr=3e-3, warmup_steps=2, checkpoint_every=3, eval_every=3, eval_windows=4, seed=0, device="cpu",
    )
    return TrainConfig(**(settings | changes))


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in records]


def test_schedule_warms_up_then_decays_to_min():
    c = TrainConfig(repo=".", out_dir="x", steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, c) == pytest.approx(0.1)
    assert learning_rate(9, c) == pytest.approx(1.0)
    assert learning_rate(100, c) == pytest.approx(0.1)
    assert all(learning_rate(s, c) >= learning_rate(s + 1, c) for s in range(10, 100))


def test_training_lowers_validation_loss_of_every_head(code_repo, tmp_path):
    final = train(config(code_repo, tmp_path / "run", steps=40, eval_every=40), show_progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 1 and len(records) == 41
    uniform = math.log(261)  # an untrained model is near uniform over the byte vocabulary
    assert all(loss < uniform - 1.5 for loss in val[0]["loss_per_head"]), val[0]
    assert val[0]["accuracy_per_head"][0] > 0.05  # chance is 1/261
    loaded = load_model(final)
    assert loaded.config.n_future_tokens == 4
    assert loaded.provenance["corpus"]["train"]["files"] >= 1
    assert not (final / "trainer_state.pt").exists()


@pytest.mark.parametrize("data_workers", [0, 2])  # 2: windows made by worker processes, a step ahead
def test_resume_matches_an_uninterrupted_run(code_repo, tmp_path, data_workers):
    reference = train(config(code_repo, tmp_path / "a"), show_progress=False)

    class Crash(Exception):
        pass

    def crash_at_5(step, record):
        if step == 5:  # after the step-3 checkpoint, before the step-6 one
            raise Crash

    with pytest.raises(Crash):
        train(config(code_repo, tmp_path / "b", data_workers=data_workers), on_step=crash_at_5, show_progress=False)
    assert not (tmp_path / "b" / "model").exists()
    resumed = train(resume_dir=tmp_path / "b", show_progress=False)

    a, b = load_model(reference).model.state_dict(), load_model(resumed).model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert comparable(read_metrics(tmp_path / "a" / "metrics.jsonl")) == comparable(
        read_metrics(tmp_path / "b" / "metrics.jsonl")
    )


def test_stop_after_ends_a_run_at_that_step_of_the_longer_schedule(code_repo, tmp_path):
    """A run cut short keeps the longer run's schedule: its weights are that run's at the step."""

    class Halt(Exception):
        pass

    def halt_after_4(step, record):
        if step == 4:
            raise Halt

    full = config(code_repo, tmp_path / "full", steps=8, checkpoint_every=4)
    with pytest.raises(Halt):  # the step-4 checkpoint of an 8-step schedule
        train(full, on_step=halt_after_4, show_progress=False)
    short = train(config(code_repo, tmp_path / "short", steps=8, stop_after=4, checkpoint_every=4), show_progress=False)

    a = load_model(tmp_path / "full" / "checkpoint").model.state_dict()
    b = load_model(short).model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    records = read_metrics(tmp_path / "short" / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert records[-1]["split"] == "val" and records[-1]["step"] == 4  # the end of a run is evaluated
    with pytest.raises(TrainError, match="stop_after"):
        config(code_repo, tmp_path / "bad", steps=8, stop_after=9)


def test_finetune_heads_only_leaves_the_trunk_alone(code_repo, tmp_path):
    base = train(config(code_repo, tmp_path / "base", steps=3), show_progress=False)
    tuned = train(
        config(code_repo, tmp_path / "tuned", steps=3, model_overrides={}, base_model=str(base), finetune="heads"),
        show_progress=False,
    )
    before, after = load_model(base).model, load_model(tuned).model
    b, a = before.state_dict(), after.state_dict()
    heads = {f"layers.{len(before.layers) - 1}.", "extra_heads."}
    for name in b:
        changed = not torch.equal(b[name], a[name])
        assert changed == any(name.startswith(h) for h in heads), name


def test_bpe_run_trains_and_saves_its_tokenizer(code_repo, tmp_path):
    final = train(config(code_repo, tmp_path / "run", steps=2, tokenizer="bpe", bpe_vocab_size=300), show_progress=False)
    assert (final / "tokenizer.json").is_file()
    assert load_model(final).tokenizer.vocab_size == 300


@pytest.mark.parametrize(
    "make_repo, changes, message",
    [
        (lambda p: p / "missing", {}, "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", {}, "no code"),
        (lambda p: p / "repo", {"seq_len": 500}, "exceeds the model's max_seq_len"),
        (lambda p: p / "repo", {"model_overrides": {"dim": 30, "n_heads": 4}}, "model settings"),
        (lambda p: p / "repo", {"head_weights": (1.0, 0.5)}, "2 head weights given for a model with 4 heads"),
    ],
)
def test_bad_input_is_one_clear_error_and_leaves_nothing(code_repo, tmp_path, make_repo, changes, message):
    repo = make_repo(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(TrainError, match=message):
        train(config(repo, out, **changes), show_progress=False)
    assert not out.exists()


def test_invalid_settings_and_existing_run(code_repo, tmp_path):
    with pytest.raises(TrainError, match="grad_accum"):
        config(code_repo, tmp_path / "x", grad_accum=3)
    with pytest.raises(TrainError, match="needs a base model"):
        config(code_repo, tmp_path / "x", finetune="heads")
    train(config(code_repo, tmp_path / "run", steps=1), show_progress=False)
    with pytest.raises(TrainError, match="already holds a run"):
        train(config(code_repo, tmp_path / "run", steps=1), show_progress=False)
    with pytest.raises(TrainError, match="nothing to resume"):
        train(resume_dir=tmp_path / "nothing", show_progress=False)


def test_train_config_json_round_trip(code_repo, tmp_path):
    c = config(code_repo, tmp_path, head_weights=(1.0, 0.5, 0.5, 0.5))
    assert TrainConfig.from_json(json.loads(json.dumps(c.to_json()))) == c


def test_configs_written_before_window_lanes_resume_with_one_lane(code_repo, tmp_path):
    saved = config(code_repo, tmp_path).to_json()
    del saved["window_lanes"]
    assert TrainConfig.from_json(saved).window_lanes == 1
    assert config(code_repo, tmp_path).window_lanes == 0  # new runs: one lane per row
