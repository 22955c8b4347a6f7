import pytest

from assistant.completion.postprocess import (
    balance_brackets,
    drop_repetition,
    postprocess,
    trim_suffix_overlap,
)


@pytest.mark.parametrize(
    "text, suffix, expected",
    [
        ("x, y)", ")\n", "x, y"),  # repeats the rest of the line
        ("x, y)", "):\n", "x, y"),  # the start of the rest of the line
        ("x, y", ")\n", "x, y"),  # nothing repeated
        ("a\n    b = 2\n    c = 3", "\n    c = 3\n", "a\n    b = 2"),  # rewrites the next line
        ("a\n    b = 2", "\n\n    return b\n", "a\n    b = 2"),
        ("1", "", "1"),
    ],
)
def test_trim_suffix_overlap(text, suffix, expected):
    assert trim_suffix_overlap(text, suffix) == expected


@pytest.mark.parametrize(
    "prefix, text, expected",
    [
        ("print(foo(", "x))", "x))"),  # closes what the prefix opened
        ("x = ", "1)", "1"),  # closes nothing: cut
        ("x = [", "1, 2]]", "1, 2]"),
        ("f(", "a, (b]", "a, (b"),  # wrong kind of closer
        ("x = ", "')' + s", "')' + s"),  # brackets inside strings do not count
        ("s = '(' \nf(", "x)", "x)"),  # nor in the prefix
        ("d = {", "\n    'a': 1,\n}", "\n    'a': 1,\n}"),
    ],
)
def test_balance_brackets(prefix, text, expected):
    assert balance_brackets(text, prefix) == expected


@pytest.mark.parametrize(
    "prefix, text, expected",
    [
        ("", "x = x + 1\nx = x + 1\nx = x + 1", "x = x + 1"),  # a loop
        ("", "a = 1\nb = 2", "a = 1\nb = 2"),
        ("", "}\n}\n}", "}\n}\n}"),  # punctuation-only lines may repeat
        ("total += 1\n", "total += 1", ""),  # repeats the line above the cursor
        ("    ret", "urn x\n    return x", "urn x"),  # the first line is judged whole
    ],
)
def test_drop_repetition(prefix, text, expected):
    assert drop_repetition(text, prefix) == expected


def test_postprocess_applies_every_rule():
    prefix, suffix = "def f(a):\n    return g(a", ")\n"
    assert postprocess(", 1))", prefix, suffix) == ", 1)"  # overlap trimmed, then balanced
    assert postprocess("\n    total = 1\n    total = 1\n", "def f():", "") == "\n    total = 1"
