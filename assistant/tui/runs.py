"""Training runs the UI starts as background processes, and how it finds them again.

A run lives in `<store home>/runs/<name>/`: the trainer's own layout (train_config.json,
metrics.jsonl, checkpoint/, model/; see assistant/training/trainer.py) plus three files the
UI writes: `start_config.json` (the TrainConfig the UI started it with, given to
`mtp-assistant train --config`), `process.json` (the pid of that process and its command)
and `train.log` (its stdout and stderr). The process runs in its own session, so closing
the UI leaves it running; the UI re-attaches by listing run directories and checking the
pid it recorded.

A tune (`mtp-assistant tune REPO --json`) is a run too, of another kind: its run directory
holds `tune_job.json` (the repository, and where tune works: `<store home>/tune/NAME/`,
whose trainer layout is the one above until the tuned model moves into the store), plus
process.json and train.log; the report is the JSON line the command prints at its end.
Resuming one runs the same command again: tune goes on from its own checkpoint.
"""

from __future__ import annotations

import dataclasses
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
from assistant.training.tune import STATE_FILE, TuneConfig, TunePlan
from assistant.tui.jobs import cli_command
from models.checkpoint import write_atomic

PROCESS_FILE = "process.json"
LOG_FILE = "train.log"
TUNE_JOB_FILE = "tune_job.json"

# Run kinds.
TRAIN = "train"
TUNE = "tune"

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


def _spawn(command: list[str], run_dir: Path, mention: str | None = None) -> subprocess.Popen:
    """mention: text the process's command line contains, that tells it from a recycled
    pid (default: the run directory, which a train command names)."""
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
    record = {"pid": proc.pid, "command": command, "started": time.time(), "mention": mention or str(run_dir)}
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
    if is_tune(run_dir):
        return _resume_tune(run_dir)
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


def recorded_mention(run_dir: Path) -> str:
    """What the run's process's command line contains (see _spawn)."""
    try:
        mention = json.loads((run_dir / PROCESS_FILE).read_text()).get("mention")
    except (OSError, ValueError, AttributeError):
        mention = None
    return mention if isinstance(mention, str) and mention else str(run_dir)


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
    return pid is not None and pid_alive(pid, recorded_mention(run_dir))


def stop_run(run_dir: Path) -> bool:
    """Interrupt the run (like Ctrl+C: it stops at once; resume repeats the steps since
    its last checkpoint, exactly). False when it was not running."""
    if not is_running(run_dir):
        return False
    os.kill(recorded_pid(run_dir), signal.SIGINT)
    return True


@dataclass(frozen=True)
class RunInfo:
    path: Path
    state: str
    step: int
    steps: int
    repo: str
    started: float | None = None  # when its current process started (see recorded_start)
    kind: str = TRAIN

    @property
    def name(self) -> str:
        return self.path.name


def run_state(run_dir: Path) -> str:
    if is_running(run_dir):
        return RUNNING
    if is_tune(run_dir):
        return _tune_state(run_dir)
    if (run_dir / FINAL_MODEL_DIR).is_dir():
        return FINISHED
    if (run_dir / CHECKPOINT_DIR).is_dir() or (run_dir / f"{CHECKPOINT_DIR}.old").is_dir():
        return STOPPED
    return FAILED


def metrics_path(run_dir: Path) -> Path:
    """The run's metrics.jsonl: a tune's is where tune works, then in its tuned model."""
    if not is_tune(run_dir):
        return run_dir / METRICS_FILE
    job = read_tune_job(run_dir)
    working = Path(job["tune_dir"]) / METRICS_FILE
    if working.exists() or tune_report(run_dir) is None:
        return working
    return Path(job["model_dir"]) / METRICS_FILE


def last_step(run_dir: Path) -> int:
    """The step of the last complete record in metrics.jsonl (reads only its tail)."""
    path = metrics_path(run_dir)
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
    if is_tune(run_dir):
        return _describe_tune(run_dir)
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
    if is_tune(run_dir):
        return _describe_tune_settings(run_dir)
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
    val_accuracy: list[float] | None = None  # top-1 per head against the text
    val_agreement: list[float] | None = None  # a heads-distill run's instead: heads 2..n against the model's greedy
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
        last = val[-1]
        p.val_loss, p.val_accuracy, p.val_agreement = (
            last.get("loss"), last.get("accuracy_per_head"), last.get("agreement_per_head"))
    return p


# --- tunes ---

# TuneConfig fields and the `mtp-assistant tune` flags that set them.
TUNE_FLAGS = {
    "minutes": "--minutes", "base": "--base", "steps": "--steps", "name": "--name", "finetune": "--finetune",
    "lr": "--lr", "batch_size": "--batch-size", "seq_len": "--seq-len", "next_line_cases": "--next-line-cases",
    "speed_prompts": "--speed-prompts", "device": "--device",
}
REPORT_LOG_BYTES = 4 << 20  # the end of train.log searched for the report line


def is_tune(run_dir: Path) -> bool:
    return (run_dir / TUNE_JOB_FILE).is_file()


