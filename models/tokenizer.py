"""Tokenizers for the completion model: a trivial byte tokenizer, a byte-level BPE, and
SentencePiece (the Llama 2 `tokenizer.model` that Meta's released MTP models use).

All kinds share one contract that the rest of the project relies on:

* ``encode`` never emits a special id, so text that happens to contain
  "<|endoftext|>" (this file, for one) cannot forge document or FIM boundaries;
  callers insert special ids explicitly.
* every token maps to exact bytes (``token_bytes``), so streaming output can be
  assembled byte by byte even when a token ends in the middle of a UTF-8 character.

SentencePiece models come from elsewhere and have no FIM specials: their FIM ids (and
file separator) are None, and ``has_fim`` says so. They also have a beginning-of-sequence
token (``bos_id``) that Llama models expect at the start of every prompt; ours have none.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>")

# Names used in config.json, in SPECIAL_TOKENS order.
SPECIAL_NAMES = ("eot", "fim_prefix", "fim_middle", "fim_suffix", "file_sep")

TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
CONFIG_FILE = "config.json"


class TokenizerError(Exception):
    """A tokenizer could not be built or loaded; the message names the file, if any."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table, which the ByteLevel pre-tokenizer uses.

    `tokenizers` only exposes the alphabet as an unordered list
    (``pre_tokenizers.ByteLevel.alphabet()``), not the mapping, so we rebuild it:
    printable Latin-1 bytes map to themselves, the rest to U+0100 onwards in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_SYMBOL = _bytes_to_unicode()
_SYMBOL_TO_BYTE = {symbol: b for b, symbol in _BYTE_TO_SYMBOL.items()}
# If `tokenizers` ever changed its alphabet, every decoded byte would be wrong; fail at import instead.
assert set(_SYMBOL_TO_BYTE) == set(pre_tokenizers.ByteLevel.alphabet()), "ByteLevel alphabet changed"


class _TableTokenizer:
    """Shared behaviour: each id maps to a fixed byte string held in ``_table``."""

    kind: str
    bos_id: int | None = None  # only SentencePiece (Llama) models start prompts with one

    def __init__(self, table: list[bytes], special_ids: tuple[int | None, ...]) -> None:
        self._table = table
        self.vocab_size = len(table)
        self.eot_id, self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id, self.file_sep_id = special_ids
        self.special_ids = frozenset(i for i in special_ids if i is not None)

    @property
    def has_fim(self) -> bool:
        """Whether the model knows fill-in-the-middle prompts (our own tokenizers do)."""
        return None not in (self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id)

    def token_bytes(self, token_id: int) -> bytes:
        # Checked explicitly: a negative id would otherwise index from the end of the table.
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} out of range for a vocabulary of {self.vocab_size}")
        return self._table[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def split_point(self, text: str, end: int) -> int:
        """A position p <= end in text where encode(text) == encode(text[:p]) + encode(text[p:])
        whatever text holds from `end` on (only text[:end] is read); 0 where none is known.
        It lets a caller keep the encoding of a head that stays the same from one call to the
        next and encode only the rest. Only kinds whose splitting rules are known give one."""
        return 0

    def to_config(self) -> dict:
        specials = (self.eot_id, self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id, self.file_sep_id)
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": dict(zip(SPECIAL_NAMES, specials)),
        }


class ByteTokenizer(_TableTokenizer):
    """ids 0..255 are raw bytes, 256..260 are SPECIAL_TOKENS in order. Needs no files."""

    kind = "byte"

    def __init__(self) -> None:
        table = [bytes([b]) for b in range(256)] + [s.encode("utf-8") for s in SPECIAL_TOKENS]
        super().__init__(table, tuple(range(256, 256 + len(SPECIAL_TOKENS))))

    def encode(self, text: str | bytes) -> list[int]:
        # Specials live above 255, so no input can produce one.
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def split_point(self, text: str, end: int) -> int:
        return max(0, min(end, len(text)))  # one token per byte: any split is exact

    def save(self, model_dir: Path) -> None:
        """Nothing to write: the byte vocabulary is fixed."""


