"""Drafters and the choice of how much to draft, for speculative.decode.

A drafter proposes the tokens that follow the last committed one; head 1 verifies them
all in one forward (speculative.py). Two drafters:

    heads   the MTP heads 2..k, read at the last accepted position (k - 1 tokens)
    lookup  context lookup: the last n tokens (n = 3, 2, 1, longest first) matched in the
            prompt, the text generated so far and token sequences the caller passes (the
            completion context's snippets); the tokens that followed the match are the
            draft. Copying is common in code, and such drafts are often right many tokens
            in a row. A lookup draft is a deterministic proposal (q one-hot), which the
            speculative-sampling rule accepts with probability p(token).

How much to draft (DraftPlanner): a forward of R rows costs cost(R) (a probe measured on
this machine), a draft of m tokens whose conditional acceptance rates are c_1..c_m is
expected to commit 1 + sum_i prod_{j<=i} c_j tokens, so each step drafts the m (and the
drafter) that maximise tokens per second, zero when nothing pays. The rates are learned
online per drafter and draft position (and per match length for lookup), from a bounded
optimistic prior: a drafter is tried, and left as soon as it does not pay.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

LOOKUP_HEAD = 0  # token_heads' tag of a token a lookup draft proposed (heads are 1..k)
MAX_NGRAM = 3


@dataclass
class Proposal:
    """A draft: tokens and, for sampling, the proposal distribution of each (None: one-hot)."""

    tokens: list[int]
    source: str  # "heads" or "lookup"
    rows: list | None = None  # heads: the chooser's prepared rows (probabilities when sampling)
    ngram: int = 0  # lookup: the length of the match


class History:
    """The token ids decoded against (prompt + new tokens) in a growing numpy array, with the
    caller's extra sequences, for n-gram lookup."""

    def __init__(self, prompt: Sequence[int], room: int, extra: Sequence[Sequence[int]] = ()):
        self.ids = np.zeros(len(prompt) + room + 1, dtype=np.int64)
        self.ids[: len(prompt)] = prompt
        self.length = len(prompt)
        self.extra = [np.asarray(e, dtype=np.int64) for e in extra if len(e) > 1]

    def append(self, token: int) -> None:
        self.ids[self.length] = token
        self.length += 1

    def lookup(self, max_len: int, max_n: int = MAX_NGRAM) -> tuple[list[int], int]:
        """The continuation (up to max_len tokens) of the longest, most recent match of the last
        n <= max_n tokens: in the history first, then in the extra sequences; ([], 0) if none."""
        if max_len < 1 or self.length < 1:
            return [], 0
        history = self.ids[: self.length]
        pattern = history[-max_n:]
        best_n, best = 0, []
        # In the history, a match must end before its last token (that is the pattern itself).
        for seq, end in [(history, self.length - 1)] + [(e, len(e) - 1) for e in self.extra]:
            n, start = _longest_match(seq, end, pattern)
            if n > best_n:
                best_n, best = n, seq[start : start + max_len].tolist()
                if n == len(pattern):
                    break
        return best, best_n


def _longest_match(seq: np.ndarray, end: int, pattern: np.ndarray) -> tuple[int, int]:
    """(n, start): the longest suffix of `pattern` that occurs in seq ending before index `end`
    (so that at least one token follows it), the most recent of those; start is the index
    of the token after it. (0, 0) if even the last token does not occur."""
    ends = np.flatnonzero(seq[:end] == pattern[-1])  # candidate positions of the pattern's last token
    if len(ends) == 0:
        return 0, 0
    n = np.ones(len(ends), dtype=np.int64)
    for j in range(1, len(pattern)):
        back = ends - j
        ok = (n == j) & (back >= 0)
        ok[ok] = seq[back[ok]] == pattern[-1 - j]
        n[ok] += 1
    longest = int(n.max())
    last = int(ends[np.flatnonzero(n == longest)[-1]])
    return longest, last + 1


@dataclass
class Acceptance:
    """Conditional acceptance rate per draft position (P(draft i accepted | drafts < i were)),
    learned online from a prior worth `weight` observations at `prior`."""

    # Optimistic: a drafter is tried before the evidence is in, also where a forward of 9 rows
    # costs 7 of one (a small CPU), where only drafts right ~95% of the time pay.
    prior: float = 0.95
    weight: float = 2.0  # bounded: a couple of rejections outweigh it
    accepted: list[float] = field(default_factory=list)
    proposed: list[float] = field(default_factory=list)

    def rates(self, length: int) -> list[float]:
        self._grow(length)
        return [(self.prior * self.weight + a) / (self.weight + p) for a, p in zip(self.accepted[:length], self.proposed[:length])]

    def record(self, proposed: int, accepted: int) -> None:
        """A draft of `proposed` tokens whose first `accepted` were accepted: positions past the
        first rejection say nothing (they were conditional on it)."""
        self._grow(proposed)
        for i in range(min(proposed, accepted + 1)):
            self.proposed[i] += 1
            self.accepted[i] += i < accepted

    def _grow(self, length: int) -> None:
        while len(self.proposed) < length:
            self.proposed.append(0.0)
            self.accepted.append(0.0)


def expected_tokens(rates: Sequence[float]) -> list[float]:
    """Tokens a forward commits when drafting m = 0..len(rates) tokens: 1 + sum_i prod_{j<=i} c_j."""
    out, total, run = [1.0], 1.0, 1.0
    for c in rates:
        run *= c
        total += run
        out.append(total)
    return out


