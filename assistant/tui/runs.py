"""Training runs the UI starts as background processes, and how it finds them again.

A run lives in `<store home>/runs/<name>/`: the trainer's own layout (train_config.json,
metrics.jsonl, checkpoint/, model/; see assistant/training/trainer.py) plus three files the
UI writes: `start_config.json` (the TrainConfig the UI started it with, given to
`mtp-assistant train --config`), `process.json` (the pid of that process and its command)
and `train.log` (its stdout and stderr). The process runs in its own session, so closing
the UI leaves it running; the UI re-attaches by listing run directories and checking the
pid it recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.training.config import (
    CHECKPOINT_DIR,
    FINAL_MODEL_DIR,
    METRICS_FILE,
    START_CONFIG_FILE,
    TRAIN_CONFIG_FILE,
    TrainConfig,
    start_command,
)
from models.checkpoint import write_atomic

PROCESS_FILE = "process.json"
LOG_FILE = "train.log"

# Run states.
RUNNING = "running"
FINISHED = "finished"
STOPPED = "stopped"  # interrupted with a checkpoint: resumable
FAILED = "failed"  # ended without a checkpoint (see train.log)


def train_config(out_dir: Path, *, repo: str, steps: int, **form: Any) -> TrainConfig:
    """The run the Train screen starts in out_dir: its form's values (TrainConfig fields) over
    TrainConfig's defaults, and the screen's own choices for a short interactive run."""
    # Evaluate and checkpoint ~10 times per run so the plot has validation points and a stop
    # loses little; warm up over a tenth of a short run.
    every = max(1, steps // 10)
    choices = {"warmup_steps": min(50, steps // 10), "eval_every": every, "checkpoint_every": every}
    return TrainConfig(repo=str(Path(repo).resolve()), out_dir=str(out_dir), steps=steps, **(choices | form))


def new_run_dir(runs_dir: Path, repo: str) -> Path:
    stem = (Path(repo).resolve().name or "repo")[:10]
    stamp = time.strftime("%m%d-%H%M")  # short: the Train screen's run list is narrow
    path = runs_dir / f"{stem}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = runs_dir / f"{stem}-{stamp}-{n}"
    return path


def _spawn(command: list[str], run_dir: Path) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "ab") as log:
        # Its own session: closing the UI (or Ctrl+C in its terminal) does not stop it.
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ.copy(),
        )
    record = {"pid": proc.pid, "command": command, "started": time.time()}
    write_atomic(run_dir / PROCESS_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return proc


def start_run(config: TrainConfig) -> subprocess.Popen:
    """Start training `config` in the background, in its out_dir (a new directory: see new_run_dir)."""
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True)
    return _spawn(start_command(config), run_dir)


def resume_run(run_dir: Path) -> subprocess.Popen:
    if is_running(run_dir):
        raise ValueError(f"{run_dir.name} is already running")
    if not (run_dir / CHECKPOINT_DIR).is_dir() and not (run_dir / f"{CHECKPOINT_DIR}.old").is_dir():
        raise ValueError(f"{run_dir.name} has no checkpoint to resume from")
    command = [sys.executable, "-m", "assistant.cli", "train", "--resume", str(run_dir), "--quiet"]
    return _spawn(command, run_dir)


def recorded_start(run_dir: Path) -> float | None:
    """When the run's current process was started (a resume writes a new time)."""
    try:
        started = json.loads((run_dir / PROCESS_FILE).read_text())["started"]
        return float(started) if isinstance(started, (int, float)) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_pid(run_dir: Path) -> int | None:
    try:
        pid = json.loads((run_dir / PROCESS_FILE).read_text())["pid"]
        return pid if isinstance(pid, int) and pid > 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int, must_mention: str | None = None) -> bool:
    """Whether pid is a live (not zombie) process; with must_mention, whose command line
    contains that text (a recycled pid belongs to some other program)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return must_mention is None
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():  # Linux: tell zombies and recycled pids apart
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return False
            if must_mention is not None:
                return must_mention in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
    return True


def is_running(run_dir: Path) -> bool:
    pid = recorded_pid(run_dir)
    return pid is not None and pid_alive(pid, str(run_dir))


def stop_run(run_dir: Path) -> bool:
    """Interrupt the run (like Ctrl+C: it stops at once; resume repeats the steps since
    its last checkpoint, exactly). False when it was not running."""
    pid = recorded_pid(run_dir)
    if pid is None or not pid_alive(pid, str(run_dir)):
        return False
    os.kill(pid, signal.SIGINT)
    return True


@dataclass(frozen=True)
class RunInfo:
    path: Path
    state: str
    step: int
    steps: int
    repo: str
    started: float | None = None  # when its current process started (see recorded_start)

    @property
    def name(self) -> str:
        return self.path.name


def run_state(run_dir: Path) -> str:
    if is_running(run_dir):
        return RUNNING
    if (run_dir / FINAL_MODEL_DIR).is_dir():
        return FINISHED
    if (run_dir / CHECKPOINT_DIR).is_dir() or (run_dir / f"{CHECKPOINT_DIR}.old").is_dir():
        return STOPPED
    return FAILED


def last_step(run_dir: Path) -> int:
    """The step of the last complete record in metrics.jsonl (reads only its tail)."""
    path = run_dir / METRICS_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def describe_run(run_dir: Path) -> RunInfo:
    try:
        config = json.loads((run_dir / TRAIN_CONFIG_FILE).read_text())
        steps, repo = int(config["steps"]), str(config["repo"])
    except (OSError, ValueError, KeyError, TypeError):
        steps, repo = 0, "?"
        try:  # not started yet (or failed at once): the settings it was given say how long
            steps = int(json.loads((run_dir / START_CONFIG_FILE).read_text())["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return RunInfo(run_dir, run_state(run_dir), last_step(run_dir), steps, repo, recorded_start(run_dir))


def describe_settings(run_dir: Path) -> str | None:
    """The run's settings in a line, from the trainer's train_config.json (None before it
    is written): what a re-attached run was started with."""
    try:
        c = json.loads((run_dir / TRAIN_CONFIG_FILE).read_text())
        base = Path(c["base_model"]).name if c.get("base_model") else f"{c.get('preset', '?')} from scratch"
        what = f" ({c.get('finetune', 'full')})" if c.get("base_model") else ""
        return (
            f"{base}{what} on {Path(str(c['repo'])).name}: {c['steps']} steps, lr {c['lr']:g}, "
            f"seq {c['seq_len']}, batch {c['batch_size']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Runs the UI started, newest first."""
    if not runs_dir.is_dir():
        return []
    dirs = [p for p in runs_dir.iterdir() if p.is_dir() and (p / PROCESS_FILE).is_file()]
    return [describe_run(p) for p in sorted(dirs, key=lambda p: p.name, reverse=True)]


