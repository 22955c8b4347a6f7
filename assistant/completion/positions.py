"""LSP positions: a line and a character offset counted in code units of the
negotiated encoding, UTF-16 unless client and server agreed on UTF-8 or UTF-32.

Python strings index code points. In UTF-16 a character outside the Basic
Multilingual Plane (emoji, many CJK extensions) is two units; in UTF-8 anything past
ASCII is two to four. So an editor's column must be converted before it can index a
line.
"""

from __future__ import annotations

UTF16, UTF8, UTF32 = "utf-16", "utf-8", "utf-32"
_CHUNK = 1 << 16  # characters whose newlines are counted at once when seeking a line


def _width(ch: str, encoding: str) -> int:
    if encoding == UTF8:
        return len(ch.encode("utf-8", "surrogatepass"))
    if encoding == UTF32:
        return 1
    return 2 if ord(ch) > 0xFFFF else 1


def unit_length(text: str, encoding: str = UTF16) -> int:
    """Length of `text` in code units of `encoding`."""
    if encoding == UTF32:
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def utf16_length(text: str) -> int:
    return unit_length(text, UTF16)


def units_to_index(line: str, character: int, encoding: str = UTF16) -> int:
    """The code point index in `line` at offset `character` (code units).

    An offset past the end of the line is the end of the line (the protocol says so);
    an offset inside a character's units rounds to the start of that character.
    """
    units = 0
    for index, ch in enumerate(line):
        width = _width(ch, encoding)
        if units + width > character:
            return index
        units += width
    return len(line)


def index_to_units(line: str, index: int, encoding: str = UTF16) -> int:
    """The offset in code units of code point `index` in `line`."""
    return unit_length(line[:index], encoding)


def _line_start(text: str, line: int) -> int | None:
    """Index where 0-based `line` starts; None past the last line. Newlines are
    counted a chunk at a time (in C), so a line deep in a 10 MB file costs milliseconds."""
    start = 0
    remaining = line
    while remaining:
        in_chunk = text.count("\n", start, start + _CHUNK)
        if in_chunk < remaining:
            if start + _CHUNK >= len(text):
                return None
            remaining -= in_chunk
            start += _CHUNK
            continue
        for _ in range(remaining):
            start = text.find("\n", start) + 1
        remaining = 0
    return start


def offset_at(text: str, line: int, character: int, encoding: str = UTF16) -> int:
    """Index into `text` of an LSP position (0-based line, character in code units).

    A line past the end of the text is the end of the text.
    """
    if line < 0 or character < 0:
        raise ValueError(f"position ({line}, {character}) is negative")
    start = _line_start(text, line)
    if start is None:
        return len(text)
    end = text.find("\n", start)
    line_text = text[start : len(text) if end < 0 else end].removesuffix("\r")
    return start + units_to_index(line_text, character, encoding)


def position_at(text: str, offset: int, encoding: str = UTF16) -> tuple[int, int]:
    """The LSP position (0-based line, character in code units) of index `offset`."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return line, index_to_units(text[line_start:offset], offset - line_start, encoding)