class BPETokenizer(_TableTokenizer):
    """A byte-level BPE `tokenizers.Tokenizer` with SPECIAL_TOKENS at ids 0..4.

    Only encoding is delegated to `tokenizers`; decoding goes through our own byte
    table so that partial UTF-8 sequences survive (its ByteLevel decoder returns str).
    """

    kind = "bpe"

    def __init__(self, tokenizer: tokenizers.Tokenizer, path: Path | None = None) -> None:
        """Wrap ``tokenizer``; ``path`` is only used to name the file in error messages."""
        _check_layout(tokenizer, path)
        # Not stored in tokenizer.json, so it must be set every time: treat special-token
        # text in the input as ordinary text.
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        self._splits = _splits_like_gpt2(tokenizer)

        size = tokenizer.get_vocab_size(with_added_tokens=True)
        table = []
        for token_id in range(size):
            token = tokenizer.id_to_token(token_id)
            if token is None:
                raise TokenizerError(f"vocabulary has no token with id {token_id} (ids must be contiguous)", path)
            if token_id < len(SPECIAL_TOKENS):
                table.append(token.encode("utf-8"))
            elif all(symbol in _SYMBOL_TO_BYTE for symbol in token):
                table.append(bytes(_SYMBOL_TO_BYTE[symbol] for symbol in token))
            else:
                raise TokenizerError(f"token {token_id} ({token!r}) is not made of ByteLevel symbols", path)
        super().__init__(table, tuple(range(len(SPECIAL_TOKENS))))

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tok.encode(text, add_special_tokens=False).ids

    def split_point(self, text: str, end: int) -> int:
        return _gpt2_split_point(text, end) if self._splits else 0

    def save(self, model_dir: Path) -> None:
        """Write model_dir/tokenizer.json atomically, so a crash never leaves a torn file."""
        model_dir = Path(model_dir)
        fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{TOKENIZER_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self._tok.to_str(pretty=True))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, model_dir / TOKENIZER_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# How far back from `end` split_point looks: a split near the end is what pays, and
# text without one there (minified code) is simply encoded whole.
_SPLIT_SEARCH = 512


def _splits_like_gpt2(tok: tokenizers.Tokenizer) -> bool:
    """Whether `tok` splits text into pieces exactly as GPT-2's regex does and encodes each
    piece on its own: a ByteLevel pre-tokenizer with its regex (and nothing else), no
    normalizer, deterministic BPE (no dropout), and no added token but special ones (an
    added non-special token is matched before the regex and could span a split)."""
    pre = tok.pre_tokenizer
    return (
        isinstance(pre, pre_tokenizers.ByteLevel)
        and pre.use_regex
        and tok.normalizer is None
        and isinstance(tok.model, models.BPE)
        and tok.model.dropout is None
        and all(added.special for added in tok.get_added_tokens_decoder().values())
    )


def _printable(char: str) -> bool:
    # Printable ASCII other than space: "\S" under any regex engine's reading of Unicode.
    return "!" <= char <= "~"


def _gpt2_split_point(text: str, end: int) -> int:
    r"""The last position p <= end where GPT-2's pre-tokenizer regex
    ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)
    starts a piece both in text and in text[p:], and ends one at p in text[:p], so the
    encodings of the two parts join to that of the whole; 0 where none lies within
    _SPLIT_SEARCH characters. Two kinds, each judged on characters before `end` only:

    * before a space followed by a printable character (" x"): no piece crosses the space's
      left edge (a whitespace run before it ends there, by "(?!\S)" in the whole text and
      at the end of the head), and " x..." starts a piece in both;
    * after a newline between printable characters ("a\nb"): "\n" is a piece of its own in
      the whole text and in the head. Not after a newline preceded by whitespace: the head's
      "\n\n" would be one piece where the whole text has two.
    """
    end = min(end, len(text))
    if end < 2:  # a split needs a character on each side (and str.rfind reads a negative end from the back)
        return 0
    lo = max(0, end - _SPLIT_SEARCH)
    best = 0
    space = text.rfind(" ", lo, end - 1)
    while space >= 0:
        if _printable(text[space + 1]):
            best = space
            break
        space = text.rfind(" ", lo, space)
    newline = text.rfind("\n", max(lo, 1), end - 1)
    while newline > best - 1 and newline >= 1:
        if _printable(text[newline - 1]) and _printable(text[newline + 1]):
            best = max(best, newline + 1)
            break
        newline = text.rfind("\n", max(lo, 1), newline)
    return best


