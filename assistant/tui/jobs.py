"""Long operations run as `mtp-assistant` subprocesses: cancellable, with their last line
of output as progress. Called from thread workers; nothing here touches the UI."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class JobResult:
    returncode: int | None  # None: cancelled
    output: str  # stdout and stderr, merged

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_line(self) -> str:
        """The line that says what went wrong (the CLI's one-line error, else the last line)."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or [f"exit status {self.returncode}"])[-1]


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "assistant.cli", *args]


def run_cli(
    args: list[str],
    cancel: threading.Event,
    on_output: Callable[[str], None] | None = None,
    poll_s: float = 0.2,
) -> JobResult:
    """Run `mtp-assistant ARGS`; terminate it when `cancel` is set."""
    return run_command(cli_command(*args), cancel, on_output, poll_s)


def run_command(
    command: list[str],
    cancel: threading.Event,
    on_output: Callable[[str], None] | None = None,
    poll_s: float = 0.2,
) -> JobResult:
    """Run a command to its end, reporting its latest output line; terminate it on cancel."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        last = ""
        while proc.poll() is None:
            if cancel.is_set():
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return JobResult(None, _read(out))
            if on_output is not None:
                text = _read(out)
                line = text.replace("\r", "\n").strip().splitlines()[-1] if text.strip() else ""
                if line and line != last:
                    on_output(line)
                    last = line
            time.sleep(poll_s)
        return JobResult(proc.returncode, _read(out))


def _read(f) -> str:
    f.seek(0)
    return f.read().decode("utf-8", errors="replace")
