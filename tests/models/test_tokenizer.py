import argparse
import json
import os
import pathlib
import string
import textwrap

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import models as tk_models
from tokenizers import pre_tokenizers, trainers

from models.tokenizer import (
    SPECIAL_TOKENS,
    BPETokenizer,
    ByteTokenizer,
    TokenizerError,
    load_tokenizer,
    train_bpe,
)

# deadline=None: the first example pays for warm-up, which would trip the per-example deadline on a slow CI box.
fast = settings(max_examples=150, deadline=None)

# Lone surrogates cannot be UTF-8 encoded, so they are not valid source text.
unicode_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)

TRICKY = [
    "",
    "def f(x):\n    return x + 1\n",
    "naïve café",  # precomposed
    "nai\u0308ve cafe\u0301",  # combining diaeresis / acute
    "日本語のコード # コメント",
    "emoji 🐍👩‍💻🏳️‍🌈 done",  # astral chars and ZWJ sequences
    "\t\r\n\x00\x7f",
    "   leading and trailing spaces   ",
]

SPECIAL_TEXT = "x = '<|endoftext|>'\n<|fim_prefix|>a<|fim_middle|>b<|fim_suffix|>c<|file_sep|><|endoftext|>"


def _source(module) -> str:
    return pathlib.Path(module.__file__).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    # A few stdlib modules are a realistic, always-available Python corpus; training takes ~0.1 s.
    return train_bpe([_source(m) for m in (os, argparse, json.decoder, json.encoder)], vocab_size=800)


@pytest.fixture(scope="module")
def byte() -> ByteTokenizer:
    return ByteTokenizer()


# --- byte tokenizer --------------------------------------------------------------------


@fast
@given(st.binary(max_size=300))
def test_byte_round_trips_arbitrary_bytes_including_invalid_utf8(data):
    tok = ByteTokenizer()
    ids = tok.encode(data)
    assert ids == list(data)
    assert tok.decode_bytes(ids) == data
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", TRICKY)
def test_byte_round_trips_str(byte, text):
    ids = byte.encode(text)
    assert byte.decode_bytes(ids) == text.encode("utf-8")
    assert byte.decode(ids) == text


def test_byte_layout(byte):
    assert byte.kind == "byte"
    assert byte.vocab_size == 261
    assert [byte.eot_id, byte.fim_prefix_id, byte.fim_middle_id, byte.fim_suffix_id, byte.file_sep_id] == [
        256,
        257,
        258,
        259,
        260,
    ]
    assert byte.special_ids == frozenset(range(256, 261))
    assert byte.token_bytes(65) == b"A"
    assert byte.token_bytes(byte.fim_middle_id) == b"<|fim_middle|>"
    assert byte.to_config() == {
        "kind": "byte",
        "vocab_size": 261,
        "special_tokens": {"eot": 256, "fim_prefix": 257, "fim_middle": 258, "fim_suffix": 259, "file_sep": 260},
    }


def test_byte_token_can_end_mid_character(byte):
    ids = byte.encode("é")
    assert byte.decode_bytes(ids[:1]) == b"\xc3"
    assert byte.decode(ids[:1]) == "\ufffd"


# --- BPE tokenizer ---------------------------------------------------------------------


def test_bpe_layout(bpe):
    assert bpe.kind == "bpe"
    assert 261 < bpe.vocab_size <= 800
    ids = [bpe.eot_id, bpe.fim_prefix_id, bpe.fim_middle_id, bpe.fim_suffix_id, bpe.file_sep_id]
    assert ids == [0, 1, 2, 3, 4]
    assert bpe.special_ids == frozenset(ids)
    assert [bpe.token_bytes(i) for i in ids] == [s.encode() for s in SPECIAL_TOKENS]
    assert bpe.to_config() == {
        "kind": "bpe",
        "vocab_size": bpe.vocab_size,
        "special_tokens": {"eot": 0, "fim_prefix": 1, "fim_middle": 2, "fim_suffix": 3, "file_sep": 4},
    }
    # Every byte value is reachable as a single token, so nothing is ever unencodable.
    single = {bpe.token_bytes(i) for i in range(bpe.vocab_size) if len(bpe.token_bytes(i)) == 1}
    assert single == {bytes([b]) for b in range(256)}


@fast
@given(unicode_text)
def test_bpe_round_trips_any_text(bpe, text):
    ids = bpe.encode(text)
    assert not bpe.special_ids & set(ids)
    assert bpe.decode_bytes(ids) == text.encode("utf-8")
    assert bpe.decode(ids) == text


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trips_tricky_text(bpe, text):
    assert bpe.decode_bytes(bpe.encode(text)) == text.encode("utf-8")


@fast
@given(st.binary(max_size=200))
def test_bpe_encodes_bytes_as_utf8_with_replacement(bpe, data):
    assert bpe.decode_bytes(bpe.encode(data)) == data.decode("utf-8", errors="replace").encode("utf-8")


