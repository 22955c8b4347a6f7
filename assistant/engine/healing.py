"""Token healing: let the model choose how the prompt's last, cut-off token is written.

A cursor rarely sits on a token boundary the model saw in training. With a BPE
vocabulary whose words carry their leading space (" y", " if"), a prompt ending in
"self.y = " ends with a lone " " token, and one ending at an indented line start with
"\\n        ": tokens that in real code are almost never followed by a word. The model,
out of its depth, writes nonsense. Healing removes that last token from the prompt
(the caller does: it knows where the prefix ends) and asks the engine to start the
generation by writing its bytes again, choosing the tokens itself: "\\n       " + " if"
instead of "\\n        " + "if". The healed bytes are then cut from the result's text.

While healed bytes remain, a token is allowed if it starts with them (it writes them
all and maybe more) or is a non-empty prefix of them (it writes a part).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch


@functools.lru_cache(maxsize=8)
def _pieces(token_bytes: Callable[[int], bytes], vocab_size: int) -> tuple[bytes | None, ...]:
    """Every id's bytes; None for ids the tokenizer does not know (a padded model vocabulary)."""
    pieces: list[bytes | None] = []
    for token_id in range(vocab_size):
        try:
            pieces.append(token_bytes(token_id))
        except ValueError:
            pieces.append(None)
    return tuple(pieces)


@functools.lru_cache(maxsize=256)
def allowed_tokens(
    token_bytes: Callable[[int], bytes], vocab_size: int, remaining: bytes, excluded: tuple[int, ...] = ()
) -> torch.Tensor:
    """(vocab_size,) bool: the ids that may come next while `remaining` bytes are to be
    written. Shared from a cache: do not modify it."""
    mask = torch.tensor(
        [
            piece is not None and (piece.startswith(remaining) or (piece != b"" and remaining.startswith(piece)))
            for piece in _pieces(token_bytes, vocab_size)
        ],
        dtype=torch.bool,
    )
    mask[list(excluded)] = False
    if not mask.any():
        raise ValueError(f"no token of the vocabulary can write {remaining!r}: it cannot be healed")
    return mask


def still_to_heal(remaining: bytes, piece: bytes) -> bytes:
    """The healed bytes left after a token with these bytes (an allowed one) is written."""
    return remaining[len(piece) :] if remaining.startswith(piece) else b""


def restrict(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(R, V) logits with every id outside `allowed` at -inf."""
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))
