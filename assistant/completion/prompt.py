"""The model's prompt for a completion at a cursor: fill-in-the-middle within a token budget.

Order is suffix-prefix-middle (SPM): while the user types, the prefix grows at its end
and the suffix stays put, so each keystroke only extends the prompt the engine has
cached. With nothing but whitespace after the cursor the prompt is the plain prefix,
the way most training documents look; so it is for tokenizers without FIM specials
(Meta's Llama 2 SentencePiece models), which start with their BOS token instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assistant.fim import format_spm


@dataclass(frozen=True)
class PromptBudget:
    max_tokens: int = 1024  # prompt tokens in all
    suffix_share: float = 0.25  # at most this share of them for the suffix

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, got {self.max_tokens}")
        if not 0 <= self.suffix_share < 1:
            raise ValueError(f"suffix_share must be in [0, 1), got {self.suffix_share}")


def build_prompt(tokenizer: Any, prefix: str, suffix: str, budget: PromptBudget = PromptBudget()) -> list[int]:
    """Token ids that ask the model for the text between prefix and suffix."""
    # Llama models (SentencePiece) expect BOS first; our own tokenizers have none.
    bos = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
    if not suffix.strip() or not getattr(tokenizer, "has_fim", True):
        return bos + tokenizer.encode(prefix)[-(budget.max_tokens - len(bos)) :] or [tokenizer.eot_id]
    room = budget.max_tokens - 3  # the three FIM specials
    suffix_ids = tokenizer.encode(suffix)[: int(room * budget.suffix_share)]
    prefix_ids = tokenizer.encode(prefix)[-(room - len(suffix_ids)) :] if room > len(suffix_ids) else []
    return format_spm(tokenizer, prefix_ids, suffix_ids)


def split_at(text: str, line: int, column: int) -> tuple[str, str]:
    """Prefix and suffix of `text` at a 0-based line and column (in code points).

    A column past the end of its line means the end of that line; a line past the
    end of the text is an error.
    """
    lines = text.split("\n")
    if not 0 <= line < len(lines):
        raise ValueError(f"line {line + 1} is outside the text ({len(lines)} lines)")
    if column < 0:
        raise ValueError(f"column must be >= 0, got {column}")
    offset = sum(len(l) + 1 for l in lines[:line]) + min(column, len(lines[line]))
    return text[:offset], text[offset:]
