"""What the language server measures: latency percentiles, decoding efficiency, cache
hits and how often a shown suggestion is accepted.

`ServerStats.snapshot()` is the JSON object of the server-TUI contract (written to
`<store home>/servers/<pid>.json` by `StatsFileWriter`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path

from models.checkpoint import write_atomic

WINDOW = 2000  # latencies kept for the percentiles: the recent past, in bounded memory


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


class ServerStats:
    def __init__(self, model: str = "", engine: str = ""):
        self.model, self.engine = model, engine
        self.threads: tuple[int, int] | None = None  # the engine's (see base.Engine)
        self.warnings: list[str] = []  # what the engine reported at load (a fallback, and why)
        self.started = time.time()
        self.requests = self.completions = self.cancelled = self.errors = 0
        self.cache_hits = self.shown = self.accepted = 0
        self.new_tokens = self.forward_passes = 0
        # Where the model's time goes: calls made, seconds in prompts (prefill) and in decoding.
        self.model_calls, self.prefill_s, self.decode_s = 0, 0.0, 0.0
        self.draft_proposed: list[int] = []
        self.draft_accepted: list[int] = []
        self._latencies_ms: deque[float] = deque(maxlen=WINDOW)
        self._lock = threading.Lock()

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def completed(self, latency_s: float, cached: bool, decode_stats=None) -> None:
        """One request answered (with or without text)."""
        with self._lock:
            self.completions += 1
            self._latencies_ms.append(latency_s * 1e3)
            if cached:
                self.cache_hits += 1
            if decode_stats is not None:
                self.new_tokens += decode_stats.new_tokens
                self.forward_passes += decode_stats.forward_passes
                self.model_calls += 1
                self.prefill_s += decode_stats.prefill_s
                self.decode_s += decode_stats.decode_s
                n = len(decode_stats.draft_proposed)
                if len(self.draft_proposed) < n:
                    self.draft_proposed += [0] * (n - len(self.draft_proposed))
                    self.draft_accepted += [0] * (n - len(self.draft_accepted))
                for i in range(n):
                    self.draft_proposed[i] += decode_stats.draft_proposed[i]
                    self.draft_accepted[i] += decode_stats.draft_accepted[i]

    def cancel(self) -> None:
        with self._lock:
            self.cancelled += 1

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def suggestion_shown(self) -> None:
        with self._lock:
            self.shown += 1

    def suggestion_accepted(self) -> None:
        with self._lock:
            self.accepted += 1

    def snapshot(self) -> dict:
        with self._lock:
            latencies = list(self._latencies_ms)
            return {
                "pid": os.getpid(),
                "started": self.started,
                "updated": time.time(),
                "model": self.model,
                "engine": self.engine,
                "threads": list(self.threads) if self.threads else None,
                "warnings": self.warnings,
                "requests": self.requests,
                "completions": self.completions,
                "cancelled": self.cancelled,
                "errors": self.errors,
                "latency_ms": {q: percentile(latencies, n) for q, n in (("p50", 50), ("p95", 95), ("p99", 99))},
                "tokens_per_forward": _ratio(self.new_tokens, self.forward_passes),
                "model_calls": self.model_calls,
                "new_tokens": self.new_tokens,
                "prefill_ms": self.prefill_s * 1e3,
                "decode_ms": self.decode_s * 1e3,
                # Per draft position (1 = the token after head 1's; a position may be a head's draft or
                # context lookup's): the share of drafts there that head 1 accepted, None where none was made.
                "acceptance_per_position": [a / p if p else None for a, p in zip(self.draft_accepted, self.draft_proposed)],
                "cache_hits": self.cache_hits,
                "cache_hit_rate": _ratio(self.cache_hits, self.completions),
                "shown": self.shown,
                "accepted": self.accepted,
                "acceptance_rate": _ratio(self.accepted, self.shown),
            }


class StatsFileWriter:
    """Writes a ServerStats snapshot to `<home>/servers/<pid>.json` every `interval_s`,
    atomically, and deletes the file on stop."""

    def __init__(self, stats: ServerStats, home: Path, interval_s: float = 2.0):
        self.stats = stats
        self.path = Path(home) / "servers" / f"{os.getpid()}.json"
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-file", daemon=True)

    def start(self) -> StatsFileWriter:
        self._thread.start()
        return self

    def write(self) -> None:
        write_atomic(self.path, (json.dumps(self.stats.snapshot()) + "\n").encode())

    def _run(self) -> None:
        while True:
            try:
                self.write()
            except OSError:
                pass  # a full or read-only disk must not take the server down
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