def log_tail(run_dir: Path, lines: int = 3) -> str:
    try:
        with open(run_dir / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class MetricsTail:
    """Reads the records appended to a metrics.jsonl since the last call.

    A partial last line (the trainer is mid-write) waits for the next call; a file that
    shrank (a resumed run dropped the records after its checkpoint) is read again.
    """

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._pending = b""

    def read_new(self) -> tuple[list[dict[str, Any]], bool]:
        """(new records, whether the file was rewritten and earlier records are void)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return [], False
        reset = size < self._offset
        if reset:
            self._offset, self._pending = 0, b""
        if size == self._offset:
            return [], reset
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        self._offset += len(data)
        data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()  # b"" when the data ended with a newline
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records, reset


@dataclass
class Progress:
    """What the Train screen shows beside the plot, computed from the records."""

    step: int = 0
    steps: int = 0
    loss: float | None = None
    val_loss: float | None = None
    val_accuracy: list[float] | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None


def seconds_per_step(train: list[dict[str, Any]], since: float | None = None, window: int = 20) -> float | None:
    """The recent pace: over the last `window` train records written since `since` (the
    current process's start), so that the time a run spent stopped, or before a resume,
    does not count. None until two such records exist."""
    recent = [r for r in train if isinstance(r.get("time"), (int, float))]
    if since is not None:
        recent = [r for r in recent if r["time"] >= since]
    recent = recent[-window:]
    if len(recent) < 2 or recent[-1]["step"] <= recent[0]["step"]:
        return None
    return (recent[-1]["time"] - recent[0]["time"]) / (recent[-1]["step"] - recent[0]["step"])


def summarize(records: list[dict[str, Any]], steps: int, window: int = 20, since: float | None = None) -> Progress:
    """since: when the run's current process started (RunInfo.started); the ETA is
    reckoned from the pace since then."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    p = Progress(steps=steps)
    if train:
        last = train[-1]
        p.step, p.loss = int(last.get("step", 0)), last.get("loss")
        recent = train[-window:]
        p.tokens_per_s = sum(r.get("tokens_per_s", 0.0) for r in recent) / len(recent)
        per_step = seconds_per_step(train, since, window)
        if per_step is not None:
            p.eta_s = max(0.0, per_step * (steps - p.step))
    if val:
        p.val_loss, p.val_accuracy = val[-1].get("loss"), val[-1].get("accuracy_per_head")
    return p
