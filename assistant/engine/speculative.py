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
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from assistant.engine.base import (
    STOP_CANCELLED,
    STOP_CONTEXT,
    STOP_MAX_TOKENS,
    STOP_STRING,
    STOP_TIME,
    STOP_TOKEN,
    DecodeStats,
    GenerationConfig,
)


class StepOutput(Protocol):
    def next_logits(self) -> torch.Tensor:
        """Head 1's logits at every fed position: (T, V)."""

    def draft_logits(self, index: int) -> torch.Tensor:
        """Heads 2..k's logits at fed position `index`: (k - 1, V)."""


class StepModel(Protocol):
    """What the decoding loop needs from a backend."""

    def forward(self, tokens: Sequence[int], start_pos: int, k: int) -> StepOutput:
        """Write `tokens` into the KV cache at start_pos.. (overwriting whatever was
        there: that is how rejected drafts are rolled back) and run heads 1..k."""


@dataclass
class DecodeOutcome:
    tokens: list[int]  # new tokens (stop token excluded)
    stop_reason: str
    cached_len: int  # positions of prompt + tokens whose KV is valid in the cache
    stats: DecodeStats


class _Chooser:
    """Greedy or sampled choice of tokens, and the matching accept rule."""

    def __init__(self, temperature: float, seed: int):
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def pick(self, dist: torch.Tensor) -> int:
        """dist: logits when greedy, probabilities when sampling."""
        if self.greedy:
            return int(dist.argmax())
        return int(torch.multinomial(dist, 1, generator=self.generator))

    def draft_dists(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.greedy else self.probs(logits)

    def verify(self, target_logits: torch.Tensor, draft: int, draft_dist: torch.Tensor) -> tuple[bool, torch.Tensor]:
        """Accept or reject one draft; returns (accepted, distribution of the next token
        when rejected: head 1's own argmax when greedy, the residual when sampling)."""
        if self.greedy:
            return int(target_logits.argmax()) == draft, target_logits
        p, q = self.probs(target_logits), draft_dist
        if torch.rand((), generator=self.generator) * q[draft] < p[draft]:  # u < p/q without dividing by 0
            return True, p
        residual = (p - q).clamp(min=0)
        total = residual.sum()
        return False, (residual / total if total > 0 else p)


def decode(
    model: StepModel,
    prompt: Sequence[int],
    start_pos: int,
    config: GenerationConfig,
    k: int,
    max_seq_len: int,
    token_bytes: Callable[[int], bytes],
    cancel: threading.Event | None = None,
) -> DecodeOutcome:
    """Generate after `prompt`, whose first `start_pos` tokens are already cached."""
    if not 0 <= start_pos < len(prompt):
        raise ValueError(f"start_pos {start_pos} must leave at least one of {len(prompt)} prompt tokens to feed")
    chooser = _Chooser(config.temperature, config.seed)
    stats = DecodeStats(
        prompt_tokens=len(prompt), reused_tokens=start_pos, draft_proposed=[0] * (k - 1), draft_accepted=[0] * (k - 1)
    )
    stop_ids = set(config.stop_token_ids)
    stop_strings = [s.encode("utf-8") for s in config.stop_strings if s]
    deadline = None if config.time_cap_s is None else time.perf_counter() + config.time_cap_s
    tokens: list[int] = []
    text = bytearray()

    def emit(token: int) -> str | None:
        """Append one token; the stop reason if generation must end here."""
        if token in stop_ids:
            return STOP_TOKEN
        tokens.append(token)
        if stop_strings:
            text.extend(token_bytes(token))
            tail = bytes(text[-(max(map(len, stop_strings)) + 64) :])
            if any(s in tail for s in stop_strings):
                return STOP_STRING
        if len(tokens) >= config.max_new_tokens:
            return STOP_MAX_TOKENS
        return None

    started = time.perf_counter()
    if config.max_new_tokens == 0:
        return DecodeOutcome([], STOP_MAX_TOKENS, start_pos, stats)
    out = model.forward(prompt[start_pos:], start_pos, k)
    stats.forward_passes = 1
    position = len(prompt)  # next cache position to write; everything before is cached
    last = len(prompt) - start_pos - 1
    next_dist = chooser.draft_dists(out.next_logits()[last])
    draft_dists = chooser.draft_dists(out.draft_logits(last)) if k > 1 else None
    stats.prefill_s = time.perf_counter() - started

    reason = None
    while True:
        token = chooser.pick(next_dist)
        reason = emit(token)
        if reason is not None:
            break
        if cancel is not None and cancel.is_set():
            reason = STOP_CANCELLED
            break
        if deadline is not None and time.perf_counter() > deadline:
            reason = STOP_TIME
            break
        # Drafts beyond what is still wanted or fits in the context are not worth verifying.
        room = min(k - 1, config.max_new_tokens - len(tokens), max_seq_len - position - 1)
        if room < 0:
            reason = STOP_CONTEXT
            break
        drafts = [chooser.pick(draft_dists[i]) for i in range(room)] if draft_dists is not None else []

        out = model.forward([token, *drafts], position, k)
        stats.forward_passes += 1
        verify_logits = out.next_logits()  # (1 + room, V)
        accepted = 0
        next_dist = None
        for i in range(len(drafts)):
            stats.draft_proposed[i] += 1  # unconditional: acceptance[i] = P(at least i + 1 drafts accepted)
        for i, draft in enumerate(drafts):
            ok, dist = chooser.verify(verify_logits[i], draft, draft_dists[i])
            if not ok:
                next_dist = dist
                break
            stats.draft_accepted[i] += 1
            accepted += 1
            reason = emit(draft)
            if reason is not None:
                break
        position += 1 + accepted  # the token and the accepted drafts are now cached
        if reason is not None:
            break
        if next_dist is None:  # every draft accepted: head 1's own next token
            next_dist = chooser.draft_dists(verify_logits[accepted])
        draft_dists = chooser.draft_dists(out.draft_logits(accepted)) if k > 1 else None

    stats.new_tokens = len(tokens)
    stats.decode_s = time.perf_counter() - started - stats.prefill_s
    # The last emitted token is cached only if a forward consumed it.
    cached_len = min(position, len(prompt) + len(tokens))
    return DecodeOutcome(tokens, reason, cached_len, stats)
