"""The `mtp-assistant` command, run as a user would: a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.training.metrics import read_metrics

PROJECT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--dim", "32", "--n-layers", "4", "--n-heads", "4", "--n-future", "4", "--seq-len", "64",
             "--batch-size", "4", "--lr", "3e-3", "--warmup", "2", "--quiet", "--device", "cpu"]


def cli(*args, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "assistant.cli", *map(str, args)],
        capture_output=True, text=True, cwd=PROJECT, env=env, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def home(tmp_path):
    return dict(os.environ, MTP_ASSISTANT_HOME=str(tmp_path / "home"))


def test_train_on_this_repository_resume_after_kill_and_eval(tmp_path, home):
    out = tmp_path / "run"
    args = ["train", PROJECT, "--out", out, *TINY_ARGS, "--steps", "40", "--checkpoint-every", "4", "--eval-every", "20"]
    proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", *map(str, args)], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoint" / "trainer_state.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # the hardest interruption: no cleanup at all
    proc.wait()
    assert not (out / "model").exists()

    cli("train", "--resume", out, "--quiet", env=home)
    records = read_metrics(out / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 41)), "resumed run must continue where it stopped, no gaps or repeats"
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [20, 40]
    for head in range(4):  # every head's validation loss falls
        assert val[1]["loss_per_head"][head] < val[0]["loss_per_head"][head]

    result = cli("eval", out / "model", "--repo", PROJECT, "--seq-len", "64", "--max-windows", "4", "--json", env=home)
    scores = json.loads(result.stdout)["heads"]
    assert len(scores["loss_per_head"]) == 4 and scores["tokens"] > 0
    table = cli("eval", out / "model", "--repo", PROJECT, "--seq-len", "64", "--max-windows", "4", env=home).stdout
    assert "t+4" in table


def test_models_commands(tmp_path, home):
    out = tmp_path / "run"
    cli("train", PROJECT / "models", "--out", out, *TINY_ARGS, "--steps", "1", env=home)
    # A fresh install lists the shipped model, which serves as the default.
    assert "* shipped" in cli("models", "list", env=home).stdout
    # Adding a model does not make it the default; asking does, and `shipped` goes back.
    added = cli("models", "add", out / "model", "--name", "mine", env=home).stdout
    assert "added mine" in added and "(default)" not in added
    listing = cli("models", "list", env=home).stdout
    assert "  mine" in listing and "4 heads" in listing and "* shipped" in listing
    shown = json.loads(cli("models", "show", "mine", "--json", env=home).stdout)
    assert shown["model"]["n_future_tokens"] == 4
    assert shown["provenance"]["trained_by"] == "mtp-assistant train"
    readable = cli("models", "show", "shipped", env=home).stdout
    assert "4 heads" in readable and "held-out top-1 per head" in readable and "HumanEval" in readable
    cli("models", "add", out / "model", "--name", "second", env=home)
    cli("models", "default", "second", env=home)
    assert "* second" in cli("models", "list", env=home).stdout
    cli("models", "default", "shipped", env=home)
    assert "* shipped" in cli("models", "list", env=home).stdout
    cli("models", "remove", "second", env=home)
    assert "second" not in cli("models", "list", env=home).stdout
    failed = cli("models", "remove", "second", env=home, check=False)
    assert failed.returncode == 1 and "no model named 'second'" in failed.stderr
    failed = cli("models", "remove", "shipped", env=home, check=False)
    assert failed.returncode == 1 and "cannot be removed" in failed.stderr
    failed = cli("models", "add", out / "model", "--name", "shipped", env=home, check=False)
    assert failed.returncode == 1 and "reserved" in failed.stderr


def test_commands_start_without_importing_torch():
    """torch takes seconds to import: --help, --version and the model list must not wait for it."""
    code = (
        "import sys; from assistant.cli import build_parser; from assistant.cli.models import cmd_models_list; "
        "build_parser(); cmd_models_list(None); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT, capture_output=True, timeout=60)
    assert cli("--version").stdout.startswith("mtp-assistant ")


def test_doctor_runs_the_server_the_editor_would(tmp_path, home):
    """doctor starts the installation's own server over stdio and completes at a cursor."""
    from models.checkpoint import save_model
    from models.tokenizer import ByteTokenizer
    from tests.assistant.engine.helpers import random_model

    model = save_model(tmp_path / "tiny", random_model(seed=2), ByteTokenizer())
    report = cli("doctor", "--model", model, "--editor", "helix", env=home | {"OMP_NUM_THREADS": "1"}).stdout
    lines = report.splitlines()
    assert lines[0].startswith("ok  command: /") and lines[0].endswith("mtp-assistant")
    command = lines[0].removeprefix("ok  command: ")
    assert f"ok  model: {model}" in lines
    assert "ok  engine: torch, 1 thread a step, 1 for prompts and drafts" in lines  # OMP_NUM_THREADS=1
    assert any(line.startswith("ok  completion round trip: ") for line in lines)
    assert f'command = "{command}"' in report  # the snippet names the real executable
    failed = cli("doctor", "--model", tmp_path / "nothing", env=home, check=False)
    assert failed.returncode == 1 and "neither a model directory" in failed.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "/no/such/path", "--out", "{tmp}/o"], "does not exist"),
        (["eval", "{tmp}", "--repo", "."], "config.json: missing"),
        (["train", "--resume", "{tmp}/nothing"], "nothing to resume"),
        (["train", "--resume", "{tmp}", "--steps", "3"], "give no others"),
        (["train", "--config", "{tmp}/run.json"], "run.json: no such file"),
        (["models", "show", "nonexistent"], "neither a model directory nor a model"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, home, args, message):
    proc = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], env=home, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