def _check_layout(tok: tokenizers.Tokenizer, path: Path | None) -> None:
    """Reject tokenizers whose encodings would not round-trip through our byte table."""
    if not isinstance(tok.model, models.BPE):
        raise TokenizerError(f"model is {type(tok.model).__name__}, expected BPE", path)
    pre = tok.pre_tokenizer
    if not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space:
        raise TokenizerError("pre-tokenizer must be ByteLevel with add_prefix_space=False", path)
    if tok.normalizer is not None:
        # A normalizer rewrites the input, so decode(encode(text)) would differ from text.
        raise TokenizerError("tokenizer has a normalizer; byte-exact round trips need none", path)
    for expected_id, special in enumerate(SPECIAL_TOKENS):
        actual = tok.token_to_id(special)
        if actual != expected_id:
            raise TokenizerError(f"special token {special} has id {actual}, expected {expected_id}", path)
    vocab = tok.get_vocab(with_added_tokens=False)
    missing = [s for s in _SYMBOL_TO_BYTE if s not in vocab]
    if missing:
        # Without every byte symbol some inputs would have no encoding at all.
        raise TokenizerError(f"vocabulary lacks {len(missing)} of the 256 ByteLevel byte symbols", path)


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE on ``texts``.

    ``vocab_size`` is an upper bound: a small corpus can run out of merges first,
    so read the result's ``vocab_size``.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {minimum} "
            f"(256 byte symbols + {len(SPECIAL_TOKENS)} special tokens)"
        )
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # listed first, so they get ids 0..4
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return BPETokenizer(tok)


# Appended to a serialized SentencePiece ModelProto, these bytes merge
# `normalizer_spec { add_dummy_prefix: false }` into it (protobuf merges a repeated
# message field into the earlier one): field 3 (normalizer_spec), 2 bytes long, holding
# field 3 (add_dummy_prefix) = 0. Written by hand to avoid a dependency on protobuf.
_NO_DUMMY_PREFIX = b"\x1a\x02\x18\x00"

# SentencePiece's stand-in for a space inside pieces ("▁foo" is " foo").
_SPACE_SYMBOL = "\u2581"

# What sentencepiece itself prints for <unk> (never produced when byte fallback is on).
_UNK_SURFACE = " \u2047 ".encode("utf-8")

# Text that a normalizing tokenizer would change: full-width and circled letters (NFKC),
# combining marks, runs of spaces, tabs, CR, NUL, astral characters, a literal U+2581.
_ROUND_TRIP_PROBE = "x \u2581 y\t\n\r\n  \uff26\uff55\uff4c\uff4c \u2460 cafe\u0301 caf\u00e9 \u65e5\u672c \U0001f40d \x00 end "


