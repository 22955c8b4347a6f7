"""Drafters and the choice of how much to draft, for speculative.decode.

A drafter proposes the tokens that follow the last committed one; head 1 verifies them
all in one forward (speculative.py). Three proposals:

    heads         the MTP heads 2..k, read at the last accepted position (k - 1 tokens)
    lookup        context lookup: the last n tokens (n = 3, 2, 1, longest first) matched in the
                  prompt, the text generated so far and token sequences the caller passes (the
                  completion context's snippets); the tokens that followed the match are the
                  draft. Copying is common in code, and such drafts are often right many tokens
                  in a row. A lookup draft is a deterministic proposal (q one-hot), which the
                  speculative-sampling rule accepts with probability p(token).
    heads+lookup  both in one draft: the heads' k - 1 tokens, then the lookup continuation of
                  the n-gram that ends with them (History.lookup(after=...)): where the heads
                  are right the copy goes on past them. The heads' positions keep their
                  proposal rows, the extension's are one-hot.

How much to draft (DraftPlanner): a forward of R rows costs cost(R) (a probe measured on
this machine, then what decoding's own forwards measure), a draft of m tokens whose
conditional acceptance rates are c_1..c_m is expected to commit 1 + sum_i prod_{j<=i} c_j
tokens, so each step drafts the m (and the proposal) that maximise tokens per second, zero
unless that beats a plain step by a margin. The rates are learned online per drafter and
draft position (for lookup and the extension also per match length and copy streak), kept
by the engine across requests, and within each completion (its own drafts, with the
long-run rate as their prior); the heads' prior comes from the model's card where it
measured them. A drafter is tried once at first, and one that does not pay only rarely
again, within a small share of the time.

Copy streaks (DraftPlanner.max_streak; off by default, see there): lookup acceptance is
bimodal. Inside a copied region nearly every draft is right, elsewhere few are; so the lookup and extension rates are kept per `streak`, the
number of lookup drafts in a row (capped at MAX_STREAK) accepted in full. Inside a copy the
planner then drafts long, and one rejection drops it back to the rates of the text outside
copies. A lookup found but not drafted counts too, as a draft of its first SHADOW_TOKENS
checked against the tokens committed after it: on a CPU, where a lookup outside a copy
rarely pays, that is how a copy is seen to begin.

Sampling stays exact because every choice about a draft position is made from what is known
before that position's draft token is sampled: which proposal, its length and how many
heads from the rates and the heads' rows (the extension it weighs follows their likeliest
tokens); after the heads' tokens are drawn, only the lookup that follows them (they are the
prefix it continues), cut to that length.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

LOOKUP_HEAD = 0  # token_heads' tag of a token a lookup draft proposed (heads are 1..k)
MAX_NGRAM = 3
MAX_STREAK = 2  # with copy streaks on: 0, 1, 2 or more lookup drafts in a row accepted in full are told apart
SHADOW_TOKENS = 2  # an undrafted lookup is checked as a draft of this many tokens (DraftPlanner.observe_lookup)


@dataclass
class Proposal:
    """A draft: the heads' tokens first (`heads` of them, each with its proposal row), then
    the lookup's (one-hot proposals)."""

    tokens: list[int]
    source: str  # "heads", "lookup" or "heads+lookup"
    rows: list | None = None  # the heads' positions: the chooser's prepared rows (probabilities when sampling)
    ngram: int = 0  # the lookup part: the length of its match
    heads: int = 0  # how many of the tokens the heads drafted


