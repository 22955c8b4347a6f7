"""Encodings that recur from one completion request to the next, kept so that a keystroke
costs the tokenizer only the text it changed.

While the user types, the snippets and the suffix's head stay the same text, and the
prefix's window grows at its end. Encoding them again at every request costs about as
much as a decoding step or more (the tokenizer's time grows with the text's length), so:

* whole texts (snippets, the suffix's head) come from a small LRU keyed by their text;
* the prefix's window is encoded in two parts where its tokenizer knows a split that
  gives exactly the tokens of the whole (`split_point`): a head, which stays the same
  text while the user types at the end and so comes from the LRU, and the rest after it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

# The head of a growing text ends at a split before a multiple of this many characters:
# it stays the same text while the end grows by up to this much, and the rest encoded
# at each request is under about twice as long.
HEAD_STEP = 512


class TokenCache:
    """`tokenizer`'s encodings of recently seen texts (safe to share between threads)."""

    def __init__(self, tokenizer: Any, capacity: int = 64):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.tokenizer = tokenizer
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()  # requests for different documents run in threads

    def encode(self, text: str) -> tuple[int, ...]:
        """encode(text), from the cache where `text` was seen lately."""
        with self._lock:
            ids = self._ids.get(text)
            if ids is not None:
                self._ids.move_to_end(text)
                return ids
        ids = tuple(self.tokenizer.encode(text))  # outside the lock: the slow part
        with self._lock:
            self._ids[text] = ids
            self._ids.move_to_end(text)
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
        return ids

    def encode_growing(self, text: str) -> list[int]:
        """encode(text), exactly, for a text that grows at its end between calls: its head
        up to a split before the last multiple of HEAD_STEP comes from the cache."""
        end = len(text) // HEAD_STEP * HEAD_STEP
        split = self.tokenizer.split_point(text, end) if end and hasattr(self.tokenizer, "split_point") else 0
        if split <= 0:
            return list(self.tokenizer.encode(text))
        return [*self.encode(text[:split]), *self.tokenizer.encode(text[split:])]
