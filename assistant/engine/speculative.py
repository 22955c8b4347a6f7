"""Self-speculative decoding as plain functions, shared by every backend.

One step of blockwise parallel decoding with k heads:

    known: the next token t (from head 1) and drafts d2..dk (from heads 2..k), all read
           at the last position whose KV is cached
    feed [t, d2, ..., dk] in one forward; head 1 at each fed position verifies the draft
    that follows it; accept the longest agreeing prefix d2..d(a+1); head 1 at the last
    accepted position gives the next t, heads 2..k there the next drafts.

Every forward commits t plus the accepted drafts, so tokens per forward is 1 + a. With
greedy choice the output is exactly plain greedy decoding's. With sampling each draft is
accepted with probability min(1, p/q) and a rejection resamples from max(0, p - q)
renormalised (Leviathan et al. 2023, Chen et al. 2023), so the output follows plain
sampling's distribution exactly. k = 1 is plain autoregressive decoding.

With token healing (GenerationConfig.heal_bytes) head 1 chooses only among the tokens
that agree with the healed bytes until they are written, and nothing is drafted
meanwhile: those steps are plain steps in every k, so the output stays plain decoding's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, Union

import numpy as np
import torch

from assistant.engine.base import (
    DRAFTERS,
    STOP_CANCELLED,
    STOP_CONTEXT,
    STOP_MAX_TOKENS,
    STOP_STRING,
    STOP_TIME,
    STOP_TOKEN,
    DecodeStats,
    GenerationConfig,
)
from assistant.engine.drafting import LOOKUP_HEAD, SHADOW_TOKENS, CostCurve, DraftPlanner, History, Proposal
from assistant.engine.healing import allowed_tokens, restrict, still_to_heal


# Logits as a backend has them: a torch tensor, or a numpy array (llama.cpp's, which greedy
# decoding reads without a trip through torch: that trip costs more per token than the
# rest of the loop).
Logits = Union[torch.Tensor, np.ndarray]


class StepOutput(Protocol):
    def next_logits(self, start: int = 0) -> Logits:
        """Head 1's logits at the fed positions from `start` on: (T - start, V). A prefill
        (more than k tokens fed) is only asked for its last position."""

    def draft_logits(self, index: int, n: int | None = None) -> Logits:
        """Heads 2..n+1's logits at fed position `index`: (n, V); n None: every head, k - 1."""


class StepModel(Protocol):
    """What the decoding loop needs from a backend."""

    def forward(self, tokens: Sequence[int], start_pos: int, k: int, all_rows: bool = True) -> StepOutput:
        """Write `tokens` into the KV cache at start_pos.. (overwriting whatever was
        there: that is how rejected drafts are rolled back) and run heads 1..k. all_rows
        False (a prefill): only the last position's head-1 logits will be asked for."""


@dataclass
class DecodeOutcome:
    tokens: list[int]  # new tokens (stop token excluded)
    stop_reason: str
    cached_len: int  # positions of prompt + tokens whose KV is valid in the cache
    stats: DecodeStats
    # Per token: 1 = head 1's own token, i >= 2 = head i's draft that head 1 accepted,
    # 0 (LOOKUP_HEAD) = a lookup draft's.
    token_heads: list[int] = field(default_factory=list)


class _Greedy:
    """Greedy choice: a row of logits becomes its argmax, computed for all rows at once."""

    def prepare(self, logits: Logits) -> list[int]:
        return logits.argmax(-1).tolist()  # (R, V) -> R ids; the first of equal maxima, in both libraries

    def pick(self, row: int) -> int:
        return row

    def likeliest(self, rows: list[int]) -> list[int]:
        return rows

    def verify(self, target: int, draft: int, draft_row: int) -> tuple[bool, int]:
        """Accept the draft if head 1 agrees; else head 1's own token comes next."""
        return target == draft, target