class History:
    """The token ids decoded against (prompt + new tokens) in a growing numpy array, with the
    caller's extra sequences, for n-gram lookup. The extra sequences are searched as one
    array (each followed by a -1, which no token matches): one pass over it per lookup,
    however many sequences there are."""

    def __init__(self, prompt: Sequence[int], room: int, extra: Sequence[Sequence[int]] = ()):
        self.ids = np.zeros(len(prompt) + room + 1, dtype=np.int64)
        self.ids[: len(prompt)] = prompt
        self.length = len(prompt)
        # Reversed: of equally long matches the most recent in the array wins, so that is the
        # caller's first sequence.
        parts = [np.append(np.asarray(e, dtype=np.int64), -1) for e in reversed(extra) if len(e) > 1]
        self.extra = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def append(self, token: int) -> None:
        self.ids[self.length] = token
        self.length += 1

    def lookup(self, max_len: int, max_n: int = MAX_NGRAM, after: Sequence[int] = ()) -> tuple[list[int], int]:
        """The continuation (up to max_len tokens) of the longest, most recent match of the last
        n <= max_n tokens: in the history first, then in the extra sequences; ([], 0) if none.
        after: tokens taken to follow the history for this lookup only (a draft's), not kept."""
        end = self.length + len(after)
        if max_len < 1 or end < 1:
            return [], 0
        if end > len(self.ids):
            self.ids = np.concatenate([self.ids, np.zeros(end - len(self.ids), dtype=np.int64)])
        self.ids[self.length : end] = after  # past `length`: the next append overwrites them
        history = self.ids[:end]
        pattern = history[-max_n:]
        # In the history, a match must end before its last token (that is the pattern itself).
        n, start = _longest_match(history, end - 1, pattern)
        best_n, best = n, (history[start : start + max_len].tolist() if n else [])
        if n < len(pattern) and len(self.extra):
            n, start = _longest_match(self.extra, len(self.extra) - 1, pattern)
            if n > best_n:
                follow = self.extra[start : start + max_len]
                cut = np.flatnonzero(follow < 0)  # the end of that sequence
                best_n, best = n, follow[: cut[0] if len(cut) else len(follow)].tolist()
        return best, best_n


def _longest_match(seq: np.ndarray, end: int, pattern: np.ndarray) -> tuple[int, int]:
    """(n, start): the longest suffix of `pattern` that occurs in seq ending before index `end`
    (so that at least one token follows it), the most recent of those; start is the index
    of the token after it. (0, 0) if even the last token does not occur."""
    ends = np.flatnonzero(seq[:end] == pattern[-1])  # candidate positions of the pattern's last token
    ends = ends[seq[ends + 1] >= 0]  # followed by a token, not by the end of an extra sequence
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


# The heads' prior where the model's card does not say how often they are right: a coin
# flip, worth 2 observations. A draft pays on this prior only where a forward of a few more
# rows costs little more than one (a GPU, a large model), not on a small CPU model; either way
# the first try of the heads (DraftPlanner) replaces it with evidence.
DEFAULT_HEADS_PRIOR = 0.5
CARD_PRIOR_WEIGHT = 4.0  # the card's figures were measured on other text than an editor's


