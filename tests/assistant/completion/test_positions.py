import pytest

from assistant.completion.positions import (
    UTF8,
    UTF32,
    index_to_units,
    offset_at,
    position_at,
    unit_length,
    units_to_index,
    utf16_length,
)

EMOJI = "😀"  # one code point, two UTF-16 units


@pytest.mark.parametrize(
    "line, character, index",
    [
        ("abc", 0, 0),
        ("abc", 2, 2),
        ("abc", 99, 3),  # past the end: the end
        ("é=1", 1, 1),  # BMP non-ASCII: one unit
        (f"{EMOJI}x", 2, 1),  # after the emoji
        (f"{EMOJI}x", 3, 2),
        (f"{EMOJI}x", 1, 0),  # inside the surrogate pair: the emoji's start
        (f"a{EMOJI}{EMOJI}b", 5, 3),
        ("中文 = 1", 2, 2),
    ],
)
def test_units_to_index(line, character, index):
    assert units_to_index(line, character) == index


@pytest.mark.parametrize("line", ["", "abc", f"{EMOJI}x", f"a{EMOJI}é{EMOJI}b", "中文"])
def test_round_trip(line):
    for i in range(len(line) + 1):
        assert units_to_index(line, index_to_units(line, i)) == i
    assert utf16_length(line) == len(line.encode("utf-16-le")) // 2


@pytest.mark.parametrize(
    "text, line, character, offset",
    [
        ("ab\ncd", 1, 1, 4),
        ("ab\ncd", 0, 9, 2),  # past the line's end: before its newline
        ("ab\r\ncd", 0, 9, 2),  # CRLF: before the \r
        ("ab\ncd", 7, 0, 5),  # past the last line: the end of the text
        (f"x = '{EMOJI}'\ny", 0, 8, 7),  # after the closing quote
        ("", 0, 0, 0),
    ],
)
def test_offset_at(text, line, character, offset):
    assert offset_at(text, line, character) == offset


def test_position_at_inverts_offset_at():
    text = f"a{EMOJI}b\n\nc{EMOJI}\n"
    for offset in range(len(text) + 1):
        line, character = position_at(text, offset)
        assert offset_at(text, line, character) == offset


def test_negative_position_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        offset_at("abc", -1, 0)


@pytest.mark.parametrize(
    "line, character, encoding, index",
    [
        (f"é{EMOJI}x", 2, UTF8, 1),  # é is two UTF-8 bytes
        (f"é{EMOJI}x", 6, UTF8, 2),  # the emoji is four
        (f"é{EMOJI}x", 4, UTF8, 1),  # inside the emoji: its start
        (f"é{EMOJI}x", 2, UTF32, 2),  # UTF-32: code points
        ("中文x", 6, UTF8, 2),
    ],
)
def test_other_encodings(line, character, encoding, index):
    assert units_to_index(line, character, encoding) == index
    assert unit_length(line, encoding) == len(line.encode({UTF8: "utf-8", UTF32: "utf-32-le"}[encoding])) // (4 if encoding == UTF32 else 1)


class CountingText(str):
    """A text that counts the str calls made on it from Python: each is one pass in C."""

    calls = 0

    def count(self, *args):
        CountingText.calls += 1
        return super().count(*args)

    def find(self, *args):
        CountingText.calls += 1
        return super().find(*args)


def test_a_line_deep_in_a_large_text_is_found_in_chunks_not_line_by_line():
    text = CountingText("x = 1\n" * 2_000_000)  # 12 MB
    assert offset_at(text, 1_999_999, 2) == 6 * 1_999_999 + 2
    assert offset_at(text, 2_000_001, 0) == len(text)
    # Newlines counted a chunk at a time: a few thousand calls, not one per line (2 million).
    assert CountingText.calls < 40_000
