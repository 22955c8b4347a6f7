"""LSP positions: a line and a character offset counted in UTF-16 code units.

Python strings index code points. Characters outside the Basic Multilingual Plane
(emoji, many CJK extensions) are one code point but two UTF-16 units, so an editor's
column must be converted before it can index a line.
"""

from __future__ import annotations


def utf16_length(text: str) -> int:
    """Length of `text` in UTF-16 code units."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def utf16_to_index(line: str, character: int) -> int:
    """The code point index in `line` at UTF-16 offset `character`.

    An offset past the end of the line is the end of the line (the protocol says so);
    an offset inside a surrogate pair rounds to the start of that character.
    """
    units = 0
    for index, ch in enumerate(line):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > character:
            return index
        units += width
    return len(line)


def index_to_utf16(line: str, index: int) -> int:
    """The UTF-16 offset of code point `index` in `line`."""
    return utf16_length(line[:index])


def offset_at(text: str, line: int, character: int) -> int:
    """Index into `text` of an LSP position (0-based line, UTF-16 character).

    A line past the end of the text is the end of the text. Scans with str.find so
    that a position deep in a large file costs no full split of the file.
    """
    if line < 0 or character < 0:
        raise ValueError(f"position ({line}, {character}) is negative")
    start = 0
    for _ in range(line):
        newline = text.find("\n", start)
        if newline < 0:
            return len(text)
        start = newline + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    line_text = text[start:end]
    line_text = line_text.removesuffix("\r")
    return start + utf16_to_index(line_text, character)


def position_at(text: str, offset: int) -> tuple[int, int]:
    """The LSP position (0-based line, UTF-16 character) of index `offset` in `text`."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return line, index_to_utf16(text[line_start:offset], offset - line_start)