@dataclass
class Acceptance:
    """Conditional acceptance rate per draft position (P(draft i accepted | drafts < i were)),
    learned online from a prior worth `weight` observations: `priors[i]` at position i where
    given (a model card's measured rates), else `prior`. Observations fade with a memory of
    about `memory` drafts, so that an engine serving for hours follows its workload (another
    file, another kind of completion) instead of the average of its whole life."""

    prior: float = 0.95
    weight: float = 2.0
    priors: tuple[float, ...] = ()
    memory: float = 256.0
    accepted: list[float] = field(default_factory=list)
    proposed: list[float] = field(default_factory=list)

    def rates(self, length: int, priors: Sequence[float] | None = None) -> list[float]:
        """The estimates of positions 0..length-1 (`priors`: the prior of each, in place of
        the table's own). A position never drafted is taken to be no better than the one
        before it: after rejections at the first position, the prior of the later ones would
        otherwise make a long draft look worth it."""
        self._grow(length)
        priors = self.priors if priors is None else priors
        out: list[float] = []
        for i in range(length):
            prior = priors[i] if i < len(priors) else self.prior
            if self.proposed[i] == 0:
                out.append(min(prior, out[-1]) if out else prior)
            else:
                out.append((prior * self.weight + self.accepted[i]) / (self.weight + self.proposed[i]))
        return out

    def record(self, proposed: int, accepted: int) -> None:
        """A draft of `proposed` tokens whose first `accepted` were accepted: positions past the
        first rejection say nothing (they were conditional on it)."""
        self._grow(proposed)
        keep = 1.0 - 1.0 / self.memory
        for i in range(min(proposed, accepted + 1)):
            self.proposed[i] = self.proposed[i] * keep + 1
            self.accepted[i] = self.accepted[i] * keep + (i < accepted)

    def fade(self, keep: float) -> None:
        """Every observation now counts `keep` times what it did."""
        self.accepted = [a * keep for a in self.accepted]
        self.proposed = [p * keep for p in self.proposed]

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
    """Seconds of one forward of R = 1..len(rows) rows (rows[R - 1], as the probe measured them)
    and of one head's draft, and what decoding has measured since (observe).

    A forward of several rows also slows the 1-row forward after it (`switch_s`): llama.cpp
    reuses its compute graph only while the batch keeps its shape, and the caches are the
    other forward's (0.3-0.5 ms on a 2 ms step of the shipped model on this CPU, with graph
    reuse turned off 0.2 ms). It is a cost of the draft that ends a run of drafts
    (best_length).

    The probe runs at one context length on a machine that may have been busy at that
    moment; the forwards decoding runs are the real thing, at the real context lengths and
    under the machine's present load, so the curve follows them: a running mean per row
    count, all counts scaled with the 1-row cost (a load that slows one forward slows them
    all, and 1-row forwards are the ones measured all the time)."""

    rows: list[float]
    head_s: float = 0.0
    switch_s: float = 0.0
    learns: bool = True  # False: the curve stays what it was given (CostCurve.free)
    rate: float = 0.1  # weight of a new observation in the running mean
    _rows: list[float] = field(init=False, repr=False, compare=False)
    _head: float = field(init=False, repr=False, compare=False)
    _switch: float = field(init=False, repr=False, compare=False)
    # the rows of the last forward observed (0: unknown)
    _previous_rows: int = field(default=0, init=False, repr=False, compare=False)
    _at_least: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rows, self._head, self._switch = list(self.rows), self.head_s, self.switch_s
        self._monotone()

    def _monotone(self) -> None:
        # What R rows cost is at least what fewer cost (the planner asks this dozens of times a step).
        self._at_least = list(itertools.accumulate(self._rows, max))

    def forward_s(self, n_rows: int) -> float:
        rows = self._at_least
        if n_rows <= len(rows):
            return rows[n_rows - 1]
        # Past the probe: linear in the rows, at the last measured slope
        slope = self._rows[-1] - self._rows[-2] if len(self._rows) > 1 else self._rows[-1]
        return rows[-1] + max(0.0, slope) * (n_rows - len(rows))

    def switch_back_s(self) -> float:
        """What a 1-row forward right after a forward of several rows costs more than one after one row."""
        return self._switch

    def draft_s(self) -> float:
        """What one head's draft costs (its share of the heads' lazily computed logits)."""
        return self._head

    def begin(self) -> None:
        """A decode starts: the forward before its first step (a prefill, another request's) is not one observed."""
        self._previous_rows = 0

    def observe(self, n_rows: int, seconds: float) -> None:
        """A decoding forward of n_rows rows took `seconds` (its logits included)."""
        previous, self._previous_rows = self._previous_rows, n_rows
        if not self.learns or seconds <= 0:
            return
        if n_rows == 1 and previous != 1:
            # After several rows (or after what was not observed), a 1-row forward says what
            # switching back costs, not what one row costs.
            if previous > 1:
                extra = _bounded(seconds, self._rows[0] + self._switch) - self._rows[0]
                self._switch = max(0.0, self._switch + self.rate * (extra - self._switch))
            return
        if n_rows > len(self._rows):
            self._rows += [self.forward_s(r) for r in range(len(self._rows) + 1, n_rows + 1)]
            self._monotone()
        old = self._rows[n_rows - 1]
        new = old + self.rate * (_bounded(seconds, old) - old)
        if n_rows == 1:
            scale = new / old
            self._rows = [r * scale for r in self._rows]
            self._at_least = [r * scale for r in self._at_least]
            self._head *= scale
            self._switch *= scale
        else:
            self._rows[n_rows - 1] = new
            self._monotone()

    def observe_draft(self, n_heads: int, seconds: float) -> None:
        """Drafting with n_heads heads took `seconds` (a head catching up on positions included)."""
        if self.learns and seconds > 0 and n_heads > 0:
            per_head = seconds / n_heads
            old = self._head if self._head > 0 else per_head
            self._head = old + self.rate * (_bounded(per_head, old) - old)

    @staticmethod
    def free(max_rows: int = 64) -> "CostCurve":
        """A verifier for which every row is free: drafting as much as there is always pays."""
        return CostCurve([1.0] * max_rows, learns=False)


