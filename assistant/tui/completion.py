"""One completion at a cursor, the way `mtp-assistant complete` makes it, plus which
head drafted each piece of its text. Runs in a thread worker; no UI here."""

from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass

from assistant.completion.prompt import PromptBudget, build_prompt, generate, split_at
from assistant.engine.base import DecodeStats, GenerationConfig


@dataclass
class Completion:
    text: str
    pieces: list[tuple[str, int]]  # (text of one token, head that drafted it); joined = text
    stats: DecodeStats
    stop_reason: str
    n_future: int
    engine: str  # e.g. "torch" or "llama q8_0"


def token_pieces(
    tokenizer, tokens: list[int], heads: list[int], text: str, healed: bytes = b""
) -> list[tuple[str, int]]:
    """Each token's text with its head, after the healed bytes (GenerationConfig.heal_bytes)
    and cut where the result's text ends (a stop string)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, used, skip = [], 0, len(healed)
    for token, head in zip(tokens, heads):
        data = tokenizer.token_bytes(token)
        data, skip = data[skip:], max(0, skip - len(data))  # the healed bytes are not new text
        piece = decoder.decode(data)  # "" while a character is split
        piece = piece[: max(0, len(text) - used)]
        if piece:
            pieces.append((piece, head))
            used += len(piece)
    return pieces


def complete_at(
    engine,
    text: str,
    line: int,
    column: int,
    max_tokens: int = 32,
    multiline: bool = False,
    cancel: threading.Event | None = None,
    k: int | None = None,
) -> Completion:
    """The completion at a 0-based line and column of `text` (k: heads used, None = all)."""
    prefix, suffix = split_at(text, line, column)
    # The prompt leaves room in the model's context for the completion.
    budget = PromptBudget(max_tokens=min(1024, engine.max_seq_len - max_tokens - engine.n_future))
    prompt = build_prompt(engine.tokenizer, prefix, suffix, budget)
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        k=k,
        stop_token_ids=(engine.tokenizer.eot_id,),
        stop_strings=() if multiline else ("\n",),
    )
    result = generate(engine, prompt, config, cancel)
    heads = result.token_heads or [1] * len(result.tokens)
    pieces = token_pieces(engine.tokenizer, result.tokens, heads, result.text, prompt.heal)
    return Completion(result.text, pieces, result.stats, result.stop_reason, engine.n_future, engine_name(engine))


def engine_name(engine) -> str:
    name = type(engine).__name__.removesuffix("Engine").lower()
    quant = getattr(engine, "quant", None)
    return f"{name} {quant}" if isinstance(quant, str) else name
