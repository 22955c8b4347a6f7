"""Where a run reports itself: a JSONL metrics file and a progress bar on stderr."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.checkpoint import write_atomic


@dataclass(kw_only=True)
class MetricsRecord:
    """One line of a trainer run's metrics.jsonl: a training step (split "train") or an
    evaluation on the held-out windows ("val"). to_dict is the line as written, fields in
    this order, the train-only ones absent from a val record. (An add-heads run writes
    records of its own, read as plain dicts by read_metrics.)"""

    step: int  # steps done
    split: str  # "train" or "val"
    lr: float | None = None  # train: the step's learning rate
    loss: float  # summed over the heads
    loss_per_head: list[float]
    accuracy_per_head: list[float] | None = None  # top-1 against the text
    # A heads-distill run's instead: heads 2..n's top-1 agreement with the model's own greedy tokens.
    agreement_per_head: list[float] | None = None
    grad_norm: float | None = None  # train: before clipping
    tokens_per_s: float | None = None  # train: scored positions per second of the step
    time: float  # Unix time when written

    _REQUIRED = ("step", "split", "loss", "loss_per_head", "accuracy_per_head", "time")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetricsRecord":
        """A record as to_dict wrote it; keys it does not know are ignored. ValueError naming
        a missing one."""
        scored = {"accuracy_per_head"} if "agreement_per_head" in data else set()  # a distillation run's
        missing = [k for k in cls._REQUIRED if k not in data and k not in scored]
        if missing:
            raise ValueError(f"not a training record: no {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


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


def read_records(path: Path) -> list[MetricsRecord]:
    """A trainer run's metrics file as records (a torn last line is skipped); ValueError
    naming the file and line of one that is not a training record."""
    records = []
    for i, data in enumerate(read_metrics(path), start=1):
        try:
            records.append(MetricsRecord.from_dict(data))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: record {i}: {e}") from None
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

    def advance(self, record: MetricsRecord) -> None:
        info = f"loss {record.loss:.3f}  {record.tokens_per_s:.0f} tok/s{self._last_val}"
        self._progress.update(self._task, advance=1, info=info)
        self._done += 1
        if self._plain and (self._done % self._log_every == 0 or self._done == self._total):
            self._progress.console.print(f"step {self._done}/{self._total}: {info}", soft_wrap=True)

    def note(self, val_record: MetricsRecord) -> None:
        # A distillation run scores its heads by agreement with the model's own greedy tokens.
        agreement = val_record.agreement_per_head is not None
        heads = " ".join(f"{a:.2f}" for a in (val_record.agreement_per_head if agreement else val_record.accuracy_per_head))
        short, long = ("agree", "agreement with the model's greedy tokens") if agreement else ("acc", "accuracy")
        self._last_val = f"  val {val_record.loss:.3f} {short}[{heads}]"
        if self.enabled:
            self._progress.console.print(f"step {val_record.step}: val loss {val_record.loss:.4f}, {long} per head {heads}")
