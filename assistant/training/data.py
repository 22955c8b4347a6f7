"""Training windows from a corpus: documents -> (FIM) tokens -> packed, fixed-size windows.

The stream is a pure function of (seed, epoch, document order): each epoch shuffles the
documents with its own seeded RNG and each document gets its own FIM RNG. Its whole
position fits in a small state dict, so a resumed run sees exactly the windows an
uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from assistant.fim import FimConfig, document_tokens


class WindowStream:
    """Endless stream of windows of `seq_len + n_future` tokens over the training texts.

    Consecutive windows of one lane overlap by n_future tokens so that every token is an
    input once: a window's last n_future tokens serve only as targets of the heads.

    `lanes` independent cursors read documents from the shared shuffled order, and
    `next_windows` takes its rows from the lanes in turn. With one lane a batch is a run of
    consecutive windows, mostly of one file; with one lane per row each row comes from a
    different file, so a small CPU batch is not one file's gradient.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Any,
        seq_len: int,
        n_future: int,
        seed: int,
        fim: FimConfig = FimConfig(),
        lanes: int = 1,
    ):
        if not texts:
            raise ValueError("no training documents")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.window = seq_len + n_future
        self.seed = seed
        self.fim = fim
        # Position in the stream.
        self.epoch = 0
        self.doc_cursor = 0
        self.buffers: list[list[int]] = [[] for _ in range(lanes)]
        self.next_lane = 0
        self._order: list[int] = []
        self._order_epoch = -1

    def _epoch_order(self, epoch: int) -> list[int]:
        # Cached: shuffling every document's index costs O(documents) and used to be redone
        # for each document read (a third of the stream's time on a 4,000-file corpus).
        if self._order_epoch != epoch:
            order = list(range(len(self.texts)))
            random.Random(f"{self.seed}:order:{epoch}").shuffle(order)
            self._order, self._order_epoch = order, epoch
        return self._order

    def _next_document(self) -> list[int]:
        order = self._epoch_order(self.epoch)
        doc = order[self.doc_cursor]
        rng = random.Random(f"{self.seed}:fim:{self.epoch}:{doc}")
        tokens = document_tokens(self.texts[doc], self.tokenizer, rng, self.fim)
        self.doc_cursor += 1
        if self.doc_cursor == len(order):
            self.epoch, self.doc_cursor = self.epoch + 1, 0
        return tokens

    def next_windows(self, count: int) -> torch.Tensor:
        """The next `count` windows: (count, seq_len + n_future) int64."""
        rows = []
        for _ in range(count):
            buffer = self.buffers[self.next_lane]
            self.next_lane = (self.next_lane + 1) % len(self.buffers)
            while len(buffer) < self.window:
                buffer.extend(self._next_document())
            rows.append(buffer[: self.window])
            del buffer[: self.seq_len]  # keep the overlap
        return torch.tensor(rows, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "doc_cursor": self.doc_cursor, "next_lane": self.next_lane}
        for lane, buffer in enumerate(self.buffers):
            state[f"buffer.{lane}"] = torch.tensor(buffer, dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "buffer" in state:  # written before lanes existed: one lane
            state = {**state, "buffer.0": state["buffer"], "next_lane": 0}
        lanes = sum(1 for key in state if key.startswith("buffer."))
        if lanes != len(self.buffers):
            raise ValueError(f"the saved stream has {lanes} lanes, this one {len(self.buffers)}")
        self.epoch = int(state["epoch"])
        self.doc_cursor = int(state["doc_cursor"])
        self.next_lane = int(state["next_lane"])
        self.buffers = [[int(t) for t in state[f"buffer.{lane}"].tolist()] for lane in range(lanes)]


def evaluation_windows(
    texts: Sequence[str], tokenizer: Any, seq_len: int, n_future: int, max_windows: int
) -> torch.Tensor:
    """Fixed validation windows: the texts in order, plain (no FIM), cut without overlap
    between inputs. Shorter than seq_len when the texts are short. (N, T + n_future)."""
    tokens: list[int] = []
    for text in texts:
        tokens.extend(tokenizer.encode(text))
        tokens.append(tokenizer.eot_id)
        if len(tokens) >= max_windows * seq_len + n_future:
            break
    if len(tokens) <= n_future:
        raise ValueError(f"validation texts give only {len(tokens)} tokens, need more than {n_future}")
    seq_len = min(seq_len, len(tokens) - n_future)
    window = seq_len + n_future
    count = min(max_windows, (len(tokens) - n_future) // seq_len)
    return torch.tensor([tokens[i * seq_len : i * seq_len + window] for i in range(count)], dtype=torch.long)
