"""Training settings in one form: TrainConfig, the `train` options generated from it, `--config`."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.cli import build_parser
from assistant.training.config import MODEL_OVERRIDE_FLAGS, TrainConfig, TrainError, config_from_args, flag
from assistant.training.metrics import read_metrics

PROJECT = Path(__file__).resolve().parents[2]

# The defaults `mtp-assistant train` has always had (README and scripts rely on them).
DEFAULTS = {
    "preset": "tiny", "model_overrides": {}, "base_model": None, "finetune": "full", "tokenizer": "byte",
    "bpe_vocab_size": 4096, "steps": 1000, "stop_after": None, "batch_size": 8, "grad_accum": 1, "seq_len": 256,
    "lr": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 50, "weight_decay": 0.1, "betas": [0.9, 0.95],
    "grad_clip": 1.0, "head_weights": None, "fim_rate": 0.5, "spm_rate": 0.5, "val_fraction": 0.1,
    "file_weights": {}, "window_lanes": 0, "data_workers": 0, "checkpoint_every": 100, "eval_every": 100, "eval_windows": 16,
    "seed": 0, "device": "auto",
}

# One option per setting, each away from its default.
EVERY_OPTION = [
    "train", "/r", "--out", "/o", "--preset", "small", "--dim", "32", "--n-layers", "3", "--n-heads", "2",
    "--n-kv-heads", "1", "--n-future", "2", "--max-seq-len", "64", "--base", "/m", "--finetune", "heads",
    "--tokenizer", "bpe", "--vocab-size", "300", "--steps", "9", "--stop-after", "8", "--batch-size", "6",
    "--grad-accum", "2", "--seq-len", "32", "--lr", "0.02", "--min-lr-ratio", "0.2", "--warmup", "3",
    "--weight-decay", "0.01", "--betas", "0.8,0.9", "--grad-clip", "0.5", "--head-weights", "1,0.5",
    "--fim-rate", "0.25", "--spm-rate", "0.75", "--val-fraction", "0.2", "--window-lanes", "2",
    "--data-workers", "3", "--checkpoint-every", "4", "--eval-every", "5", "--eval-windows", "6",
    "--seed", "7", "--device", "cpu",
]


def parse(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def as_json(config: TrainConfig) -> dict:
    return json.loads(json.dumps(config.to_json()))


def test_the_defaults_are_the_ones_train_always_had():
    assert as_json(TrainConfig(repo=".", out_dir="o")) == {"repo": ".", "out_dir": "o", **DEFAULTS}
    assert parse("train") == TrainConfig(repo=".", out_dir=str(Path("runs") / Path.cwd().name))


def test_every_setting_has_an_option_and_round_trips_through_a_config_file(tmp_path):
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {option for action in train_parser._actions for option in action.option_strings}
    for field in dataclasses.fields(TrainConfig):
        if field.name == "model_overrides":
            assert {option for option, _ in MODEL_OVERRIDE_FLAGS.values()} <= options
        elif field.metadata.get("cli") is False:  # set by a program in a --config file (tune's file weights)
            assert flag(field) not in options, field.name
        elif field.name != "repo":  # the positional argument
            assert flag(field) in options, field.name

    config = parse(*EVERY_OPTION)
    unchanged = [f.name for f in dataclasses.fields(TrainConfig)
                 if as_json(config)[f.name] == DEFAULTS.get(f.name) and f.metadata.get("cli") is not False]
    assert unchanged == [], "every option must reach its setting"
    assert config.model_overrides == {"dim": 32, "n_layers": 3, "n_heads": 2, "n_kv_heads": 1,
                                      "n_future_tokens": 2, "max_seq_len": 64}
    assert (config.warmup_steps, config.bpe_vocab_size, config.base_model, config.out_dir) == (3, 300, "/m", "/o")
    assert config.head_weights == (1.0, 0.5) and config.betas == (0.8, 0.9)

    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.to_json()))
    assert parse("train", "--config", str(path)) == config


def test_options_given_override_the_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"repo": "/r", "steps": 7, "lr": 0.01, "model_overrides": {"dim": 32, "n_heads": 2}}))
    config = parse("train", "--config", str(path), "--steps", "9", "--n-heads", "4", "--out", "/o")
    assert (config.repo, config.out_dir, config.steps, config.lr) == ("/r", "/o", 9, 0.01)
    assert config.model_overrides == {"dim": 32, "n_heads": 4}  # one model option changes one model setting
    assert config.window_lanes == 0  # a new run: what the file leaves out takes today's defaults
    assert parse("train", "/other", "--config", str(path)).repo == "/other"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "unreadable"),
        ("[1, 2]", "must be a JSON object"),
        ('{"stepz": 3}', "unknown setting 'stepz'"),
        ('{"steps": "3"}', "invalid setting steps='3': expected an integer"),
        ('{"betas": [0.9]}', "expected a list of 2 numbers"),
        ('{"steps": 0}', "invalid setting steps=0: must be positive"),
    ],
)
def test_a_bad_config_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TrainError, match=message) as error:
        parse("train", "--config", str(path))
    if "invalid setting steps=0" not in message:  # a wrong value is the merged settings', not the file's
        assert str(error.value).startswith(f"{path}: ")


def test_a_run_written_by_this_code_with_the_older_format_resumes(code_repo, tmp_path):
    """The train_config.json a run writes keeps its keys and their meaning, and one written
    before window_lanes existed (consecutive windows) still resumes with `train --resume`."""
    from assistant.training.trainer import train

    out = tmp_path / "run"
    settings = dict(repo=str(code_repo), out_dir=str(out), window_lanes=1, steps=6, batch_size=2, seq_len=48,
                    lr=3e-3, warmup_steps=2, checkpoint_every=3, eval_every=3, eval_windows=2, device="cpu",
                    model_overrides={"dim": 32, "n_layers": 4, "n_heads": 4})

    class Crash(Exception):
        pass

    def crash_at_5(step, record):
        if step == 5:  # after the step-3 checkpoint
            raise Crash

    with pytest.raises(Crash):
        train(TrainConfig(**settings), on_step=crash_at_5, show_progress=False)
    written = json.loads((out / "train_config.json").read_text())
    assert written == DEFAULTS | settings
    del written["window_lanes"]
    (out / "train_config.json").write_text(json.dumps(written))

    proc = subprocess.run([sys.executable, "-m", "assistant.cli", "train", "--resume", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6] and (out / "model" / "config.json").is_file()
    # ...and continued the run it was: the losses of one without the interruption.
    train(TrainConfig(**settings | {"out_dir": str(tmp_path / "whole")}), show_progress=False)
    assert losses(tmp_path / "whole") == losses(out)


def losses(run_dir: Path) -> list:
    return [(r["split"], r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]
