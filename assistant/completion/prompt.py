"""The model's prompt for a completion at a cursor: fill-in-the-middle within a token budget.

    [snippets from other files] <eot> [SUF] suffix [PRE] prefix [MID]

Order is what changes least first. Snippets change only when the cursor moves to
another part of the file; the suffix stays put while the user types; the prefix grows
at its end. So each keystroke only extends the prompt the engine has cached (the
suffix-prefix-middle order, SPM). With nothing but whitespace after the cursor the FIM
part is the plain prefix, the way most training documents look; so it is for tokenizers
without FIM specials (Meta's Llama 2 SentencePiece models), which start with their BOS
token instead. The snippets end with <eot>, as a previous document would in the packed
training stream.

The prefix's last token is healed (assistant/engine/healing.py): it is left out of
the prompt and the engine writes its bytes again first, in tokens of the model's
choosing, so that a cursor after "x = " or at an indented line start does not leave
the model at a token boundary it never saw.

Only a window of the prefix (its end) and of the suffix (its start) is encoded: the
tokenizer's time grows with the text, and deep in a big file encoding all of it would
cost more than the completion. The prefix's window starts at a line start that stays
put while the user types at the end (see _window_start), so that successive prompts
still extend one another; where the window is the whole prefix (a small file) the
prompt is what encoding everything would give.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from assistant.completion.encoding import TokenCache
from assistant.engine.base import GenerationConfig
from assistant.errors import UserError
from assistant.fim import format_spm


@dataclass(frozen=True)
class PromptBudget:
    max_tokens: int = 1024  # prompt tokens in all
    suffix_share: float = 0.25  # at most this share of them for the suffix
    snippet_share: float = 0.25  # at most this share for snippets (only what they need)
    # The prefix is cut at its start in steps of this many tokens, so that while the
    # prefix outgrows its room most keystrokes still extend the previous prompt.
    prefix_step: int = 1

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise UserError(f"max_tokens must be at least 8, got {self.max_tokens}")
        for name in ("suffix_share", "snippet_share"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.suffix_share + self.snippet_share >= 1:
            raise UserError("suffix_share + snippet_share must leave room for the prefix")
        if self.prefix_step < 1:
            raise UserError(f"prefix_step must be >= 1, got {self.prefix_step}")


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    # The prefix's last token's bytes, cut from the prompt: the generation must write them
    # first (GenerationConfig.heal_bytes). Empty when nothing was healed.
    heal: bytes = b""


@dataclass(frozen=True)
class Snippet:
    """Code from another file (or another part of this one) shown to the model first."""

    path: str  # as the user would name it: relative to the workspace where possible
    text: str


def snippet_text(snippets: Sequence[Snippet]) -> str:
    """The snippets as one text: each under a comment line naming its file."""
    parts = []
    for snippet in snippets:
        comment = "#" if snippet.path.endswith((".py", ".sh", ".rb", ".toml", ".yaml", ".yml", ".r")) else "//"
        parts.append(f"{comment} {snippet.path}\n{snippet.text.rstrip()}\n\n")
    return "".join(parts)


# The prefix's window starts at the line start at or before a multiple of this many
# characters (counted in the document: see build_prompt's `origin`), so it moves once per
# this many characters typed; each move costs the engine one full prefill.
WINDOW_STEP = 4096
# Characters per token to guess a window's length from its token budget; a window that
# holds fewer tokens than its budget (and is not the whole text) is doubled.
CHARS_PER_TOKEN = 4
# How far from a window's character target to look for a line start (prefix) or a line
# end (suffix); minified code without newlines is cut at the target itself.
LINE_SEARCH = 1024


def _window_start(prefix: str, chars: int, origin: int) -> int:
    """Where the prefix's window of at least `chars` characters starts: the line start at
    or before the last multiple of WINDOW_STEP (in the document: prefix starts at `origin`)
    that leaves that many, within LINE_SEARCH; 0 if that is the prefix's start. It depends
    only on text before the multiple, so typing at the end leaves it put."""
    target = (origin + len(prefix) - chars) // WINDOW_STEP * WINDOW_STEP - origin
    if target <= 0:
        return 0
    lo = max(0, target - LINE_SEARCH)
    newline = prefix.rfind("\n", lo, target)
    return newline + 1 if newline >= 0 or lo == 0 else target


def _prefix_ids(cache: TokenCache, prefix: str, chars: int, room: int, step: int, origin: int) -> list[int]:
    """The prefix's last tokens that fit in room (the cut rounded as _keep_end does),
    from a window of the prefix grown until it holds enough or is all of it."""
    if room <= 0:
        return []
    while True:
        start = _window_start(prefix, chars, origin)
        ids = cache.encode_growing(prefix[start:] if start else prefix)
        # More than room, not just as many: a window that holds exactly its room would be
        # kept whole, and the next keystroke's cut would move the prompt's start again.
        if len(ids) > room or start == 0:
            return _keep_end(ids, room, step)
        chars *= 2


def _head_end(tokenizer: Any, text: str, chars: int) -> int:
    """Where a head of text of about `chars` characters ends: at a split after which the
    tokens are those of the whole text where the tokenizer knows one (split_point), else
    at a line end (within LINE_SEARCH), else at `chars`."""
    if chars >= len(text):
        return len(text)
    split = tokenizer.split_point(text, chars) if hasattr(tokenizer, "split_point") else 0
    if split > 0:
        return split
    newline = text.find("\n", chars, chars + LINE_SEARCH)
    return newline if newline >= 0 else chars


def _suffix_ids(cache: TokenCache, suffix: str, keep: int) -> list[int]:
    """The suffix's first `keep` tokens, from a head of it grown until it holds enough or
    is all of it."""
    if keep <= 0:
        return []
    chars = keep * CHARS_PER_TOKEN
    while True:
        end = _head_end(cache.tokenizer, suffix, chars)
        ids = cache.encode(suffix[:end] if end < len(suffix) else suffix)
        if len(ids) >= keep or end >= len(suffix):
            return list(ids[:keep])
        chars *= 2


def _keep_end(ids: list[int], room: int, step: int) -> list[int]:
    """The last tokens of ids that fit in room, the cut point rounded up to a multiple of step."""
    if len(ids) <= room:
        return ids
    if room <= 0:
        return []
    cut = -(-(len(ids) - room) // step) * step
    return ids[cut:]


def build_prompt(
    tokenizer: Any,
    prefix: str,
    suffix: str,
    budget: PromptBudget = PromptBudget(),
    snippets: Sequence[Snippet] = (),
    heal: bool = True,
    cache: TokenCache | None = None,
    origin: int = 0,
) -> Prompt:
    """The prompt that asks the model for the text between prefix and suffix; with `heal`,
    the prefix's last token is healed.

    `cache` keeps encodings from one call to the next (pass the same one for successive
    requests; it must wrap `tokenizer`). `origin` is where `prefix` starts in its document,
    for a caller that passes a window of a long text: the prefix's window is placed in the
    document's characters, so it stays put when that caller's window moves."""
    if cache is None:
        cache = TokenCache(tokenizer)
    elif cache.tokenizer is not tokenizer:
        raise ValueError("build_prompt: the token cache wraps another tokenizer")
    # Llama models (SentencePiece) expect BOS first; our own tokenizers have none.
    head: list[int] = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
    has_fim = getattr(tokenizer, "has_fim", True)
    # Whole snippets in order while they fit: a snippet cut mid-way misleads.
    snippet_ids: list[int] = []
    for snippet in snippets:
        ids = list(cache.encode(snippet_text([snippet])))
        if len(snippet_ids) + len(ids) > int(budget.max_tokens * budget.snippet_share) - 1:
            break
        snippet_ids += ids
    if snippet_ids:
        head += snippet_ids + ([tokenizer.eot_id] if has_fim else [])
    room = budget.max_tokens - len(head)
    # The window's length follows the budget, not the room the snippets leave: snippets
    # that come and go must not move the window.
    chars = budget.max_tokens * CHARS_PER_TOKEN
    if not suffix or suffix.isspace() or not has_fim:
        prefix_ids = _prefix_ids(cache, prefix, chars, room, budget.prefix_step, origin)
        prefix_ids, healed = _healed(tokenizer, prefix_ids, heal)
        return Prompt(head + prefix_ids or [tokenizer.eot_id], healed)
    room -= 3  # the three FIM specials
    suffix_ids = _suffix_ids(cache, suffix, int(budget.max_tokens * budget.suffix_share))
    prefix_ids = _prefix_ids(cache, prefix, chars, room - len(suffix_ids), budget.prefix_step, origin)
    prefix_ids, healed = _healed(tokenizer, prefix_ids, heal)
    return Prompt(head + format_spm(tokenizer, prefix_ids, suffix_ids), healed)


def _healed(tokenizer: Any, prefix_ids: list[int], heal: bool) -> tuple[list[int], bytes]:
    """The prefix without its last token, and that token's bytes (if healing applies)."""
    if not heal or not prefix_ids or prefix_ids[-1] in getattr(tokenizer, "special_ids", ()):
        return prefix_ids, b""
    return prefix_ids[:-1], tokenizer.token_bytes(prefix_ids[-1])


def generate(engine: Any, prompt: Prompt, config: GenerationConfig, cancel: threading.Event | None = None):
    """The engine's generation for a built prompt: its ids, with its healed bytes given to
    the engine (without them the healed text would come back as part of the completion)."""
    return engine.generate(prompt.ids, replace(config, heal_bytes=prompt.heal), cancel)


def split_at(text: str, line: int, column: int) -> tuple[str, str]:
    """Prefix and suffix of `text` at a 0-based line and column (in code points).

    A column past the end of its line means the end of that line; a line past the
    end of the text is an error.
    """
    lines = text.split("\n")
    if not 0 <= line < len(lines):
        raise UserError(f"line {line + 1} is outside the text ({len(lines)} lines)")
    if column < 0:
        raise UserError(f"column must be >= 0, got {column}")
    offset = sum(len(l) + 1 for l in lines[:line]) + min(column, len(lines[line]))
    return text[:offset], text[offset:]