class _Sampling:
    """Sampling at a temperature, with the speculative-sampling accept rule."""

    def __init__(self, temperature: float, seed: int):
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)

    def prepare(self, logits: Logits) -> torch.Tensor:
        return torch.softmax(torch.as_tensor(logits).double() / self.temperature, dim=-1)  # (R, V) probabilities

    def pick(self, row: torch.Tensor) -> int:
        return int(torch.multinomial(row, 1, generator=self.generator))

    def likeliest(self, rows: torch.Tensor) -> list[int]:
        """Each row's most likely token: what a choice may look at before the token is drawn."""
        return rows.argmax(-1).tolist()

    def verify(self, p: torch.Tensor, draft: int, q: torch.Tensor | None) -> tuple[bool, torch.Tensor]:
        """Accept with probability min(1, p/q); else the next token follows max(0, p - q).
        q None is a deterministic proposal (one-hot at the draft, as a lookup's): accept with
        probability p(draft), else resample from p without the draft, renormalised."""
        q_draft = 1.0 if q is None else q[draft]
        if torch.rand((), generator=self.generator, dtype=torch.float64) * q_draft < p[draft]:  # u < p/q, no division
            return True, p
        if q is None:
            residual = p.clone()
            residual[draft] = 0.0  # max(0, p - onehot): p(draft) - 1 <= 0
        else:
            residual = (p - q).clamp(min=0)
        total = residual.sum()
        return False, (residual / total if total > 0 else p)




def forward_heads(config: GenerationConfig, n_future: int) -> int:
    """The k an engine decodes with: the heads config asks for, 1 (none) when only lookup drafts."""
    if config.drafter not in DRAFTERS:
        raise ValueError(f"unknown drafter {config.drafter!r}; choose from {', '.join(DRAFTERS)}")
    return 1 if config.drafter == "lookup" else min(config.k or n_future, n_future)


