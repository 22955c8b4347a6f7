"""The speculative loop against stub models whose heads always or never agree."""

import threading

import pytest
import torch

from assistant.engine.base import GenerationConfig
from assistant.engine.speculative import decode

V = 32


def truth(position: int) -> int:
    """The token the stub's head 1 says follows `position`."""
    return (position * 7 + 3) % V


class StubOutput:
    def __init__(self, positions, k, agree):
        self.positions, self.k, self.agree = positions, k, agree

    def next_logits(self, start=0):
        rows = list(self.positions)[start:]
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(truth(p + 1)), V).float() for p in rows])

    def draft_logits(self, index, n=None):
        p = self.positions[index]
        rows = []
        for head in range(1, self.k if n is None else 1 + n):
            token = truth(p + 1 + head) if self.agree else (truth(p + 1 + head) + 1) % V
            rows.append(torch.nn.functional.one_hot(torch.tensor(token), V).float())
        return torch.stack(rows)


class StubModel:
    """Head 1 always predicts truth(); heads 2..k agree with it or never do."""

    def __init__(self, agree: bool):
        self.agree = agree
        self.calls = []

    def forward(self, tokens, start_pos, k, all_rows=True):
        self.calls.append((list(tokens), start_pos))
        return StubOutput(range(start_pos, start_pos + len(tokens)), k, self.agree)


def run(model, k, max_new=25, prompt=(1, 2, 3), **config):
    return decode(model, list(prompt), 0, GenerationConfig(max_new_tokens=max_new, **config), k, 512, lambda t: bytes([65 + t]))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_always_agree_gives_k_tokens_per_forward(k):
    out = run(StubModel(agree=True), k, max_new=1 + 8 * k)
    assert out.tokens == [truth(p) for p in range(3, 3 + 1 + 8 * k)]
    # The prefill yields one token, then every forward commits k.
    assert out.stats.forward_passes == 1 + 8
    assert out.stats.tokens_per_forward == pytest.approx((1 + 8 * k) / 9)
    assert out.stats.acceptance == [1.0] * (k - 1)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_never_agree_gives_one_token_per_forward(k):
    out = run(StubModel(agree=False), k, max_new=20)
    assert out.tokens == [truth(p) for p in range(3, 23)]
    assert out.stats.tokens_per_forward == 1.0
    assert out.stats.acceptance == [0.0] * (k - 1)


def test_rejected_drafts_are_overwritten_at_the_same_positions():
    model = StubModel(agree=False)
    run(model, 4, max_new=5)
    # Each forward writes the verified token at the next position, over the rejected drafts.
    assert [start for _, start in model.calls] == [0, 3, 4, 5, 6]


def test_cached_length_counts_only_fed_tokens():
    out = run(StubModel(agree=True), 4, max_new=9)
    # 9 tokens: the last one was never fed to the model.
    assert out.cached_len == 3 + 9 - 1 and len(out.tokens) == 9


def test_stop_token_ends_generation_and_is_not_returned():
    stop = truth(3 + 5)
    out = run(StubModel(agree=True), 4, stop_token_ids=(stop,))
    assert out.stop_reason == "stop_token"
    assert out.tokens == [truth(p) for p in range(3, 8)]


def test_stop_string():
    expected = [truth(p) for p in range(3, 28)]
    text = bytes(65 + t for t in expected).decode()
    out = run(StubModel(agree=True), 4, stop_strings=(text[6:8],))
    assert out.stop_reason == "stop_string"
    assert out.tokens == expected[:8]


def test_cancel_and_time_cap_stop_between_forwards():
    cancel = threading.Event()
    cancel.set()
    out = decode(StubModel(True), [1, 2], 0, GenerationConfig(max_new_tokens=50), 4, 512, lambda t: b"", cancel)
    assert out.stop_reason == "cancelled" and len(out.tokens) == 1
    out = run(StubModel(True), 4, max_new=50, time_cap_s=0.0)
    assert out.stop_reason == "time_cap" and len(out.tokens) == 1


def test_context_limit():
    out = decode(StubModel(True), [1, 2, 3], 0, GenerationConfig(max_new_tokens=50), 4, 10, lambda t: b"")
    assert out.stop_reason == "context_full"
    assert out.cached_len <= 10


def test_max_new_tokens_is_exact_for_every_k():
    for k in range(1, 9):
        for n in range(0, 12):
            assert len(run(StubModel(True), k, max_new=n).tokens) == n


@pytest.mark.parametrize("k", [1, 2, 4])
def test_token_heads_follow_the_blocks_when_heads_always_agree(k):
    out = run(StubModel(agree=True), k, max_new=1 + 8 * k)
    assert len(out.token_heads) == len(out.tokens)
    # The prefill gives head 1's token; every forward then commits drafts 2..k and head 1's next.
    assert out.token_heads == ([1] + list(range(2, k + 1))) * 8 + [1]
    assert out.token_heads.count(1) == out.stats.forward_passes
    for head in range(2, k + 1):
        assert out.token_heads.count(head) == out.stats.draft_accepted[head - 2]


def test_token_heads_are_all_head_one_when_heads_never_agree():
    out = run(StubModel(agree=False), 4, max_new=20)
    assert out.token_heads == [1] * 20


def test_token_heads_stop_with_the_tokens():
    stop = truth(3 + 5)
    out = run(StubModel(agree=True), 4, stop_token_ids=(stop,))
    assert out.token_heads == [1, 2, 3, 4, 1]


def letters(t: int) -> bytes:
    return bytes([65 + t])  # the vocabulary `run` decodes with: token 2 is "C", 3 is "D"


@pytest.mark.parametrize("k", [1, 4])
def test_healing_writes_the_healed_bytes_first_with_plain_steps(k):
    model = StubModel(agree=True)
    # "D" as a stop string: inside the healed bytes it is not new text and must not stop.
    out = run(model, k, max_new=20, heal_bytes=b"CD", stop_strings=("D",))
    assert out.tokens == [2, 3] + [truth(p) for p in range(5, 23)]
    assert out.stop_reason == "max_tokens"
    assert model.calls[1] == ([2], 3)  # "D" still to heal: no drafts in that step
    if k > 1:
        assert len(model.calls[2][0]) == k  # healed: drafting resumes


def test_allowed_tokens_start_with_the_healed_bytes_or_write_a_part_of_them():
    from assistant.engine.healing import allowed_tokens, still_to_heal

    pieces = [letters(t) for t in range(V - 3)] + [b"CD", b"CDE", b""]

    def token_bytes(t):
        if not 0 <= t < len(pieces):
            raise ValueError(f"token id {t} out of range")  # as the tokenizers do
        return pieces[t]

    def ids(mask):
        return mask.nonzero().flatten().tolist()

    assert ids(allowed_tokens(token_bytes, V, b"CD")) == [2, 29, 30]  # "C", "CD", "CDE"; never the empty one
    assert ids(allowed_tokens(token_bytes, V, b"CD", excluded=(29,))) == [2, 30]
    assert ids(allowed_tokens(token_bytes, V + 2, b"C")) == [2, 29, 30]  # ids past the tokenizer: never
    assert still_to_heal(b"CD", b"C") == b"D" and still_to_heal(b"CD", b"CDE") == b""
    with pytest.raises(ValueError, match="cannot be healed"):
        allowed_tokens(token_bytes, V, b"C", excluded=(2, 29, 30))
