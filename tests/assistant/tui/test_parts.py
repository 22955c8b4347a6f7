"""The UI-free parts: run bookkeeping, metrics tailing, subprocess jobs, model listing."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assistant.store import ModelStore
from assistant.training.config import TrainConfig
from assistant.tui import runs
from assistant.tui.jobs import run_command
from assistant.tui.models_info import list_models, scores
from tests.assistant.engine.helpers import random_model

from .conftest import save_tiny


def test_metrics_tail_reads_only_complete_new_lines_and_notices_a_rewrite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = runs.MetricsTail(path)
    assert tail.read_new() == ([], False)  # no file yet
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2')  # the trainer is mid-write
    assert tail.read_new() == ([{"step": 1}], False)
    with open(path, "a") as f:
        f.write("}\n")
    assert tail.read_new() == ([{"step": 2}], False)
    assert tail.read_new() == ([], False)
    path.write_text(json.dumps({"step": 1}) + "\n")  # a resumed run dropped records past its checkpoint
    assert tail.read_new() == ([{"step": 1}], True)


def test_summarize_gives_progress_speed_and_eta():
    records = [
        {"step": s, "split": "train", "loss": 10.0 / s, "tokens_per_s": 500.0, "time": 100.0 + 2 * s}
        for s in range(1, 11)
    ]
    records.append({"step": 10, "split": "val", "loss": 1.5, "accuracy_per_head": [0.5, 0.25]})
    p = runs.summarize(records, steps=30)
    assert (p.step, p.steps, p.loss, p.val_loss, p.val_accuracy) == (10, 30, 1.0, 1.5, [0.5, 0.25])
    assert p.tokens_per_s == 500.0 and p.eta_s == 40.0  # 2 s per step, 20 steps left
    assert p.val_agreement is None


def test_summarize_reads_a_distillation_runs_agreement():
    # A heads-distill run's val record has agreement (heads 2..n) where others have accuracy.
    records = [{"step": 1, "split": "train", "loss": 3.0, "time": 1.0},
               {"step": 1, "split": "val", "loss": 2.5, "loss_per_head": [1.0, 1.5], "agreement_per_head": [0.6, 0.4]}]
    p = runs.summarize(records, steps=10)
    assert (p.val_loss, p.val_accuracy, p.val_agreement) == (2.5, None, [0.6, 0.4])


def resumed_records(restart: float) -> list[dict]:
    """Steps 1..80 at 2 s a step; stopped for hours; resumed at `restart`, 81..90 at 0.5 s."""
    first = [{"step": s, "split": "train", "loss": 1.0, "time": 2.0 * s} for s in range(1, 81)]
    again = [{"step": s, "split": "train", "loss": 1.0, "time": restart + 30 + 0.5 * (s - 80)} for s in range(81, 91)]
    return first + again


def test_eta_after_a_resume_is_the_pace_since_the_restart():
    restart = 20_000.0
    records = resumed_records(restart)
    p = runs.summarize(records, steps=100, since=restart)
    assert p.eta_s == 5.0  # 0.5 s per step, 10 steps left
    # Without the restart time, the window over the stop gives hours: the bug this avoids.
    assert runs.summarize(records, steps=100).eta_s > 3600
    # Right after the restart there is no pace yet: no guess from before it.
    assert runs.summarize(records[:81], steps=100, since=restart).eta_s is None
    assert runs.seconds_per_step(records, since=restart, window=3) == 0.5


def test_a_run_records_when_its_current_process_started(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert runs.recorded_start(run_dir) is None
    (run_dir / runs.PROCESS_FILE).write_text(json.dumps({"pid": 1, "command": [], "started": 1234.5}))
    assert runs.describe_run(run_dir).started == 1234.5


def test_run_states_follow_the_process_and_the_files(tmp_path):
    run_dir = tmp_path / "run"
    # Stop is a SIGINT, which a process started from a background shell would ignore; our CLI
    # restores its handler (assistant.cli.main), so this stand-in does the same.
    stand_in = "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); time.sleep(30)"
    proc = runs._spawn([sys.executable, "-c", stand_in, str(run_dir)], run_dir)
    try:
        assert runs.run_state(run_dir) == runs.RUNNING
        assert runs.stop_run(run_dir)
        proc.wait(timeout=10)
        # Exited but not yet reaped would be a zombie: not running either way.
        assert runs.run_state(run_dir) == runs.FAILED and not runs.stop_run(run_dir)
        (run_dir / "checkpoint").mkdir()
        assert runs.run_state(run_dir) == runs.STOPPED
        (run_dir / "model").mkdir()
        assert runs.run_state(run_dir) == runs.FINISHED
    finally:
        proc.kill()
        proc.wait()
    # A recorded pid that now belongs to another program does not count as the run.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run_dir / runs.PROCESS_FILE).write_text(json.dumps({"pid": other.pid}))
        assert not runs.is_running(run_dir) and runs.pid_alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_train_config_validation_and_the_started_command(home, tmp_path):
    with pytest.raises(ValueError, match="steps=0: must be positive"):
        runs.train_config(tmp_path / "out", repo=".", steps=0)
    with pytest.raises(ValueError, match="needs a base model"):
        runs.train_config(tmp_path / "out", repo=".", steps=10, finetune="heads")
    config = runs.train_config(tmp_path / "out", repo=str(tmp_path), base_model="/m", finetune="heads", steps=50)
    assert config.base_model == "/m" and config.finetune == "heads"
    assert config.eval_every == 5 and config.checkpoint_every == 5 and config.warmup_steps == 5
    proc = runs.start_run(config)  # the trainer fails at once (no model /m): what it was started with counts
    proc.wait(timeout=120)
    command = json.loads((tmp_path / "out" / runs.PROCESS_FILE).read_text())["command"]
    assert command[:4] == [sys.executable, "-m", "assistant.cli", "train"] and "--quiet" in command
    # The settings travel as one TrainConfig file, not as flags built one by one.
    assert command[4:6] == ["--config", str(tmp_path / "out" / runs.START_CONFIG_FILE)] and len(command) == 7
    assert TrainConfig.from_dict(json.loads(Path(command[5]).read_text())) == config
    assert runs.describe_run(tmp_path / "out").steps == 50  # before the trainer wrote its train_config.json


def test_run_command_reports_output_and_cancels():
    lines = []
    cancel = threading.Event()
    script = "import time\nprint('step one', flush=True)\ntime.sleep(60)"

    def on_output(line):
        lines.append(line)
        cancel.set()

    started = time.monotonic()
    result = run_command([sys.executable, "-c", script], cancel, on_output, poll_s=0.05)
    assert result.returncode is None and lines == ["step one"] and time.monotonic() - started < 30
    result = run_command(
        [sys.executable, "-c", "import sys; sys.exit('mtp-assistant: error: no such thing')"], threading.Event()
    )
    assert result.returncode == 1 and result.error_line() == "mtp-assistant: error: no such thing"


def test_model_listing_reads_files_only(home, tmp_path):
    shipped = save_tiny(tmp_path / "shipped")
    store = ModelStore(home, shipped_dir=shipped)
    store.add(save_tiny(tmp_path / "a", provenance={"trained_by": "x", "val_loss_per_head": [1.0, 2.0], "repo": "/r"}))
    gguf = store.models_dir / "a" / "gguf"
    (gguf / "q4_k_m").mkdir(parents=True)
    (gguf / "q4_k_m" / "main.gguf").write_bytes(b"GGUF")
    (gguf / "q4_k_m" / "head-2.gguf").write_bytes(b"GGUF")
    (gguf / "old-f16.gguf").write_bytes(b"GGUF")
    (store.models_dir / "broken").mkdir()
    (store.models_dir / "broken" / "config.json").write_text("[]")
    infos = list_models(store)
    assert [(m.name, m.is_default, m.shipped) for m in infos] == [
        ("a", False, False),  # adding a model does not make it the default
        ("broken", False, False),
        ("shipped", True, True),
    ]
    a = infos[0]
    assert a.quantizations == ("old-f16", "q4_k_m") and len(a.gguf_files) == 3 and a.n_future == 4
    assert a.parameters == sum(p.numel() for p in random_model().parameters())
    assert scores(a.provenance) == {"val_loss_per_head": [1.0, 2.0]}
    assert infos[1].error and "JSON object" in infos[1].error


def test_acceptance_is_shown_for_the_draft_positions_that_were_drafted():
    """A lookup drafter allowed 8 tokens that drafted 3 (the completion ended): three
    positions, each 1 of 1, not five rates of 0 for positions nothing was drafted at."""
    from assistant.tui.screens.playground import acceptance_per_position
    from tests.assistant.engine.test_drafters import PERIODIC, StubModel, run

    out = run(StubModel(agree=False), 1, PERIODIC, max_new=4, drafter="lookup", draft_len=8)
    assert out.stats.draft_proposed == [1, 1, 1, 0, 0, 0, 0, 0]  # what the stats hold
    assert acceptance_per_position(out.stats) == "1/1 1/1 1/1 (lookup drafted 3 of 3)"
    # Heads whose drafts are all wrong: every position proposed, none accepted past the first miss.
    out = run(StubModel(agree=False), 4, [0, 1, 2], max_new=10, drafter="heads")
    # (9 forwards after the prefill; the last two have room for 2 and 1 drafts.)
    assert acceptance_per_position(out.stats) == "0/9 0/8 0/7"
    assert acceptance_per_position(run(StubModel(agree=True), 1, [0], max_new=3, drafter="heads").stats) == "none drafted"


def test_tune_command_has_an_option_for_each_setting_changed():
    from assistant.training.tune import TuneConfig

    config = TuneConfig(repo="/r", base="/m", steps=12, batch_size=4, seq_len=64, lr=3e-3, next_line_cases=4,
                        speed_prompts=2, device="cpu")
    command = runs.tune_command(config)
    assert command[3:] == ["tune", "/r", "--base", "/m", "--steps", "12", "--lr", "0.003", "--batch-size", "4",
                           "--seq-len", "64", "--next-line-cases", "4", "--speed-prompts", "2", "--device", "cpu",
                           "--json", "--quiet"]
    assert runs.tune_command(TuneConfig(repo="/r"))[3:] == ["tune", "/r", "--json", "--quiet"]  # tune's own recipe
    with pytest.raises(ValueError, match="patience=5 has no `mtp-assistant tune` option"):
        runs.tune_command(TuneConfig(patience=5))