def tune_command(config: TuneConfig) -> list[str]:
    """`mtp-assistant tune` for config: a flag for each setting that is not tune's default;
    the report as a JSON line at the end, no progress bar."""
    defaults = TuneConfig()
    args = ["tune", str(config.repo)]
    for field in dataclasses.fields(TuneConfig):
        value = getattr(config, field.name)
        if field.name in ("repo", "show_progress") or value == getattr(defaults, field.name):
            continue
        if field.name not in TUNE_FLAGS:
            raise ValueError(f"tune setting {field.name}={value!r} has no `mtp-assistant tune` option")
        args += [TUNE_FLAGS[field.name], str(value)]
    return cli_command(*args, "--json", "--quiet")


def start_tune(runs_dir: Path, config: TuneConfig, plan: TunePlan, model_dir: Path) -> tuple[Path, subprocess.Popen]:
    """Start tuning plan.repo in the background, in a new run directory; model_dir: where the
    store puts the tuned model (plan.name in its models directory)."""
    command = tune_command(dataclasses.replace(config, repo=str(plan.repo)))
    run_dir = new_run_dir(runs_dir, str(plan.repo))
    run_dir.mkdir(parents=True)
    job = {"repo": str(plan.repo), "name": plan.name, "tune_dir": str(plan.run_dir), "model_dir": str(model_dir),
           "command": command}
    write_atomic(run_dir / TUNE_JOB_FILE, (json.dumps(job, indent=2) + "\n").encode())
    return run_dir, _spawn(command, run_dir, _tune_mention(plan.repo))


def _tune_mention(repo: Path | str) -> str:
    return f"assistant.cli tune {repo}"


def read_tune_job(run_dir: Path) -> dict[str, Any]:
    try:
        job = json.loads((run_dir / TUNE_JOB_FILE).read_text())
        if isinstance(job, dict) and all(isinstance(job.get(k), str) for k in ("repo", "tune_dir", "model_dir")):
            return job
    except (OSError, ValueError):
        pass
    raise ValueError(f"{run_dir / TUNE_JOB_FILE}: not a tune job the UI wrote")


def running_tune_of(runs_dir: Path, tune_dir: Path) -> Path | None:
    """The running tune job that works in tune_dir (two at once would share its files)."""
    for info in list_runs(runs_dir):
        if info.kind == TUNE and info.state == RUNNING and read_tune_job(info.path)["tune_dir"] == str(tune_dir):
            return info.path
    return None


def _resume_tune(run_dir: Path) -> subprocess.Popen:
    job = read_tune_job(run_dir)
    if tune_report(run_dir) is not None:
        raise ValueError(f"{run_dir.name} has finished")
    other = running_tune_of(run_dir.parent, Path(job["tune_dir"]))
    if other is not None:
        raise ValueError(f"{other.name} is tuning {Path(job['repo']).name} already")
    # The same command: tune goes on from its checkpoint (or starts again where it had none).
    return _spawn(list(job["command"]), run_dir, _tune_mention(job["repo"]))


def tune_report(run_dir: Path) -> dict[str, Any] | None:
    """The report the tune printed when it finished (the tuned model's tune_report.json
    less its file hashes); None before. Read from the log rather than the model directory:
    a tune that did not beat its starting model leaves an earlier tune's report there."""
    try:
        with open(run_dir / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - REPORT_LOG_BYTES))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(b"{"):
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if isinstance(report, dict) and "before" in report:
                return report
    return None


def _tune_state(run_dir: Path) -> str:
    if tune_report(run_dir) is not None:
        return FINISHED
    try:
        tune_dir = Path(read_tune_job(run_dir)["tune_dir"])
    except ValueError:
        return FAILED
    return STOPPED if (tune_dir / STATE_FILE).is_file() else FAILED


def _tune_state_file(run_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((Path(read_tune_job(run_dir)["tune_dir"]) / STATE_FILE).read_text())
        return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def _describe_tune(run_dir: Path) -> RunInfo:
    try:
        repo = read_tune_job(run_dir)["repo"]
    except ValueError:
        repo = "?"
    state, report, steps = _tune_state_file(run_dir), tune_report(run_dir), 0
    try:
        steps = int((state or {}).get("train", {}).get("steps") or (report or {}).get("run", {})["schedule_steps"])
    except (KeyError, TypeError, ValueError):
        pass
    return RunInfo(run_dir, run_state(run_dir), last_step(run_dir), steps, repo, recorded_start(run_dir), TUNE)


def _describe_tune_settings(run_dir: Path) -> str | None:
    """From tune's own record of the run (tune.json while it works, the report after)."""
    c = _tune_state_file(run_dir) or tune_report(run_dir)
    try:
        t = c["train"]
        return (
            f"tune of {Path(c['repo']).name} from {Path(c['base']).name} ({c['started_from']}): {t['steps']} steps, "
            f"lr {t['lr']:g}, seq {t['seq_len']}, batch {t['batch_size']}"
        )
    except (KeyError, TypeError, ValueError):
        return None