def test_bpe_token_bytes_match_multibyte_pieces(bpe):
    # U+10000.. are 4 bytes in UTF-8 and not in the training corpus, so they are split into byte tokens.
    text = "🐍"
    ids = bpe.encode(text)
    assert len(ids) > 1
    assert bpe.decode_bytes(ids[:1]) == text.encode()[: len(bpe.token_bytes(ids[0]))]
    assert bpe.decode(ids[:1]).endswith("\ufffd")


def test_bpe_compresses_python_source(bpe):
    held_out = _source(textwrap)  # not in the training corpus
    n_bytes = len(held_out.encode("utf-8"))
    n_tokens = len(bpe.encode(held_out))
    assert n_tokens < n_bytes / 1.5, f"{n_bytes / n_tokens:.2f} bytes per token"


def test_bpe_smallest_vocab_still_round_trips():
    tok = train_bpe(["abc abc abc"], vocab_size=261)
    assert tok.vocab_size == 261
    text = "any text at all: ü 🐍 \x00"
    assert tok.decode_bytes(tok.encode(text)) == text.encode()


@pytest.mark.parametrize("vocab_size", [0, 256, 260])
def test_train_bpe_rejects_too_small_vocab(vocab_size):
    with pytest.raises(ValueError, match="261"):
        train_bpe(["some text"], vocab_size=vocab_size)


# --- properties of both kinds ----------------------------------------------------------


@pytest.fixture(params=["byte", "bpe"])
def tok(request, byte, bpe):
    return {"byte": byte, "bpe": bpe}[request.param]


@fast
@given(text=unicode_text)
def test_prefix_of_ids_gives_prefix_of_bytes(byte, bpe, text):
    data = text.encode("utf-8")
    for tok in (byte, bpe):
        ids = tok.encode(text)
        acc = b""
        for i in ids:
            acc += tok.token_bytes(i)
            assert data.startswith(acc)
        assert acc == data


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_special_token_text_is_encoded_as_plain_text(byte, bpe, kind):
    tok = {"byte": byte, "bpe": bpe}[kind]
    ids = tok.encode(SPECIAL_TEXT)
    assert not tok.special_ids & set(ids)
    assert tok.decode(ids) == SPECIAL_TEXT
    # The specials are still reachable when a caller inserts them on purpose.
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_token_bytes_rejects_out_of_range(tok):
    for bad in (-1, tok.vocab_size, tok.vocab_size + 1000):
        with pytest.raises(ValueError):
            tok.token_bytes(bad)
    with pytest.raises(ValueError):
        tok.decode([0, tok.vocab_size])


# --- save / load -----------------------------------------------------------------------


def test_bpe_save_and_load_round_trip(bpe, tmp_path):
    bpe.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no temp file left over
    loaded = load_tokenizer(tmp_path, bpe.to_config())
    assert isinstance(loaded, BPETokenizer)
    assert loaded.to_config() == bpe.to_config()
    sample = _source(textwrap) + "\n" + "\n".join(TRICKY)
    assert loaded.encode(sample) == bpe.encode(sample)
    assert [loaded.token_bytes(i) for i in range(loaded.vocab_size)] == [
        bpe.token_bytes(i) for i in range(bpe.vocab_size)
    ]
    # encode_special_tokens is not stored in tokenizer.json: the loaded copy must set it again.
    assert not loaded.special_ids & set(loaded.encode(SPECIAL_TEXT))


def test_bpe_save_overwrites(bpe, tmp_path):
    (tmp_path / "tokenizer.json").write_text("old")
    bpe.save(tmp_path)
    assert load_tokenizer(tmp_path, bpe.to_config()).vocab_size == bpe.vocab_size


def test_byte_save_writes_nothing_and_loads(byte, tmp_path):
    byte.save(tmp_path)
    assert list(tmp_path.iterdir()) == []
    loaded = load_tokenizer(tmp_path, byte.to_config())
    assert isinstance(loaded, ByteTokenizer)
    assert loaded.encode("héllo") == byte.encode("héllo")