def _bounded(seconds: float, estimate: float) -> float:
    """A measurement as the running mean takes it: one the scheduler interrupted (a shared
    machine) says little about the next forward, so it counts as at most 3x the estimate.
    Nothing makes a forward spuriously fast: a shorter one is taken as it is."""
    return min(seconds, 3 * estimate)


def best_length(
    rates: Sequence[float], cost: CostCurve, per_token_s: float | Sequence[float] = 0.0, first: int = 1
) -> tuple[int, float]:
    """(m, tokens per second) of the draft length m in 0 and first..len(rates) that commits
    the most tokens per second; per_token_s: what drafting a token costs on top of the
    forward, one figure for every position or one per position.

    A draft that ends in a rejection is followed by a plain step, which pays the cost's
    switch back to one row; after one accepted in full the copy (or the heads' run) goes on
    as a rule and the next step drafts again. So a draft of m pays the switch with the
    probability that not all of its m tokens are accepted."""
    if isinstance(per_token_s, (int, float)):
        per_token_s = [float(per_token_s)] * len(rates)
    best = (0, 1.0 / cost.forward_s(1))
    drafting, all_accepted = 0.0, 1.0
    for m, tokens in enumerate(expected_tokens(rates)):
        if m:
            drafting += per_token_s[m - 1]
            all_accepted *= rates[m - 1]
            speed = tokens / (cost.forward_s(1 + m) + drafting + cost.switch_back_s() * (1.0 - all_accepted))
            if m >= first and speed > best[1]:
                best = (m, speed)
    return best


@dataclass
class _Option:
    """One way to draft this step, as the planner weighs it."""

    speed: float  # expected tokens per second at its best length
    source: str  # Proposal.source
    m: int  # its best length (0: none pays)
    room: int  # the most tokens it can draft: what a try drafts
    key: tuple  # what the planner's tries know it by
    per_token_s: list[float]  # what drafting each position costs (the heads' positions: a head's draft)


