import torch

from assistant.fim import FimConfig
from assistant.training.data import WindowStream
from models.tokenizer import ByteTokenizer

NO_FIM = FimConfig(rate=0.0)
# Ten documents, each one letter repeated, so a window's letters say which documents it came from.
TEXTS = [chr(ord("a") + i) * 50 for i in range(10)]


def stream(lanes: int) -> WindowStream:
    return WindowStream(TEXTS, ByteTokenizer(), seq_len=16, n_future=2, seed=3, fim=NO_FIM, lanes=lanes)


def letters(window: torch.Tensor) -> set[str]:
    return {chr(t) for t in window.tolist() if t < 128 and chr(t).isalpha()}


def test_one_lane_reads_consecutive_windows_of_a_document():
    batch = stream(lanes=1).next_windows(3)  # (3, 18)
    assert batch.shape == (3, 18)
    assert torch.equal(batch[0, 16:], batch[1, :2])  # consecutive windows overlap by n_future
    assert len(set.union(*(letters(w) for w in batch))) <= 2  # 3 x 16 tokens: at most two documents


def test_one_lane_per_row_puts_a_different_document_in_each_row():
    batch = stream(lanes=4).next_windows(4)
    firsts = [letters(w[:1]).pop() for w in batch]
    assert len(set(firsts)) == 4


def test_lanes_see_every_token_once_as_input():
    s = stream(lanes=3)
    rows = s.next_windows(60)  # more than an epoch
    per_lane = [rows[lane::3] for lane in range(3)]
    for lane_rows in per_lane:
        for a, b in zip(lane_rows, lane_rows[1:]):
            assert torch.equal(a[16:], b[:2])  # each lane is a gapless, overlapping stream


def test_state_round_trip_continues_the_same_stream():
    reference = stream(lanes=4)
    reference.next_windows(7)
    expected = reference.next_windows(9)

    first = stream(lanes=4)
    first.next_windows(7)
    resumed = stream(lanes=4)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.next_windows(9), expected)


def test_a_state_from_before_lanes_loads_as_one_lane():
    s = stream(lanes=1)
    s.next_windows(2)
    legacy = {"epoch": s.epoch, "doc_cursor": s.doc_cursor, "buffer": torch.tensor(s.buffers[0])}
    restored = stream(lanes=1)
    restored.load_state_dict(legacy)
    assert torch.equal(restored.next_windows(3), s.next_windows(3))


def test_documents_follow_each_epochs_seeded_shuffle():
    # The order is part of what makes a run repeatable: epoch e reads the documents in
    # random.Random(f"{seed}:order:{e}") order, whatever caching the stream does.
    import random

    s = stream(lanes=1)
    read = []
    for _ in range(25):  # two and a half epochs
        read.append(chr(s._next_document()[0]))
    expected = []
    for epoch in range(3):
        order = list(range(10))
        random.Random(f"3:order:{epoch}").shuffle(order)
        expected += [TEXTS[i][0] for i in order]
    assert read == expected[:25]
    assert read[:10] != read[10:20]  # the epochs really differ


def test_prefetching_workers_give_the_same_windows_across_epochs_and_a_resume():
    fim = FimConfig(rate=0.5, spm_rate=0.5)  # the FIM draws must match too
    plain = WindowStream(TEXTS, ByteTokenizer(), seq_len=16, n_future=2, seed=3, fim=fim, lanes=4)
    prefetching = WindowStream(TEXTS, ByteTokenizer(), seq_len=16, n_future=2, seed=3, fim=fim, lanes=4, workers=2)
    resumed = WindowStream(TEXTS, ByteTokenizer(), seq_len=16, n_future=2, seed=3, fim=fim, lanes=4, workers=2)
    try:
        expected = plain.next_windows(100)  # 100 x 16 tokens: three epochs of 10 x ~51 tokens
        first = prefetching.next_windows(50)
        resumed.load_state_dict(prefetching.state_dict())
        assert torch.equal(torch.cat([first, resumed.next_windows(50)]), expected)
        assert torch.equal(prefetching.next_windows(50), expected[50:])
    finally:
        prefetching.close()
        resumed.close()
