import argparse
import json
import pathlib

import pytest

import models
from assistant.completion.encoding import HEAD_STEP, TokenCache
from models.tokenizer import ByteTokenizer, load_tokenizer

SHIPPED = pathlib.Path(models.__file__).parent / "default"
BPE = load_tokenizer(SHIPPED, json.loads((SHIPPED / "config.json").read_text())["tokenizer"])
CODE = pathlib.Path(argparse.__file__).read_text(encoding="utf-8")


class Counting:
    """A real tokenizer that notes what it encodes; `split_point` only where asked."""

    def __init__(self, tokenizer, splits=True):
        self.tokenizer, self.texts = tokenizer, []
        if splits:
            self.split_point = tokenizer.split_point

    def encode(self, text):
        self.texts.append(text)
        return self.tokenizer.encode(text)


def test_recent_texts_are_encoded_once_and_the_oldest_forgotten():
    tok = Counting(ByteTokenizer())
    cache = TokenCache(tok, capacity=2)
    first = cache.encode("a")
    assert cache.encode("a") is first and tok.texts == ["a"]
    cache.encode("b")
    cache.encode("a")  # "a" is now the most recent
    cache.encode("c")  # so "b" goes
    cache.encode("a")
    cache.encode("b")
    assert tok.texts == ["a", "b", "c", "b"]
    with pytest.raises(ValueError, match="capacity"):
        TokenCache(tok, capacity=0)


def test_a_growing_text_is_encoded_exactly_with_its_head_from_the_cache():
    tok = Counting(BPE)
    cache = TokenCache(tok)
    base, heads = CODE[20_000:23_000], 0
    for n in range(0, 700, 7):
        text = base + CODE[23_000 : 23_000 + n]
        tok.texts.clear()
        assert cache.encode_growing(text) == BPE.encode(text)
        if len(tok.texts) == 2:  # a new head (once per HEAD_STEP characters), then the rest
            heads += 1
        else:  # only the rest: under HEAD_STEP past the head's grid point, which the split is near
            assert len(tok.texts) == 1 and len(tok.texts[0]) < 2 * HEAD_STEP
    assert heads <= 700 // HEAD_STEP + 2


def test_without_a_known_split_the_text_is_encoded_whole():
    tok = Counting(BPE, splits=False)
    text = CODE[:5000]
    assert TokenCache(tok).encode_growing(text) == BPE.encode(text) and tok.texts == [text]