@dataclass
class DraftPlanner:
    """Chooses, each step, which proposal (heads, lookup, heads+lookup) drafts and how many
    tokens, by expected tokens per second; learns the drafters' acceptance (and, through
    its cost curve, the forwards' cost) as it goes. Kept by the engine across calls, so a
    completion starts from what the ones before it taught.

    Three rules keep it from being slower than plain decoding:
    - a draft is made only where its expected tokens per second beat a plain step's by
      `margin` (the estimates are noisy; a draft that barely pays on paper does not);
    - a drafter (heads, or lookup at one match length and streak) that has not been tried
      yet is tried once, with all it has: a draft is the only way to learn its acceptance;
    - one that did not pay is tried again rarely: at least `explore_gap` steps apart, and
      only as often as a budget of `explore_share` of the plain steps' time allows. So the
      planner's measurements cost at most that share of the time where nothing pays.
    Where no draft would pay even if right, a step does no lookup and no planning (wanted).
    Where only a right one would, with copy streaks on, the lookup still runs: what it found
    is checked against the tokens committed after it (observe_lookup), free evidence of its
    acceptance, and how the planner sees a copy begin (the copy streak) while it drafts nothing.

    Acceptance differs more between completions than the engine's long-run rates show (a
    completion inside code that repeats gets nearly every lookup draft right, the next one
    almost none), so each rate the planner uses is that of this completion's drafts (begin
    starts one) with the long-run rate as their prior, worth `recent_weight` drafts: two
    rejected drafts stop a drafter that the long run favours, two accepted ones start one.
    That evidence fades over about `recent_steps` steps, as a copy may begin again.

    The heads+lookup proposal uses the heads' rates for its heads' positions and its own
    table (`extension`, per match length and streak) for the lookup's; its lookup needs the
    heads' tokens, so plan asks for it (`extend`) only where it could beat the best other
    option or the heads are being tried anyway."""

    cost: CostCurve
    heads: Acceptance = field(default_factory=lambda: Acceptance(prior=DEFAULT_HEADS_PRIOR))
    lookup: dict[tuple[int, int], Acceptance] = field(default_factory=dict)  # by (match length, streak)
    extension: dict[tuple[int, int], Acceptance] = field(default_factory=dict)  # heads+lookup's lookup part, likewise
    streak: int = 0  # lookup drafts in a row accepted in full, at most max_streak
    # Copy streaks are off unless asked for (MAX_STREAK): with them, the language server's
    # replay of an edit session took 8% longer in all (p95 +17%) than plain decoding, against
    # level without them: their lookup and planning at every step cost more than the long
    # drafts inside copies gained in its short completions, and on code that repeats itself
    # they raised tokens per forward (3.56 -> 4.57) but not the speed (1.19x either way).
    max_streak: int = 0
    margin: float = 0.1
    recent_weight: float = 2.0
    recent_steps: float = 16.0
    explore_gap: int = 32
    explore_share: float = 0.02
    steps: int = 0  # steps planned (or skipped as plain) in the engine's life
    explored: int = 0  # drafts made as tries, not because they were expected to pay
    _credit: float = field(default=0.0, repr=False)  # seconds of the exploration budget not yet spent
    _last_try: int = field(default=-(10**9), repr=False)
    _tried: dict = field(default_factory=dict, repr=False)  # option key -> step of its last draft
    # this completion's drafts, by table ("heads", ("lookup" or "extension", match length,
    # streak)): (their Acceptance, the step it was faded to)
    _recent: dict = field(default_factory=dict, repr=False)
    # (rooms and streak, may lookup pay, may heads pay, may heads+lookup pay,
    #  (would right lookup drafts pay, right heads drafts), (what a try of each costs))
    _verdict: tuple | None = field(default=None, repr=False)

    def begin(self) -> None:
        """A completion starts: what the last one's drafts showed no longer applies."""
        self._recent.clear()
        self._verdict = None
        self.cost.begin()

    def heads_rates(self, length: int) -> list[float]:
        return self._rates("heads", self.heads, length)

    def lookup_rates(self, ngram: int, length: int) -> list[float]:
        return self._rates(("lookup", ngram, self.streak), self._table(self.lookup, ngram), length)

    def extension_rates(self, ngram: int, length: int) -> list[float]:
        return self._rates(("extension", ngram, self.streak), self._table(self.extension, ngram), length)

    def _rates(self, key, table: Acceptance, length: int) -> list[float]:
        rates = table.rates(length)
        recent = self._recent_table(key)
        return recent.rates(length, priors=rates) if recent else rates

    def _record(self, key, table: Acceptance, proposed: int, accepted: int) -> None:
        table.record(proposed, accepted)
        recent = self._recent_table(key)
        if recent is None:
            recent = Acceptance(weight=self.recent_weight, memory=float("inf"))
            self._recent[key] = (recent, self.steps)
        recent.record(proposed, accepted)

    def _recent_table(self, key) -> Acceptance | None:
        """This completion's table `key`, faded to the present step."""
        if key not in self._recent:
            return None
        table, at = self._recent[key]
        if at != self.steps:
            table.fade((1.0 - 1.0 / self.recent_steps) ** (self.steps - at))
            self._recent[key] = (table, self.steps)
        return table

    def _table(self, tables: dict[tuple[int, int], Acceptance], ngram: int) -> Acceptance:
        key = (ngram, self.streak)
        if key not in tables:
            tables[key] = Acceptance()
        return tables[key]

    def _pays(self, speed: float) -> bool:
        return speed > (1.0 + self.margin) / self.cost.forward_s(1)

    def _per_token(self, heads: int, room: int) -> list[float]:
        """What drafting each of `room` positions costs when the first `heads` are the heads'."""
        return [self.cost.draft_s()] * heads + [0.0] * (room - heads)

    def _lookup_option(self, ngram: int, room: int) -> _Option:
        m, speed = best_length(self.lookup_rates(ngram, room), self.cost)
        return _Option(speed, "lookup", m, room, ("lookup", ngram, self.streak), self._per_token(0, room))

    def _heads_option(self, room: int) -> _Option:
        per_token = self._per_token(room, room)
        m, speed = best_length(self.heads_rates(room), self.cost, per_token)
        return _Option(speed, "heads", m, room, ("heads",), per_token)

    def _combined_option(self, ngram: int, heads: int, extension: int) -> _Option:
        """All `heads` of the heads' tokens, then at least one of `extension` lookup tokens."""
        room = heads + extension
        per_token = self._per_token(heads, room)
        rates = self.heads_rates(heads) + self.extension_rates(ngram, extension)
        m, speed = best_length(rates, self.cost, per_token, first=heads + 1)
        return _Option(speed, "heads+lookup", m, room, ("heads+lookup", ngram, self.streak), per_token)

    def wanted(self, lookup_room: int, heads_room: int) -> tuple[bool, bool]:
        """(lookup, heads): whether this step should look for a lookup draft and consider the
        heads at all. Counts the step (and its share of the exploration budget); False,
        False makes it a plain step with no planning work. heads+lookup drafts at most
        lookup_room tokens, the first heads_room of them the heads'."""
        self.steps += 1
        rooms = (lookup_room, heads_room, self.streak)
        if self._verdict is None or self._verdict[0] != rooms or self.steps % 16 == 0:
            # The costs drift a little every step; the verdict is renewed every 16 and after
            # every draft (this runs at every step, plain ones too: the rest is kept short).
            ngrams = range(1, MAX_NGRAM + 1)
            lookup_cost, heads_cost = self._per_token(0, lookup_room), self._per_token(heads_room, heads_room)
            may_lookup = lookup_room > 0 and any(self._pays(self._lookup_option(n, lookup_room).speed) for n in ngrams)
            may_heads = heads_room > 0 and self._pays(self._heads_option(heads_room).speed)
            extension = lookup_room - heads_room
            may_both = heads_room > 0 and extension > 0 and any(
                self._pays(self._combined_option(n, heads_room, extension).speed) for n in ngrams
            )
            worth_a_try = (self._could_pay(lookup_cost), self._could_pay(heads_cost))
            try_costs = (self._try_cost(lookup_cost), self._try_cost(heads_cost))
            self._verdict = (rooms, may_lookup, may_heads, may_both, worth_a_try, try_costs)
        _, may_lookup, may_heads, may_both, (try_lookup, try_heads), (lookup_try_s, heads_try_s) = self._verdict
        cap = 2 * max(lookup_try_s, heads_try_s)
        self._credit = min(self._credit + self.explore_share * self.cost.forward_s(1), cap)
        due = self.steps - self._last_try >= self.explore_gap
        if try_lookup:
            untried = any(("lookup", n, self.streak) not in self._tried for n in range(1, MAX_NGRAM + 1))
            try_lookup = untried or (due and self._credit >= lookup_try_s)
        if try_heads:
            try_heads = ("heads",) not in self._tried or (due and self._credit >= heads_try_s)
        # A lookup runs wherever a right lookup draft would pay, drafted or not: an undrafted
        # one is checked against the tokens committed after it (observe_lookup), which is how
        # the planner sees a copy begin where it drafts nothing.
        watch = self.max_streak > 0 and self._verdict[4][0]
        return may_lookup or may_both or try_lookup or watch, may_heads or may_both or try_heads

    def _could_pay(self, per_token_s: list[float]) -> bool:
        """Whether a draft of len(per_token_s) tokens at most would pay if every token were
        right: where not, trying the drafter can only lose."""
        return len(per_token_s) > 0 and self._pays(best_length([1.0] * len(per_token_s), self.cost, per_token_s)[1])

    def _try_cost(self, per_token_s: list[float]) -> float:
        """What a try of len(per_token_s) tokens costs beyond a plain step (drafting and, for a
        try that fails, the switch back to one row included)."""
        return (self.cost.forward_s(1 + len(per_token_s)) - self.cost.forward_s(1) + sum(per_token_s)
                + self.cost.switch_back_s())

    def _tries(self, options: list[_Option]) -> tuple[list[_Option], bool]:
        """(the options a try may take, whether they are untried ones): where a right draft
        would pay, those never tried, else (when due and paid for) all of them."""
        options = [o for o in options if self._could_pay(o.per_token_s)]
        untried = [o for o in options if o.key not in self._tried]
        if untried:
            return untried, True
        if self.steps - self._last_try < self.explore_gap:
            return [], False
        return [o for o in options if self._credit >= self._try_cost(o.per_token_s)], False

    def plan(
        self,
        lookup: tuple[list[int], int] | None,
        heads_room: int,
        extend: Callable[[], tuple[list[int], int]] | None = None,
        extension_room: int = 0,
    ) -> tuple[str, int]:
        """(Proposal.source or "", m): the proposal and the number of tokens to draft (for
        heads+lookup: heads_room heads' tokens, then m - heads_room lookup tokens at most).
        lookup: the lookup's (draft, match length), None if there is none this step;
        heads_room: the most tokens the heads may draft (0 if they are not used);
        extend: the lookup after the heads' heads_room tokens (draft of at most
        extension_room tokens, match length), None where heads+lookup is not used."""
        options = []
        if lookup and lookup[0]:
            options.append(self._lookup_option(lookup[1], len(lookup[0])))
        if heads_room > 0:
            options.append(self._heads_option(heads_room))
        paying = [o for o in options if o.m and self._pays(o.speed)]
        if extend is not None and heads_room > 0 and extension_room > 0:
            best = max((o.speed for o in paying), default=0.0)
            bound = max(self._combined_option(n, heads_room, extension_room).speed for n in range(1, MAX_NGRAM + 1))
            heads_tried = not paying and any(o.source == "heads" for o in self._tries(options)[0])
            if (self._pays(bound) and bound > best) or heads_tried:
                found, ngram = extend()
                if found:
                    combined = self._combined_option(ngram, heads_room, len(found))
                    options.append(combined)
                    if combined.m and self._pays(combined.speed):
                        paying.append(combined)
        if paying:
            choice = max(paying, key=lambda o: o.speed)
            self._tried[choice.key] = self.steps
            return choice.source, choice.m
        candidates, untried = self._tries(options)
        if not candidates:
            return "", 0
        choice = min(candidates, key=lambda o: self._tried.get(o.key, -1))  # the one tried longest ago
        if not untried:
            self._credit -= self._try_cost(choice.per_token_s)
            self._last_try = self.steps
        self._tried[choice.key] = self.steps
        self.explored += 1
        return choice.source, choice.room

    def record(self, proposal: Proposal, accepted: int, verified: int) -> None:
        """The first `accepted` of the proposal's first `verified` tokens were accepted. The
        lookup part says something only where the heads' part before it was all accepted;
        where it was verified, it moves the copy streak."""
        heads = proposal.heads
        if heads:
            self._record("heads", self.heads, min(verified, heads), min(accepted, heads))
        if verified > heads and accepted >= heads:
            name, tables = ("extension", self.extension) if heads else ("lookup", self.lookup)
            key = (name, proposal.ngram, self.streak)
            self._record(key, self._table(tables, proposal.ngram), verified - heads, accepted - heads)
            self.streak = min(self.max_streak, self.streak + 1) if accepted == verified else 0
        self._verdict = None

    def observe_lookup(self, ngram: int, streak: int, accepted: int, verified: int) -> None:
        """A lookup continuation found at `streak` but not drafted: the tokens committed after
        it agreed with its first `accepted` of `verified`. The same evidence a draft would
        have given (with sampling, a committed token equals a one-hot draft with the
        probability that the draft would have been accepted), for nothing."""
        if verified < 1:
            return
        table = self.lookup.setdefault((ngram, streak), Acceptance())
        self._record(("lookup", ngram, streak), table, verified, accepted)
        before = self.streak
        self.streak = min(self.max_streak, streak + 1) if accepted == verified else 0
        if self.streak != before:
            self._verdict = None  # (one observation's change of a rate waits for the 16-step renewal)

    def observe_forward(self, n_rows: int, seconds: float) -> None:
        self.cost.observe(n_rows, seconds)

    def observe_draft(self, n_heads: int, seconds: float) -> None:
        self.cost.observe_draft(n_heads, seconds)


