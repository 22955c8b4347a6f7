"""An LRU cache of completions that also serves text the user typed ahead.

Key: the context (suffix, snippets, mode: everything but the prefix) and the prefix.
When the user types the first characters of a suggestion, the new prefix is an old
prefix plus the start of that old completion: the rest of the completion is the
answer, with no model call.

Only a tail of each prefix is kept (the model never sees more than its budget
anyway), so a 10 MB file costs the cache no more than a small one.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

PREFIX_TAIL = 4096  # characters of the prefix an entry keeps and compares


def context_key(*parts: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class _Entry:
    prefix_len: int
    prefix_tail: str
    completion: str


class CompletionCache:
    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, int, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # requests for different documents run in threads

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, context: str, prefix: str, completion: str) -> None:
        tail = prefix[-PREFIX_TAIL:]
        key = (context, len(prefix), tail)
        with self._lock:
            self._entries[key] = _Entry(len(prefix), tail, completion)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get(self, context: str, prefix: str) -> str | None:
        """The cached completion at this prefix, or the untyped rest of one the user has
        been typing; None on a miss."""
        tail = prefix[-PREFIX_TAIL:]
        with self._lock:
            exact = self._entries.get((context, len(prefix), tail))
            if exact is not None:
                self._entries.move_to_end((context, len(prefix), tail))
                return exact.completion
            # Newest first: the suggestion the user is most likely typing through.
            for key in reversed(self._entries):
                if key[0] != context:
                    continue
                entry = self._entries[key]
                typed = len(prefix) - entry.prefix_len
                if not 0 < typed < len(entry.completion):
                    continue
                # prefix == old prefix + completion[:typed], checked on the kept tail.
                if prefix.endswith(entry.prefix_tail + entry.completion[:typed]):
                    self._entries.move_to_end(key)
                    return entry.completion[typed:]
        return None