def test_load_missing_tokenizer_json(bpe, tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json.*missing"):
        load_tokenizer(tmp_path, bpe.to_config())


@pytest.mark.parametrize(
    ("content", "problem"),
    [("not json {", "not valid JSON"), ("{}", "not a tokenizers file"), ('{"model": 3}', "not a tokenizers file")],
)
def test_load_garbage_tokenizer_json(bpe, tmp_path, content, problem):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(TokenizerError, match=r"tokenizer\.json") as err:
        load_tokenizer(tmp_path, bpe.to_config())
    assert problem in str(err.value)


def test_load_rejects_tokenizer_without_specials_first(tmp_path):
    # A valid tokenizers file, but trained without our special tokens at ids 0..4.
    raw = tokenizers.Tokenizer(tk_models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(
        ["hello world"],
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    raw.save(str(tmp_path / "tokenizer.json"))
    config = {"kind": "bpe", "vocab_size": raw.get_vocab_size(), "special_tokens": {}}
    with pytest.raises(TokenizerError, match=r"tokenizer\.json.*<\|endoftext\|>"):
        load_tokenizer(tmp_path, config)


@pytest.mark.parametrize("kind", ["wordpiece", None, ""])
def test_load_unknown_kind(tmp_path, kind):
    with pytest.raises(TokenizerError, match=r"config\.json.*unknown tokenizer kind"):
        load_tokenizer(tmp_path, {"kind": kind, "vocab_size": 261, "special_tokens": {}})


def test_load_mismatched_special_ids(bpe, byte, tmp_path):
    bpe.save(tmp_path)
    config = bpe.to_config()
    config["special_tokens"]["fim_middle"] = 7
    with pytest.raises(TokenizerError, match=r"config\.json.*special token id mismatch.*fim_middle") as err:
        load_tokenizer(tmp_path, config)
    assert "tokenizer.json" in str(err.value)

    config = byte.to_config()
    config["special_tokens"]["eot"] = 0
    with pytest.raises(TokenizerError, match=r"config\.json.*special token id mismatch.*eot"):
        load_tokenizer(tmp_path, config)


def test_load_mismatched_vocab_size(bpe, byte, tmp_path):
    bpe.save(tmp_path)
    config = {**bpe.to_config(), "vocab_size": bpe.vocab_size + 1}
    with pytest.raises(TokenizerError, match=r"config\.json.*vocab_size mismatch") as err:
        load_tokenizer(tmp_path, config)
    assert "tokenizer.json" in str(err.value)

    with pytest.raises(TokenizerError, match=r"config\.json.*vocab_size mismatch"):
        load_tokenizer(tmp_path, {**byte.to_config(), "vocab_size": 256})


def test_tokenizer_error_names_file():
    assert str(TokenizerError("broken", pathlib.Path("m/tokenizer.json"))) == "m/tokenizer.json: broken"
    assert str(TokenizerError("broken")) == "broken"


def test_ascii_printable_is_cheap_in_bpe(bpe):
    # Sanity check on the ByteLevel table: common code characters decode to themselves.
    for ch in string.ascii_letters + string.digits + string.punctuation:
        (only,) = bpe.encode(ch)
        assert bpe.token_bytes(only) == ch.encode()


# --- split points: encodings that join exactly --------------------------------------

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "models" / "default"

# Whitespace of every kind, contractions, digits, punctuation and non-ASCII letters: where
# GPT-2's pre-tokenizer pieces begin and end.
SPLIT_PARTS = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "'s", "'", "x", "Ab", "é", "日本", "1", "23", "(", "):", "#",
               "\x1f", "😀"]
split_text = st.lists(st.sampled_from(SPLIT_PARTS), max_size=24).map("".join)


@pytest.fixture(scope="module")
def shipped() -> BPETokenizer:
    return load_tokenizer(SHIPPED, json.loads((SHIPPED / "config.json").read_text())["tokenizer"])


def _joins(tok, text: str, p: int) -> bool:
    return tok.encode(text[:p]) + tok.encode(text[p:]) == tok.encode(text)


@fast
@given(text=split_text, rest=split_text)
def test_split_point_joins_to_the_whole_encoding_whatever_follows(shipped, bpe, text, rest):
    for tok in (shipped, bpe):
        for end in range(len(text) + 1):
            p = tok.split_point(text, end)
            assert 0 <= p <= end and p == tok.split_point(text[:end] + rest, end)
            assert _joins(tok, text, p) and _joins(tok, text[:end] + rest, p)


def test_split_point_in_real_code_is_exact_and_near_the_end(shipped):
    code = _source(argparse)
    found = 0
    for end in range(1, len(code), 211):
        window = code[max(0, end - 1000) : end + 300]  # a whole file per split would take minutes
        p = shipped.split_point(window, min(end, 1000))
        assert _joins(shipped, window, p)
        found += min(end, 1000) - p < 100
    assert found > len(code) // 211 * 0.95  # code has a split every line or so


def test_split_point_avoids_the_splits_that_would_not_join(shipped):
    # "\n" after whitespace: the head's "\n\n" is one piece, the whole text's two.
    assert not _joins(shipped, "x\n\ny", 3) and shipped.split_point("x\n\ny", 4) == 0
    # A newline before indentation: the whole text's piece is "\n" plus all spaces but one.
    assert not _joins(shipped, "x)\n    y", 3) and shipped.split_point("x)\n    y", 8) == 6  # before " y"
    assert shipped.split_point("a=b;" * 500, 2000) == 0  # minified: no split within reach


def test_split_point_is_declined_where_the_pieces_could_differ(bpe):
    no_regex = json.loads(bpe._tok.to_str())
    no_regex["pre_tokenizer"]["use_regex"] = False
    assert BPETokenizer(tokenizers.Tokenizer.from_str(json.dumps(no_regex))).split_point("a b c", 5) == 0
    added = tokenizers.Tokenizer.from_str(bpe._tok.to_str())
    added.add_tokens(["Ab"])  # matched before the regex: such a token could span a split
    assert BPETokenizer(added).split_point("a b c", 5) == 0
    assert bpe.split_point("a b c", 5) == 3 and bpe.split_point("a b c", 4) == 1  # " c" is read only below end


def test_byte_split_point_is_anywhere(byte):
    assert [byte.split_point("ab\ncd", end) for end in (0, 2, 5, 9)] == [0, 2, 5, 5]