class SentencePieceTokenizer(_TableTokenizer):
    """A SentencePiece `tokenizer.model` with byte fallback (Llama 2's, for Meta's MTP models).

    Encoding runs sentencepiece with its "dummy prefix" (a space added in front of the
    text) switched off, so that ``decode(encode(text)) == text`` exactly; pieces map to
    bytes with U+2581 as a space and ``<0xNN>`` as the byte NN. Decoding goes through
    that byte table, so, unlike ``SentencePieceProcessor.decode``, a leading space is kept:
    a completion that starts a new word starts with its space.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, path: Path | None = None) -> None:
        """Wrap a serialized model; ``path`` is only used to name the file in error messages."""
        self._proto = model_proto
        try:
            sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto + _NO_DUMMY_PREFIX)
        except (RuntimeError, OSError, TypeError):
            # sentencepiece's own message is an internal source location; say what it means.
            raise TokenizerError("not a SentencePiece model file (sentencepiece cannot parse it)", path) from None
        self._sp = sp

        table = []
        for token_id in range(sp.get_piece_size()):
            piece = sp.id_to_piece(token_id)
            if sp.is_byte(token_id):  # "<0x0A>"
                table.append(bytes([int(piece[3:5], 16)]))
            elif sp.is_control(token_id):  # <s>, </s>: markers, no text
                table.append(b"")
            elif sp.is_unknown(token_id):
                table.append(_UNK_SURFACE)
            else:
                table.append(piece.replace(_SPACE_SYMBOL, " ").encode("utf-8"))
        n_byte_pieces = sum(sp.is_byte(i) for i in range(len(table)))
        if n_byte_pieces != 256:
            raise TokenizerError(
                f"has {n_byte_pieces} of the 256 byte-fallback pieces <0x00>..<0xFF> "
                "(train it with byte_fallback=True); without them some text becomes <unk>",
                path,
            )
        if sp.eos_id() < 0:
            raise TokenizerError("defines no end-of-sequence token </s>", path)
        super().__init__(table, (sp.eos_id(), None, None, None, None))
        self._space_symbol_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_SYMBOL.encode("utf-8")]
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.special_ids = frozenset(i for i in range(len(table)) if sp.is_control(i) or sp.is_unknown(i))
        if self.decode_bytes(self.encode(_ROUND_TRIP_PROBE)) != _ROUND_TRIP_PROBE.encode("utf-8"):
            # e.g. an NFKC normalizer or collapsed whitespace: completions would not match the text.
            raise TokenizerError("normalizes its input, so decoding would not give back the text encoded", path)

    @classmethod
    def from_file(cls, path: Path | str) -> "SentencePieceTokenizer":
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError("missing", path) from None
        except OSError as e:
            raise TokenizerError(f"cannot read: {e}", path) from None
        return cls(data, path)

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        # Control pieces such as "<s>" are never matched in the input: this never emits a special.
        # sentencepiece reads a literal U+2581 in the text as a space, so it goes in as its
        # three byte-fallback pieces instead, the only way to get it back exactly.
        parts = text.split(_SPACE_SYMBOL)
        ids = self._sp.encode(parts[0])
        for part in parts[1:]:
            ids += self._space_symbol_ids + self._sp.encode(part)
        return ids

    def to_config(self) -> dict:
        config = super().to_config()
        config["special_tokens"]["bos"] = self.bos_id
        return config

    def pieces(self) -> list[tuple[str, float, str]]:
        """(piece, score, type) per id, type one of normal, unknown, control, unused, byte:
        what a llama-SPM vocabulary (e.g. in a GGUF file) records. sentencepiece's Python
        API cannot tell user-defined pieces (Llama 2 has none) from normal ones."""
        sp = self._sp
        checks = (("byte", sp.is_byte), ("control", sp.is_control), ("unknown", sp.is_unknown), ("unused", sp.is_unused))
        return [
            (sp.id_to_piece(i), sp.get_score(i), next((name for name, check in checks if check(i)), "normal"))
            for i in range(self.vocab_size)
        ]

    def save(self, model_dir: Path) -> None:
        """Write model_dir/tokenizer.model (the original bytes) atomically."""
        model_dir = Path(model_dir)
        fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{SENTENCEPIECE_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._proto)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, model_dir / SENTENCEPIECE_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# Fill-in-the-middle token texts of the families that have them: (prefix, middle, suffix, file separator).
FIM_FAMILIES = (
    ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>"),  # ours, Qwen2.5-Coder
    ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<file_sep>"),  # StarCoder
    ("<PRE>", "<MID>", "<SUF>", None),  # CodeLlama
)


def _fim_ids(table: list[bytes], special: set[int]) -> tuple[int | None, int | None, int | None, int | None]:
    """The FIM ids of the first family whose three tokens are all special tokens of the vocabulary."""
    by_text = {table[i]: i for i in special}
    for family in FIM_FAMILIES:
        ids = [by_text.get(t.encode()) if t else None for t in family]
        if None not in ids[:3]:
            return ids[0], ids[1], ids[2], ids[3]
    return None, None, None, None


class GGUFTokenizer(_TableTokenizer):
    """The vocabulary of a GGUF file, encoded by llama.cpp itself, so that a base model
    gets exactly the tokens llama.cpp would give it.

    config.json names the file (relative to the model directory), normally the llama.cpp
    main model, and records the special ids; nothing else is saved. One caveat of
    llama.cpp's SentencePiece ("llama") vocabularies: they may prefix the text with a
    space, as the model saw in training, so decode(encode(text)) can start with a space.
    """

    kind = "gguf"

    def __init__(self, path: Path | str, relative_file: str | None = None) -> None:
        import ctypes

        import llama_cpp

        from models.gguf_export import quiet_llama_logs

        self.path = Path(path)
        self.relative_file = relative_file or self.path.name
        if not self.path.is_file():
            raise TokenizerError("missing (the GGUF file whose vocabulary this model uses)", self.path)
        quiet_llama_logs()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise TokenizerError("llama.cpp could not read its vocabulary (corrupt or truncated GGUF)", self.path)
        self._llama = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._buffer = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_vocab_n_tokens(self._vocab)
        table = [self._piece(i) for i in range(n)]
        control = {i for i in range(n) if llama_cpp.llama_vocab_is_control(self._vocab, i)}

        def found(token: int) -> int | None:
            return token if 0 <= token < n else None

        eot = found(llama_cpp.llama_vocab_eot(self._vocab))
        eot = eot if eot is not None else found(llama_cpp.llama_vocab_eos(self._vocab))
        if eot is None:
            raise TokenizerError("defines no end-of-text or end-of-sequence token", self.path)
        fim = [found(f(self._vocab)) for f in (llama_cpp.llama_vocab_fim_pre, llama_cpp.llama_vocab_fim_mid,
                                              llama_cpp.llama_vocab_fim_suf, llama_cpp.llama_vocab_fim_sep)]
        if None in fim[:3]:
            fim = list(_fim_ids(table, control))
        super().__init__(table, (eot, *fim))
        bos = found(llama_cpp.llama_vocab_bos(self._vocab))
        self.bos_id = bos if bos is not None and llama_cpp.llama_vocab_get_add_bos(self._vocab) else None
        self.special_ids = frozenset(control | set(self.special_ids))

    def _piece(self, token: int) -> bytes:
        import ctypes

        n = self._llama.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, True)
        if n < 0:  # the buffer is too small: it says how much is needed
            self._buffer = ctypes.create_string_buffer(-n)
            n = self._llama.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, True)
        return self._buffer.raw[:n]

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        if not data:
            return []
        capacity = len(data) + 8
        while True:
            out = (self._llama.llama_token * capacity)()
            # add_special=False: no BOS/EOS; parse_special=False: special-token text is plain text.
            n = self._llama.llama_tokenize(self._vocab, data, len(data), out, capacity, False, False)
            if n >= 0:
                return list(out[:n])
            capacity = -n

    def to_config(self) -> dict:
        config = super().to_config()
        config["special_tokens"]["bos"] = self.bos_id
        config["file"] = self.relative_file
        return config

    def save(self, model_dir: Path) -> None:
        """Nothing to write: the vocabulary is read from the GGUF file config.json names."""

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model:
            self._model = None
            self._llama.llama_model_free(model)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class HFTokenizer(_TableTokenizer):
    """A Hugging Face tokenizer.json as it comes (Llama 3's byte-level BPE, Llama 2's
    SentencePiece-style BPE with byte fallback, ...). The end-of-text and beginning ids
    come from the checkpoint's config.json and are recorded in ours."""

    kind = "hf"

    def __init__(self, tokenizer: tokenizers.Tokenizer, eot_id: int, bos_id: int | None, path: Path | None = None):
        tokenizer.encode_special_tokens = True  # special-token text in the input is plain text
        self._tok = tokenizer
        self._splits = _splits_like_gpt2(tokenizer)
        decoder = json.dumps(json.loads(tokenizer.to_str()).get("decoder"))
        byte_level = "ByteLevel" in decoder
        added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        table = []
        for token_id in range(size):
            token = tokenizer.id_to_token(token_id)
            if token is None:
                raise TokenizerError(f"vocabulary has no token with id {token_id} (ids must be contiguous)", path)
            byte = _BYTE_PIECE.fullmatch(token)
            if token_id in added:
                table.append(token.encode("utf-8"))
            elif byte_level and all(symbol in _SYMBOL_TO_BYTE for symbol in token):
                table.append(bytes(_SYMBOL_TO_BYTE[symbol] for symbol in token))
            elif byte and not byte_level:
                table.append(bytes([int(byte.group(1), 16)]))
            else:
                table.append(token.replace(_SPACE_SYMBOL, " ").encode("utf-8"))
        for name, token_id in (("end-of-text", eot_id), ("beginning-of-text", bos_id)):
            if token_id is not None and not 0 <= token_id < size:
                raise TokenizerError(f"{name} id {token_id} is outside the vocabulary of {size}", path)
        special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        super().__init__(table, (eot_id, *_fim_ids(table, special)))
        self.bos_id = bos_id
        self.special_ids = frozenset(special | set(self.special_ids))

    @classmethod
    def from_file(cls, path: Path | str, eot_id: int, bos_id: int | None) -> "HFTokenizer":
        path = Path(path)
        return cls(_read_tokenizer_file(path), eot_id, bos_id, path)

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tok.encode(text, add_special_tokens=False).ids

    def to_config(self) -> dict:
        config = super().to_config()
        config["special_tokens"]["bos"] = self.bos_id
        return config

    split_point = BPETokenizer.split_point
    save = BPETokenizer.save


