"""Clean-ups of a completion before the editor shows it.

Small models (and large ones) repeat what already follows the cursor, close brackets
they never opened and loop on a line. Each rule cuts the text; none adds to it.
"""

from __future__ import annotations

OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}
CLOSE_TO_OPEN = {v: k for k, v in OPEN_TO_CLOSE.items()}


def trim_suffix_overlap(text: str, suffix: str) -> str:
    """Drop what the completion repeats of the text after the cursor.

    Two cases: the completion's end repeats the start of the rest of the cursor's
    line (completing `foo(` with `x)` when `)` already follows), and a later line of
    the completion repeats the next non-blank line after the cursor (the model
    rewrote code that is already there): cut before it.
    """
    rest_of_line = suffix.split("\n", 1)[0]
    if rest_of_line.strip() and "\n" not in text:
        for k in range(min(len(text), len(rest_of_line)), 0, -1):
            if text.endswith(rest_of_line[:k]) and rest_of_line[:k].strip():
                return text[:-k]
        return text
    following = [line.strip() for line in suffix.split("\n")[1:] if line.strip()]
    if following and "\n" in text:
        target = following[0]
        lines = text.split("\n")
        for i in range(1, len(lines)):
            if lines[i].strip() == target:
                return "\n".join(lines[:i])
    return text


def _open_brackets(text: str) -> list[str]:
    """Brackets opened and not closed in text, ignoring string literals on each line."""
    stack: list[str] = []
    for line in text.split("\n"):
        quote = None
        for i, ch in enumerate(line):
            if quote:
                if ch == quote and line[i - 1] != "\\":
                    quote = None
            elif ch in "\"'`":
                quote = ch
            elif ch == "#" and line[i - 1 : i] in ("", " ", "\t"):
                break  # a Python comment (C's `//` holds no brackets worth tracking)
            elif ch in OPEN_TO_CLOSE:
                stack.append(ch)
            elif ch in CLOSE_TO_OPEN:
                if stack and stack[-1] == CLOSE_TO_OPEN[ch]:
                    stack.pop()
                else:
                    stack.clear()  # unbalanced text before: start over
    return stack


def balance_brackets(text: str, prefix: str) -> str:
    """Cut the completion before the first closing bracket that matches nothing open.

    Open brackets are counted over the prefix's last lines, so `foo(` completed with
    `x)` keeps its `)`, and `x = 1)` loses it.
    """
    stack = _open_brackets("\n".join(prefix.split("\n")[-30:]))
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
            elif ch == "\n":
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in OPEN_TO_CLOSE:
            stack.append(ch)
        elif ch in CLOSE_TO_OPEN:
            if not stack or stack[-1] != CLOSE_TO_OPEN[ch]:
                return text[:i].rstrip(" ")
            stack.pop()
    return text


def _meaningful(line: str) -> bool:
    """Worth calling a repetition: not blank, not just punctuation like `}` or `)`."""
    core = line.strip()
    return sum(ch.isalnum() for ch in core) >= 3


def drop_repetition(text: str, prefix: str) -> str:
    """Cut before a line that repeats an earlier line of the completion, or the line
    just above the cursor (a model stuck in a loop)."""
    lines = text.split("\n")
    before = prefix.split("\n")
    seen = {before[-2].strip()} if len(before) >= 2 and _meaningful(before[-2]) else set()
    for i, line in enumerate(lines):
        # The first line continues the cursor's line: judge it whole.
        whole = (before[-1] + line) if i == 0 else line
        key = whole.strip()
        if _meaningful(whole) and key in seen:
            return "\n".join(lines[:i])
        if _meaningful(whole):
            seen.add(key)
    return text


def postprocess(text: str, prefix: str, suffix: str) -> str:
    text = trim_suffix_overlap(text, suffix)
    text = balance_brackets(text, prefix)
    text = drop_repetition(text, prefix)
    return text.rstrip() if "\n" in text else text