def decode(
    model: StepModel,
    prompt: Sequence[int],
    start_pos: int,
    config: GenerationConfig,
    k: int,
    max_seq_len: int,
    token_bytes: Callable[[int], bytes],
    cancel: threading.Event | None = None,
    planner: DraftPlanner | None = None,
) -> DecodeOutcome:
    """Generate after `prompt`, whose first `start_pos` tokens are already cached.

    config.drafter says who drafts: "heads" (heads 2..k, every step as many as fit),
    "lookup" (context lookup, config.draft_len tokens at most), "heads+lookup" (every step
    the heads' tokens, then the lookup continuation after them, config.draft_len tokens in
    all at most), "both" (each step the proposal of those three expected to commit more
    tokens, by the acceptance learned in this call) or "auto" (the proposal and length that
    maximise expected tokens per second: `planner`, the engine's, which knows the cost of a
    forward)."""
    if not 0 <= start_pos < len(prompt):
        raise ValueError(f"start_pos {start_pos} must leave at least one of {len(prompt)} prompt tokens to feed")
    drafter = config.drafter
    if drafter == "auto" and planner is None:
        raise ValueError("the auto drafter needs the engine's planner (the cost of a forward on this machine)")
    if drafter == "both" and planner is None:
        planner = DraftPlanner(CostCurve.free())  # a free verifier: draft as much as is expected to be right
    if planner is not None:
        planner.begin()
    uses_heads = drafter != "lookup" and k > 1
    uses_lookup = drafter != "heads"
    chooser = _Greedy() if config.temperature == 0 else _Sampling(config.temperature, config.seed)
    max_draft = max(k - 1 if uses_heads else 0, config.draft_len if uses_lookup else 0)
    stats = DecodeStats(
        prompt_tokens=len(prompt), reused_tokens=start_pos, draft_proposed=[0] * max_draft, draft_accepted=[0] * max_draft
    )
    if uses_lookup:
        stats.lookup_proposed, stats.lookup_accepted = [0] * max_draft, [0] * max_draft
    stop_ids = set(config.stop_token_ids)
    stop_strings = [s.encode("utf-8") for s in config.stop_strings if s]
    longest_stop = max(map(len, stop_strings), default=1)
    deadline = None if config.time_cap_s is None else time.perf_counter() + config.time_cap_s
    tokens: list[int] = []
    token_heads: list[int] = []
    history = History(prompt, config.max_new_tokens, config.lookup_tokens) if uses_lookup else None
    text = bytearray()  # the new text after the healed bytes (only kept to find stop strings)
    to_heal = config.heal_bytes  # healed bytes not yet written
    healed_left_to_skip = len(to_heal)  # of the new bytes, not part of the new text
    never_while_healing = tuple(sorted(stop_ids))  # ending inside the healed bytes would lose them

    def healing(logits: Logits) -> Logits:
        """(R, V) logits restricted to the tokens that agree with the bytes left to heal."""
        if not to_heal:
            return logits
        logits = torch.as_tensor(logits)
        return restrict(logits, allowed_tokens(token_bytes, logits.shape[-1], to_heal, never_while_healing))

    def emit(token: int, head: int) -> str | None:
        """Append one token (drafted by `head`); the stop reason if generation must end here."""
        nonlocal healed_left_to_skip
        if token in stop_ids:
            return STOP_TOKEN
        tokens.append(token)
        token_heads.append(head)
        if history is not None:
            history.append(token)
        if stop_strings:
            piece = token_bytes(token)
            skipped = min(healed_left_to_skip, len(piece))
            piece, healed_left_to_skip = piece[skipped:], healed_left_to_skip - skipped
            text.extend(piece)
            # A new occurrence must end inside this token's bytes.
            tail = bytes(text[-(len(piece) + longest_stop - 1) :])
            if any(s in tail for s in stop_strings):
                return STOP_STRING
        if len(tokens) >= config.max_new_tokens:
            return STOP_MAX_TOKENS
        return None

    def heads_rows(n: int):
        """Heads 2..n+1's prepared rows at the last accepted position (their logits computed now)."""
        clock = time.perf_counter()
        logits = out.draft_logits(last_index, n)  # (n, V)
        elapsed = time.perf_counter() - clock
        stats.model_s += elapsed
        if planner is not None:
            planner.observe_draft(n, elapsed)
        return chooser.prepare(logits)

    def heads_draft(n: int, rows=None) -> Proposal:
        """The heads' first n tokens, drawn now (from `rows` where already prepared)."""
        rows = heads_rows(n) if rows is None else rows
        return Proposal([chooser.pick(rows[i]) for i in range(n)], "heads", rows, heads=n)

    def extended(heads: Proposal | None, room: int, m: int | None = None) -> Proposal | None:
        """`heads` followed by the lookup continuation of the n-gram that ends with their
        tokens (m tokens in all at most, None: as many as `room` allows); the heads alone
        where no lookup matches."""
        before = heads.tokens if heads else []
        found, ngram = history.lookup(min(room, m or room) - len(before), after=before)
        if not heads:
            return Proposal(found, "lookup", ngram=ngram) if found else None
        if not found:
            return heads
        return Proposal(before + found, "heads+lookup", heads.rows, ngram=ngram, heads=len(before))

    # Lookup continuations found but not drafted: (history length, continuation, match length, streak).
    shadows: list[tuple[int, list[int], int, int]] = []

    def check_shadows() -> None:
        """Tell the planner how each undrafted lookup continuation fared against the tokens
        committed since: as a draft of its first SHADOW_TOKENS would have (one token right
        is weak evidence of a copy where a few tokens are possible; two in a row is less
        often luck)."""
        while shadows:
            at, found, ngram, streak = shadows[0]
            committed = history.ids[at : history.length].tolist()
            need = min(len(found), SHADOW_TOKENS)
            agree = next((i for i, (a, b) in enumerate(zip(found[:need], committed)) if a != b), None)
            if agree is None and len(committed) < need:
                return  # not all in yet (the later ones are younger)
            accepted = need if agree is None else agree
            planner.observe_lookup(ngram, streak, accepted, need if agree is None else agree + 1)
            shadows.pop(0)

    def propose(room: int) -> Proposal | None:
        """The draft for this step, of at most `room` tokens; None: a plain step."""
        if shadows:
            check_shadows()
        if room <= 0:
            return None
        if drafter == "heads":
            return heads_draft(min(room, k - 1)) if k > 1 else None
        if drafter == "lookup":
            found, ngram = history.lookup(min(room, config.draft_len))
            return Proposal(found, "lookup", ngram=ngram) if found else None
        lookup_room, heads_room = min(room, config.draft_len), min(room, k - 1) if uses_heads else 0
        if drafter == "heads+lookup":
            return extended(heads_draft(heads_room) if heads_room else None, lookup_room)
        want_lookup, want_heads = planner.wanted(lookup_room, heads_room)
        if not (want_lookup or want_heads):
            return None  # no draft would pay, even a right one: a plain step, no lookup, no planning
        found, ngram = history.lookup(lookup_room) if want_lookup else ([], 0)
        rows = None

        def extend() -> tuple[list[int], int]:
            # What the choice may know before the heads' tokens are drawn: the lookup after
            # their likeliest tokens (with greedy choice, the tokens themselves).
            nonlocal rows
            rows = heads_rows(heads_room)
            return history.lookup(lookup_room - heads_room, after=chooser.likeliest(rows))

        use_both = want_lookup and want_heads and lookup_room > heads_room > 0
        source, m = planner.plan((found, ngram) if found else None, heads_room if want_heads else 0,
                                 extend if use_both else None, lookup_room - heads_room)
        if source == "lookup":
            return Proposal(found[:m], "lookup", ngram=ngram)
        if found and source != "heads+lookup" and planner.max_streak > 0:  # its extension is checked as it is drafted
            shadows.append((history.length, found, ngram, planner.streak))
        if source == "heads":
            return heads_draft(m, rows)
        if source == "heads+lookup":
            # The heads' tokens are drawn now; the lookup follows the ones drawn.
            return extended(heads_draft(heads_room, rows), lookup_room, m)
        return None

    started = time.perf_counter()
    if config.max_new_tokens == 0:
        return DecodeOutcome([], STOP_MAX_TOKENS, start_pos, stats)
    clock = time.perf_counter()
    out = model.forward(prompt[start_pos:], start_pos, k, all_rows=False)
    last_index = len(prompt) - start_pos - 1  # fed position of the last accepted token in `out`
    next_logits = healing(out.next_logits(last_index))  # (1, V)
    stats.model_s += time.perf_counter() - clock
    stats.forward_passes = 1
    position = len(prompt)  # next cache position to write; everything before is cached
    next_row = chooser.prepare(next_logits)[0]
    stats.prefill_s = time.perf_counter() - started

    reason = None
    while True:
        token = chooser.pick(next_row)
        if to_heal:
            to_heal = still_to_heal(to_heal, token_bytes(token))
        reason = emit(token, 1)
        if reason is not None:
            break
        if cancel is not None and cancel.is_set():
            reason = STOP_CANCELLED
            break
        if deadline is not None and time.perf_counter() > deadline:
            reason = STOP_TIME
            break
        # Drafts beyond what is still wanted or fits in the context are not worth verifying;
        # none while healing (they would be verified against unrestricted logits).
        room = min(0 if to_heal else max_draft, config.max_new_tokens - len(tokens), max_seq_len - position - 1)
        if room < 0:
            reason = STOP_CONTEXT
            break
        proposal = propose(room)
        drafts = proposal.tokens if proposal else []

        clock = time.perf_counter()
        out = model.forward([token, *drafts], position, k)
        verify_logits = out.next_logits()  # (1 + len(drafts), V)
        if planner is not None:
            planner.observe_forward(1 + len(drafts), time.perf_counter() - clock)
        verify_logits = healing(verify_logits)  # no drafts while healing
        stats.model_s += time.perf_counter() - clock
        stats.forward_passes += 1
        verify_rows = chooser.prepare(verify_logits)
        accepted = 0
        next_row = None
        n_heads = proposal.heads if proposal else 0  # the heads' positions come first; the rest are lookup's
        for i in range(len(drafts)):
            stats.draft_proposed[i] += 1  # unconditional: acceptance[i] = P(at least i + 1 drafts accepted)
            if i >= n_heads:
                stats.lookup_proposed[i] += 1
        for i, draft in enumerate(drafts):
            by_heads = i < n_heads
            ok, row = chooser.verify(verify_rows[i], draft, proposal.rows[i] if by_heads else None)
            if not ok:
                next_row = row
                break
            stats.draft_accepted[i] += 1
            if not by_heads:
                stats.lookup_accepted[i] += 1
            accepted += 1
            reason = emit(draft, i + 2 if by_heads else LOOKUP_HEAD)
            if reason is not None:
                break
        if planner is not None and proposal is not None:
            # A stop inside the draft left the rest unverified: it says nothing about them.
            planner.record(proposal, accepted, verified=len(drafts) if reason is None else accepted)
            if len(drafts) > proposal.heads:
                shadows.clear()  # a lookup draft verified now says more of the streak than the older ones
        position += 1 + accepted  # the token and the accepted drafts are now cached
        last_index = accepted
        if reason is not None:
            break
        if next_row is None:  # every draft accepted: head 1's own next token
            next_row = verify_rows[accepted]

    stats.new_tokens = len(tokens)
    stats.decode_s = time.perf_counter() - started - stats.prefill_s
    # The last emitted token is cached only if a forward consumed it.
    cached_len = min(position, len(prompt) + len(tokens))
    return DecodeOutcome(tokens, reason, cached_len, stats, token_heads)