Tokenizer = ByteTokenizer | BPETokenizer | SentencePieceTokenizer | GGUFTokenizer | HFTokenizer


def load_tokenizer(model_dir: Path, config: dict) -> Tokenizer:
    """Build the tokenizer described by config.json's "tokenizer" section ``config``.

    Checks that the tokenizer found matches what the model was trained with: a silent
    mismatch in special ids or vocabulary size would produce garbage, not an error.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not isinstance(config, dict):
        raise TokenizerError(f'"tokenizer" section must be an object, got {type(config).__name__}', config_path)
    kind = config.get("kind")
    if kind == "byte":
        tok: Tokenizer = ByteTokenizer()
        found_in = "the byte tokenizer"
    elif kind == "bpe":
        tokenizer_path = model_dir / TOKENIZER_FILE
        tok = BPETokenizer(_read_tokenizer_file(tokenizer_path), tokenizer_path)
        found_in = TOKENIZER_FILE
    elif kind == "sentencepiece":
        tok = SentencePieceTokenizer.from_file(model_dir / SENTENCEPIECE_FILE)
        found_in = SENTENCEPIECE_FILE
    elif kind == "gguf":
        relative = config.get("file")
        if not isinstance(relative, str) or Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise TokenizerError(f'a "gguf" tokenizer needs "file", a path inside the model directory, got {relative!r}',
                                 config_path)
        tok = GGUFTokenizer(model_dir / relative, relative)
        found_in = relative
    elif kind == "hf":
        specials = config.get("special_tokens") if isinstance(config.get("special_tokens"), dict) else {}
        eot, bos = specials.get("eot"), specials.get("bos")
        if not isinstance(eot, int) or not (bos is None or isinstance(bos, int)):
            raise TokenizerError('an "hf" tokenizer needs integer "eot" (and "bos" or null) special tokens', config_path)
        tok = HFTokenizer.from_file(model_dir / TOKENIZER_FILE, eot, bos)
        found_in = TOKENIZER_FILE
    else:
        raise TokenizerError(
            f'unknown tokenizer kind {kind!r} (expected "byte", "bpe", "sentencepiece", "gguf" or "hf")', config_path
        )

    actual = tok.to_config()
    if config.get("vocab_size") != actual["vocab_size"]:
        raise TokenizerError(
            f"vocab_size mismatch: {CONFIG_FILE} says {config.get('vocab_size')!r}, "
            f"{found_in} has {actual['vocab_size']}",
            config_path,
        )
    stored = config.get("special_tokens")
    if stored != actual["special_tokens"]:
        stored = stored if isinstance(stored, dict) else {}
        wrong = [
            f"{name}: {stored.get(name)!r} in {CONFIG_FILE}, {i} in {found_in}"
            for name, i in actual["special_tokens"].items()
            if stored.get(name) != i
        ]
        wrong += [f"unknown name {name!r} in {CONFIG_FILE}" for name in stored if name not in actual["special_tokens"]]
        raise TokenizerError(f"special token id mismatch ({'; '.join(wrong)})", config_path)
    return tok


def _read_tokenizer_file(path: Path) -> tokenizers.Tokenizer:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError("missing; a bpe model needs its tokenizer.json next to config.json", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read: {e}", path) from e
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"not valid JSON: {e}", path) from e
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for schema errors
        raise TokenizerError(f"not a tokenizers file: {e}", path) from e
