"""The decoding engine interface: token ids in, token ids and stats out.

An engine knows nothing of editors. The completion service and the benchmark talk to
any backend (torch today, llama.cpp next) through `Engine.generate`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from assistant.errors import UserError


DRAFTERS = ("heads", "lookup", "heads+lookup", "both", "auto")  # GenerationConfig.drafter


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    # Heads used: 1 is plain autoregressive decoding, k > 1 drafts with heads 2..k.
    # None means all of the model's heads.
    k: int | None = None
    temperature: float = 0.0  # 0: greedy; > 0: sampling (speculative sampling when k > 1)
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    time_cap_s: float | None = None  # checked between forward passes
    reuse_prefix: bool = True  # keep the KV cache of the longest common prefix between calls
    # Token healing (engine/healing.py): bytes cut from the end of the prompt's text that the
    # generation must write first, in tokens of the model's choosing. They are not part of
    # the result's text and stop strings are looked for only after them.
    heal_bytes: bytes = b""
    # Who drafts (engine/drafting.py): "heads" (heads 2..k), "lookup" (n-gram matches in the
    # prompt, the generated text and lookup_tokens), "heads+lookup" (the heads' tokens, then
    # the lookup continuation after them), "both" (per step the one of those expected to
    # commit more) or "auto" (proposal and length by expected tokens per second on this
    # machine; zero when nothing pays). The output is the same for every drafter.
    drafter: str = "heads"
    draft_len: int = 8  # the most tokens a lookup (or heads+lookup) draft proposes
    # More token sequences a lookup may copy from (the completion context's snippets).
    lookup_tokens: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.drafter not in DRAFTERS:
            raise UserError(f"drafter must be one of {', '.join(DRAFTERS)}, got {self.drafter!r}")
        if self.draft_len < 1:
            raise UserError(f"draft_len must be >= 1, got {self.draft_len}")
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.k is not None and self.k < 1:
            raise UserError(f"k must be >= 1, got {self.k}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class DecodeStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from the previous call
    new_tokens: int = 0
    forward_passes: int = 0  # the prefill included: it yields the first new token
    draft_proposed: list[int] = field(default_factory=list)  # per draft position (heads 2..k)
    draft_accepted: list[int] = field(default_factory=list)
    # Of those, the lookup drafter's (empty where it did not draft); the rest are the heads'.
    lookup_proposed: list[int] = field(default_factory=list)
    lookup_accepted: list[int] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    model_s: float = 0.0  # inside the backend's forwards and unembeddings; the rest is the loop

    @property
    def wall_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def loop_overhead(self) -> float:
        """Share of the wall time spent outside the model: the Python decoding loop."""
        return max(0.0, self.wall_s - self.model_s) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.forward_passes if self.forward_passes else 0.0

    @property
    def decode_step_s(self) -> float:
        """Mean time of a decoding forward (every forward after the prefill); 0 if none."""
        return self.decode_s / (self.forward_passes - 1) if self.forward_passes > 1 else 0.0

    @property
    def acceptance(self) -> list[float]:
        """Fraction of drafts accepted at each draft position (head 2 first)."""
        return [a / p if p else 0.0 for a, p in zip(self.draft_accepted, self.draft_proposed)]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0


# Why a generation ended.
STOP_MAX_TOKENS = "max_tokens"
STOP_TOKEN = "stop_token"
STOP_STRING = "stop_string"
STOP_TIME = "time_cap"
STOP_CANCELLED = "cancelled"
STOP_CONTEXT = "context_full"


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# The smallest context an engine serves: PromptBudget's floor of 8 prompt tokens, a
# completion of a dozen and the heads' draft positions. Below it every request would fail.
MIN_CONTEXT = 32


def check_min_context(model_dir: Path | str, max_seq_len: int) -> None:
    """Raise, naming config.json, if the model's context is too small to complete in."""
    if max_seq_len < MIN_CONTEXT:
        from models.checkpoint import CONFIG_FILE, ModelFileError

        raise ModelFileError(
            Path(model_dir) / CONFIG_FILE,
            f"max_seq_len {max_seq_len} is too small to serve completions: "
            f"a prompt and its completion need a context of at least {MIN_CONTEXT} positions",
        )


def checked_prompt(prompt: Sequence[int], max_seq_len: int, vocab_size: int) -> list[int]:
    """The prompt as a list, or ValueError if it is empty, leaves no room to generate or
    holds an id the model has no embedding for (checked before any cache is touched)."""
    prompt = list(prompt)
    if not prompt:
        raise UserError("the prompt must hold at least one token")
    if len(prompt) >= max_seq_len:
        raise UserError(f"prompt of {len(prompt)} tokens leaves no room in the context of {max_seq_len}")
    if any(not 0 <= t < vocab_size for t in prompt):
        raise UserError(f"prompt holds a token id outside the vocabulary of {vocab_size}")
    return prompt


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the earliest stop string."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[: min(cuts)] if cuts else text


def result_text(tokenizer, tokens: Sequence[int], config: GenerationConfig) -> str:
    """Every backend's result text: the new tokens' text after the healed bytes, cut
    before the earliest stop string."""
    data = tokenizer.decode_bytes(tokens)[len(config.heal_bytes) :]
    return cut_at_stop_strings(data.decode("utf-8", errors="replace"), config.stop_strings)


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens; a stop token is not included
    text: str  # their text, cut before a stop string
    stop_reason: str
    stats: DecodeStats
    # Same length as tokens: 1 = head 1's own next token, i >= 2 = a draft from head i
    # that head 1 accepted (what the TUI colours).
    token_heads: list[int] = field(default_factory=list)


class Engine(Protocol):
    n_future: int
    max_seq_len: int
    # One-line problems found at load that did not stop it (e.g. "auto" fell back to torch
    # because the GGUF export is unusable): for the caller to show its user.
    warnings: list[str]
    # Whether greedy speculative output is plain greedy output token for token. A fast
    # engine may part from it where two tokens nearly tie (kernels that round a k-row
    # verify and a 1-row step differently).
    exact: bool
    # How logs, stats and screens name it: "torch", "torch cuda bfloat16", "llama.cpp q8_0".
    label: str
    # CPU threads of a 1-row forward and of a forward of several rows (a prompt, a draft's
    # verification), as the engine runs them.
    threads: tuple[int, int]

    def generate(
        self,
        prompt: Sequence[int],
        config: GenerationConfig = GenerationConfig(),
        cancel: threading.Event | None = None,
    ) -> GenerationResult: ...
