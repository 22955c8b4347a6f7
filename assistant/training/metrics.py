"""Where a run reports itself: a JSONL metrics file and a progress bar on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.checkpoint import write_atomic


class MetricsWriter:
    """Appends one JSON object per line; flushed per record so readers can tail it.

    On resume, records past the checkpoint's step (written after the last checkpoint of
    the interrupted run) are dropped so the file reads as one uninterrupted run.
    """

    def __init__(self, path: Path, enabled: bool = True, truncate_after_step: int | None = None):
        self.enabled = enabled
        self._file = None
        if not enabled:
            return
        if truncate_after_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= truncate_after_step]
            # Replaced whole, never rewritten in place: a kill during the rewrite would lose
            # the steps before the checkpoint, which no resume writes again.
            write_atomic(path, "".join(line + "\n" for line in kept).encode())
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a crash: drop it


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a torn last line is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class ProgressReporter:
    """A rich progress bar with the latest loss, on stderr (stdout stays clean).

    When stderr is not a terminal (a background run writing to a log) the bar cannot
    redraw, so a plain line is printed every `log_every` steps instead.
    """

    def __init__(self, total: int, completed: int, enabled: bool = True, log_every: int | None = None):
        self.enabled = enabled
        console = Console(file=sys.stderr)
        self._plain = enabled and not console.is_terminal
        self._log_every = log_every or max(1, total // 20)
        self._total = total
        self._done = completed
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("train", total=total, completed=completed, info="")
        self._last_val = ""

    def __enter__(self) -> "ProgressReporter":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def advance(self, record: dict[str, Any]) -> None:
        info = f"loss {record['loss']:.3f}  {record['tokens_per_s']:.0f} tok/s{self._last_val}"
        self._progress.update(self._task, advance=1, info=info)
        self._done += 1
        if self._plain and (self._done % self._log_every == 0 or self._done == self._total):
            self._progress.console.print(f"step {self._done}/{self._total}: {info}", soft_wrap=True)

    def note(self, val_record: dict[str, Any]) -> None:
        # A distillation run scores its heads by agreement with the model's own greedy tokens.
        agreement = "agreement_per_head" in val_record
        heads = " ".join(f"{a:.2f}" for a in val_record["agreement_per_head" if agreement else "accuracy_per_head"])
        short, long = ("agree", "agreement with the model's greedy tokens") if agreement else ("acc", "accuracy")
        self._last_val = f"  val {val_record['loss']:.3f} {short}[{heads}]"
        if self.enabled:
            self._progress.console.print(f"step {val_record['step']}: val loss {val_record['loss']:.4f}, {long} per head {heads}")