def heads_priors(model_dir: Path | str) -> tuple[float, ...]:
    """The heads' conditional acceptance per draft position as the model's card.json measured
    it: the bench row with the most heads (its acceptance per position is unconditional,
    P(at least i + 1 drafts accepted)), else the held-out top-1 accuracy of heads 2..n.
    () where the card is missing or says nothing usable: it is only a prior."""
    try:
        card = json.loads((Path(model_dir) / "card.json").read_text())
        unconditional: list[float] = []
        rows = [r for r in (card.get("bench") or {}).get("rows", []) if r.get("acceptance")]
        if rows:
            unconditional = [float(a) for a in max(rows, key=lambda r: r["k"])["acceptance"]]  # the first of the most heads
        elif card.get("heldout_heads", {}).get("accuracy_per_head"):
            unconditional = [float(a) for a in card["heldout_heads"]["accuracy_per_head"][1:]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return ()
    priors, before = [], 1.0
    for a in unconditional:
        if not 0 < a <= 1 or before <= 0:
            break
        priors.append(min(0.99, max(0.01, a / before)))
        before = a
    return tuple(priors)


def planner_for(model_dir: Path | str | None) -> DraftPlanner:
    """An engine's planner (its cost curve is set per k when auto first decodes): the heads'
    prior from the model's card where it has one."""
    priors = heads_priors(model_dir) if model_dir is not None else ()
    heads = Acceptance(prior=priors[-1], weight=CARD_PRIOR_WEIGHT, priors=priors) if priors else Acceptance(
        prior=DEFAULT_HEADS_PRIOR
    )
    return DraftPlanner(CostCurve.free(), heads=heads)


def probe_prefix(max_seq_len: int) -> int:
    """Where the probe measures: a completion's prompt is most of the context, and what R rows
    cost next to one changes with the positions attended to (the attention's share)."""
    return max(1, min(256, max_seq_len // 2))


def probe_costs(step, k: int, max_rows: int = 8, prefix: int = 32, repeats: int = 5, token: int = 0) -> CostCurve:
    """Measure on `step` (a speculative.StepModel; its cache is overwritten) what one forward of
    R = 1..max_rows rows costs after a short prefix, k heads as decode runs them, what one
    head's draft costs and what a 1-row forward after several rows costs more than one after
    one row (CostCurve.switch_s). Medians of `repeats`, the R interleaved so that a busy
    moment on a shared machine spreads over all of them."""

    def timed(r: int):
        clock = time.perf_counter()
        out = step.forward([token] * r, prefix, k)
        out.next_logits()
        return out, time.perf_counter() - clock

    step.forward([token] * prefix, 0, k, all_rows=False).next_logits(prefix - 1)
    times: list[list[float]] = [[] for _ in range(max_rows)]
    after_rows: list[float] = []  # a 1-row forward right after one of several rows
    heads: list[float] = []
    for _ in range(repeats):
        for r in range(1, max_rows + 1):
            out, seconds = timed(r)
            if r > 1:
                times[r - 1].append(seconds)
                if k > 1:
                    clock = time.perf_counter()
                    out.draft_logits(0)
                    heads.append((time.perf_counter() - clock) / (k - 1))
                after_rows.append(timed(1)[1])
            times[0].append(timed(1)[1])  # after one row
    rows = [statistics.median(t) for t in times]
    switch = max(0.0, statistics.median(after_rows) - rows[0]) if after_rows else 0.0
    # A curve that falls with R is noise: what R rows cost is at least what fewer cost.
    rows = list(np.maximum.accumulate(rows))
    return CostCurve(rows, statistics.median(heads) if heads else 0.0, switch)


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
                return CostCurve(rows, float(data["head_s"]), float(data["switch_s"]))
        except (ValueError, KeyError, TypeError, OSError):
            pass
    curve = measure()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"rows": curve.rows, "head_s": curve.head_s, "switch_s": curve.switch_s}))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: measure again next time
    return curve