@dataclass
class CostCurve:
    """Seconds of one forward of R = 1..len(rows) rows (rows[R - 1]) and of one head's draft."""

    rows: list[float]
    head_s: float = 0.0

    def forward_s(self, n_rows: int) -> float:
        if n_rows <= len(self.rows):
            return self.rows[n_rows - 1]
        # Past the probe: linear in the rows, at the last measured slope
        slope = self.rows[-1] - self.rows[-2] if len(self.rows) > 1 else self.rows[-1]
        return self.rows[-1] + slope * (n_rows - len(self.rows))

    @staticmethod
    def free(max_rows: int = 64) -> "CostCurve":
        """A verifier for which every row is free: drafting as much as there is always pays."""
        return CostCurve([1.0] * max_rows)


def best_length(rates: Sequence[float], cost: CostCurve, per_token_s: float = 0.0) -> tuple[int, float]:
    """(m, tokens per second) of the draft length m in 0..len(rates) that commits the most
    tokens per second; per_token_s: what drafting each token costs on top of the forward."""
    best = (0, 1.0 / cost.forward_s(1))
    for m, tokens in enumerate(expected_tokens(rates)):
        if m:
            speed = tokens / (cost.forward_s(1 + m) + m * per_token_s)
            if speed > best[1]:
                best = (m, speed)
    return best


@dataclass
class DraftPlanner:
    """Chooses, each step, which drafter drafts and how many tokens, by expected tokens per
    second; learns the drafters' acceptance as it goes. Kept by the engine across calls."""

    cost: CostCurve
    heads: Acceptance = field(default_factory=Acceptance)
    lookup: dict[int, Acceptance] = field(default_factory=dict)  # by match length

    def lookup_rates(self, ngram: int, length: int) -> list[float]:
        return self.lookup.setdefault(ngram, Acceptance()).rates(length)

    def plan(self, lookup: tuple[list[int], int] | None, heads_room: int) -> tuple[str, int]:
        """("lookup" | "heads" | "", m): the drafter and the number of tokens to draft.
        lookup: the lookup's (draft, match length), None if that drafter is not used;
        heads_room: the most tokens the heads may draft (0 if they are not used)."""
        choice, best = ("", 0), 1.0 / self.cost.forward_s(1)
        if lookup and lookup[0]:
            m, speed = best_length(self.lookup_rates(lookup[1], len(lookup[0])), self.cost)
            if m and speed > best:
                choice, best = ("lookup", m), speed
        if heads_room > 0:
            m, speed = best_length(self.heads.rates(heads_room), self.cost, self.cost.head_s)
            if m and speed > best:
                choice = ("heads", m)
        return choice

    def record(self, proposal: Proposal, accepted: int, verified: int) -> None:
        """The first `accepted` of the proposal's first `verified` tokens were accepted."""
        table = self.heads if proposal.source == "heads" else self.lookup.setdefault(proposal.ngram, Acceptance())
        table.record(verified, accepted)


def probe_costs(step, k: int, max_rows: int = 8, prefix: int = 32, repeats: int = 5, token: int = 0) -> CostCurve:
    """Measure on `step` (a speculative.StepModel; its cache is overwritten) what one forward of
    R = 1..max_rows rows costs after a short prefix, k heads as decode runs them, and what
    one head's draft costs. Median of `repeats`, the R interleaved so that a busy moment on a
    shared machine spreads over all of them."""
    step.forward([token] * prefix, 0, k, all_rows=False).next_logits(prefix - 1)
    times: list[list[float]] = [[] for _ in range(max_rows)]
    heads: list[float] = []
    for _ in range(repeats):
        for r in range(1, max_rows + 1):
            clock = time.perf_counter()
            out = step.forward([token] * r, prefix, k)
            out.next_logits()
            times[r - 1].append(time.perf_counter() - clock)
        if k > 1:
            clock = time.perf_counter()
            out.draft_logits(0)
            heads.append((time.perf_counter() - clock) / (k - 1))
    rows = [statistics.median(t) for t in times]
    # A curve that falls with R is noise: what R rows cost is at least what fewer cost.
    rows = list(np.maximum.accumulate(rows))
    return CostCurve(rows, statistics.median(heads) if heads else 0.0)


def probe_key(model_file: Path, **settings) -> str:
    """What a probe's figures depend on: the model file (its size and a hash of its first and
    last MiB: a full hash of a 1 GB file would cost more than the probe), the settings given
    (quant, threads, k, ...) and the machine. A hex digest, for a file name."""
    size = model_file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(model_file, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    machine = {"processor": platform.processor(), "machine": platform.machine(), "cpus": os.cpu_count()}
    key = json.dumps({"model": digest.hexdigest(), "machine": machine, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def cached_probe(cache_dir: Path | None, key: str, measure) -> CostCurve:
    """The probe stored under cache_dir for `key`, else measure() (stored there when given).
    A damaged or foreign file is measured again, never an error: it is only a cache."""
    path = Path(cache_dir) / f"probe-{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
            rows = [float(r) for r in data["rows"]]
            if rows and all(r > 0 for r in rows):
                return CostCurve(rows, float(data["head_s"]))
        except (ValueError, KeyError, TypeError, OSError):
            pass
    curve = measure()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"rows": curve.rows, "head_s": curve.head_s}))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: measure again next time
    return curve
