"""Fill-in-the-middle (FIM) prompt formats and the training-time transform.

A completion request has code before the cursor (prefix) and after it
(suffix). The model learns to write the missing middle from documents cut
into three pieces and rearranged with special tokens:

    PSM: [PRE] prefix [SUF] suffix [MID] middle [EOT]
    SPM: [SUF] suffix [PRE] prefix [MID] middle [EOT]

Training and inference must build prompts with the same functions, so both
live here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from assistant.errors import UserError


class FimTokenizer(Protocol):
    """What this module needs from models.tokenizer (kept structural to avoid an import cycle)."""

    eot_id: int
    fim_prefix_id: int
    fim_middle_id: int
    fim_suffix_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class FimConfig:
    rate: float = 0.5  # fraction of documents turned into FIM examples
    spm_rate: float = 0.5  # of those, the fraction in SPM order (the rest PSM)

    def __post_init__(self) -> None:
        for name in ("rate", "spm_rate"):
            value = getattr(self, name)
            # `not 0 <= value <= 1` is also true for NaN, which must be refused too.
            if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
                raise UserError(f"FimConfig.{name} must be in [0, 1], got {value!r}")


def format_psm(tok: FimTokenizer, prefix: list[int], suffix: list[int]) -> list[int]:
    """[PRE] prefix [SUF] suffix [MID]; the model continues with the middle."""
    return [tok.fim_prefix_id, *prefix, tok.fim_suffix_id, *suffix, tok.fim_middle_id]


def format_spm(tok: FimTokenizer, prefix: list[int], suffix: list[int]) -> list[int]:
    """[SUF] suffix [PRE] prefix [MID]; the model continues with the middle.

    The suffix goes first because, while the user types, the prefix grows at
    its end and the suffix stays put: each keystroke only extends the prompt,
    so the inference KV cache of everything before it stays valid.
    """
    return [tok.fim_suffix_id, *suffix, tok.fim_prefix_id, *prefix, tok.fim_middle_id]


def document_tokens(text: str, tok: FimTokenizer, rng: random.Random, config: FimConfig) -> list[int]:
    """Token ids of one training document, FIM-transformed with probability `config.rate`.

    Exactly four rng draws are made per call whatever the branch, so the
    random stream (and with it every later document) does not depend on
    which documents happened to become FIM examples.
    """
    u_fim, u_spm, u_cut1, u_cut2 = rng.random(), rng.random(), rng.random(), rng.random()
    if u_fim >= config.rate:
        return tok.encode(text) + [tok.eot_id]

    # Cut points range over the len+1 gaps between characters, ends included,
    # so empty prefixes, middles and suffixes all occur. Indexing a str is by
    # code point, so a cut never splits a character.
    n = len(text)
    a, b = sorted(min(int(u * (n + 1)), n) for u in (u_cut1, u_cut2))
    prefix = tok.encode(text[:a])
    middle = tok.encode(text[a:b])
    suffix = tok.encode(text[b:])
    fmt = format_spm if u_spm < config.spm_rate else format_psm
    return fmt(tok, prefix, suffix) + middle + [tok.eot_id]
