"""Training windows from a corpus: documents -> (FIM) tokens -> packed, fixed-size windows.

The stream is a pure function of (seed, epoch, document order): each epoch shuffles the
documents with its own seeded RNG and each document gets its own FIM RNG. Its whole
position fits in a small state dict, so a resumed run sees exactly the windows an
uninterrupted run would have seen.
"""

from __future__ import annotations

import array
import multiprocessing
import random
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.pool import AsyncResult, Pool
from typing import Any, Sequence

import torch

from assistant.errors import UserError
from assistant.fim import FimConfig, document_tokens


class WindowStream:
    """Endless stream of windows of `seq_len + n_future` tokens over the training texts.

    Consecutive windows of one lane overlap by n_future tokens so that every token is an
    input once: a window's last n_future tokens serve only as targets of the heads.

    `lanes` independent cursors read documents from the shared shuffled order, and
    `next_windows` takes its rows from the lanes in turn. With one lane a batch is a run of
    consecutive windows, mostly of one file; with one lane per row each row comes from a
    different file, so a small CPU batch is not one file's gradient.

    With `workers` > 0 a pool of that many processes tokenizes a whole epoch's documents
    ahead of time (the next epoch while this one is read): a GPU step eats windows faster
    than one Python process tokenizes them. The windows are the same either way.
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
        workers: int = 0,
    ):
        if not texts:
            raise UserError("no training documents")
        if lanes < 1:
            raise UserError(f"lanes must be at least 1, got {lanes}")
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
        # Prefetching (workers > 0): epoch -> its documents' tokens, uint16 bytes by document index.
        self.workers = workers
        self._pool: Pool | None = None
        self._pending: dict[int, AsyncResult] = {}
        self._epoch_tokens: tuple[int, list[bytes]] | None = None

    def _epoch_order(self, epoch: int) -> list[int]:
        # Cached: shuffling every document's index costs O(documents); redone for each
        # document read it took a third of the stream's time on a 4,000-file corpus.
        if self._order_epoch != epoch:
            order = list(range(len(self.texts)))
            random.Random(f"{self.seed}:order:{epoch}").shuffle(order)
            self._order, self._order_epoch = order, epoch
        return self._order

    def _next_document(self) -> list[int]:
        order = self._epoch_order(self.epoch)
        doc = order[self.doc_cursor]
        if self.workers:
            tokens = array.array("H", self._prefetched(self.epoch)[doc]).tolist()
        else:
            tokens = _tokenize(self.texts[doc], self.tokenizer, self.seed, self.epoch, doc, self.fim)
        self.doc_cursor += 1
        if self.doc_cursor == len(order):
            self.epoch, self.doc_cursor = self.epoch + 1, 0
        return tokens

    def _prefetched(self, epoch: int) -> list[bytes]:
        """Every document's tokens for `epoch`; starts tokenizing the next epoch in the background."""
        if self._epoch_tokens is None or self._epoch_tokens[0] != epoch:
            if self._pool is None:
                if self.tokenizer.vocab_size > 2**16:
                    raise ValueError("prefetching stores tokens as uint16: vocabulary too large")
                # Forked workers inherit the texts and the tokenizer instead of unpickling them.
                global _WORKER_STREAM
                _WORKER_STREAM = self
                self._pool = multiprocessing.get_context("fork").Pool(self.workers)
            pending = self._pending.pop(epoch, None) or self._submit(epoch)
            self._epoch_tokens = (epoch, pending.get())
            self._pending = {epoch + 1: self._submit(epoch + 1)}
        return self._epoch_tokens[1]

    def _submit(self, epoch: int) -> AsyncResult:
        assert self._pool is not None
        jobs = [(epoch, doc) for doc in range(len(self.texts))]
        return self._pool.map_async(_tokenize_in_worker, jobs, chunksize=max(1, len(jobs) // (self.workers * 16)))

    def close(self) -> None:
        """Stop the prefetching workers (a no-op without them)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
            self._pending = {}

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


def _tokenize(text: str, tokenizer: Any, seed: int, epoch: int, doc: int, fim: FimConfig) -> list[int]:
    """A document's tokens in one epoch: a pure function of (seed, epoch, doc) and the text."""
    rng = random.Random(f"{seed}:fim:{epoch}:{doc}")
    return document_tokens(text, tokenizer, rng, fim)


# The stream a forked prefetch worker reads its texts and tokenizer from.
_WORKER_STREAM: WindowStream | None = None


def _tokenize_in_worker(job: tuple[int, int]) -> bytes:
    epoch, doc = job
    stream = _WORKER_STREAM
    assert stream is not None
    tokens = _tokenize(stream.texts[doc], stream.tokenizer, stream.seed, epoch, doc, stream.fim)
    return array.array("H", tokens).tobytes()


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
        raise UserError(f"validation texts give only {len(tokens)} tokens, need more than {n_future}")
    seq_len = min(seq_len, len(tokens) - n_future)
    window = seq_len + n_future
    count = min(max_windows, (len(tokens) - n_future) // seq_len)
    return torch.tensor([tokens[i * seq_len : i * seq_len + window] for i in range(count)], dtype=torch.long)


class StepPrefetcher:
    """Each optimizer step's windows, the next step's made in a thread meanwhile.

    The thread runs while the GPU computes (the loop waits on the device with the GIL
    released), so a step no longer pays for building its windows. A checkpoint must hold
    the stream's position before the windows already made for the next step: `take`
    records it when asked to, between the two.
    """

    def __init__(self, stream: WindowStream, micro_batches: int, rows: int):
        self.stream, self.micro_batches, self.rows = stream, micro_batches, rows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="windows")
        self._next: Future | None = None
        self.saved_state: dict[str, Any] | None = None

    def _make(self) -> list[torch.Tensor]:
        return [self.stream.next_windows(self.rows) for _ in range(self.micro_batches)]

    def take(self, save_state: bool = False) -> list[torch.Tensor]:
        """This step's micro-batches, each (rows, seq_len + n_future); with `save_state`,
        `saved_state` is the stream's position after them (what a checkpoint now saves)."""
        batches = self._next.result() if self._next is not None else self._make()
        if save_state:
            self.saved_state = self.stream.state_dict()
        self._next = self._executor.submit(self._make)
        return batches

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
