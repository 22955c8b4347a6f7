"""When a completion is one line or several, and where a multi-line one stops.

The engine already stops at a stop string (a newline for one line, a blank line for
several), at max tokens and at the time cap. The rules here cut the text it returns:
a multi-line completion ends where the code leaves the indentation scope the cursor
is in, at a blank line, or after max_lines lines; one that writes a docstring the cursor
just opened ends with the line that closes it.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")
CLOSERS = ")]}"
TRIPLE_QUOTES = ('"""', "'''")
STRING_PREFIXES = ("", "r", "u", "b", "f", "rb", "br", "rf", "fr")


@dataclass(frozen=True)
class Plan:
    multiline: bool
    scope_indent: int  # a non-blank line indented less than this leaves the scope
    stop_strings: tuple[str, ...]
    docstring: bool = False  # the cursor just opened a triple-quoted string


def opens_docstring(line: str, above: str | None) -> bool:
    """The line ends by opening a triple-quoted string (`above`: the nonblank line before it).

    An odd count of the quote on the line opens a string, except quotes alone on their line,
    which open one only at the top of the file or under a `def`/`class` line: elsewhere they
    close a multi-line docstring.
    """
    stripped = line.rstrip()
    for q in TRIPLE_QUOTES:
        if stripped.endswith(q) and stripped.count(q) % 2 == 1:
            if stripped[: -len(q)].strip().lower() in STRING_PREFIXES:
                return above is None or above.rstrip().endswith(":")
            return True
    return False


def indent_width(line: str) -> int:
    """Leading whitespace width, a tab counting as 4 (only comparisons matter)."""
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += 4
        else:
            break
    return width


def _last_line(text: str) -> str:
    return text[text.rfind("\n") + 1 :]


def _previous_nonblank(prefix: str) -> str | None:
    lines = prefix.split("\n")[:-1]  # the cursor's own line excluded
    for line in reversed(lines[-50:]):
        if line.strip():
            return line
    return None


def plan(prefix: str, suffix: str, mode: str = "auto") -> Plan:
    """Decide single- or multi-line from the text around the cursor.

    auto: multi-line when nothing but whitespace follows the cursor on its line and
    the cursor ends a block opener ("def f():", "if (x) {") or sits on an empty line
    right under one, or has just opened a docstring (whose summary often starts on the
    next line: a single line would be empty). Otherwise a single line: the rest of the
    current line.
    """
    line = _last_line(prefix)
    rest_of_line = suffix.split("\n", 1)[0]
    if mode == "never" or (mode == "auto" and rest_of_line.strip()):
        return Plan(False, 0, ("\n",))
    if opens_docstring(line, _previous_nonblank(prefix)):
        # Its lines sit at the quotes' indentation; it ends at its closing quotes or a blank line.
        return Plan(True, indent_width(line), ("\n\n",), docstring=True)
    stripped = line.rstrip()
    if stripped and stripped.endswith(BLOCK_OPENERS):
        # The body is indented deeper than the opener's line.
        return Plan(True, indent_width(line) + 1, ("\n\n",))
    if not stripped:
        above = _previous_nonblank(prefix)
        if above is not None and above.rstrip().endswith(BLOCK_OPENERS):
            return Plan(True, indent_width(above) + 1, ("\n\n",))
        if mode == "always":
            return Plan(True, indent_width(line), ("\n\n",))
    if mode == "always":
        return Plan(True, indent_width(line), ("\n\n",))
    return Plan(False, 0, ("\n",))


def apply_stop_rules(text: str, prefix: str, plan: Plan, max_lines: int) -> str:
    """Cut a completion where the plan's rules say it ends.

    Single-line: at the first newline. Multi-line: before a blank line, before a line
    that leaves the scope (a closing bracket at the opener's indentation is kept: it
    ends the block in brace languages), and after max_lines lines.
    """
    if not plan.multiline:
        return text.split("\n", 1)[0]
    lines = text.split("\n")
    if plan.docstring:
        return _docstring_lines(lines, max_lines)
    kept = [lines[0]]
    # The first line continues the cursor's line; only whole lines after it are judged.
    for line in lines[1:]:
        if len(kept) >= max_lines:
            break
        if not line.strip():
            break
        indent = indent_width(line)
        if indent < plan.scope_indent:
            if indent == plan.scope_indent - 1 and line.strip()[0] in CLOSERS:
                kept.append(line)
            break
        kept.append(line)
    # A first line that is empty (the cursor ended "def f():") with nothing after is nothing.
    result = "\n".join(kept)
    return result if result.strip() else ""


def _docstring_lines(lines: list[str], max_lines: int) -> str:
    """A docstring's text up to the line that closes it, a blank line or max_lines lines."""
    kept = [lines[0]]  # the rest of the quotes' line, often empty
    if not any(q in lines[0] for q in TRIPLE_QUOTES):
        for line in lines[1:]:
            if len(kept) >= max_lines or not line.strip():
                break
            kept.append(line)
            if any(q in line for q in TRIPLE_QUOTES):
                break
    result = "\n".join(kept)
    return result if result.strip() else ""
