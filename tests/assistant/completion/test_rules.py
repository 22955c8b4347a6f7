import pytest

from assistant.completion.rules import Plan, apply_stop_rules, plan


@pytest.mark.parametrize(
    "prefix, suffix, mode, multiline, scope",
    [
        ("x = foo(", ")\n", "auto", False, 0),  # text after the cursor on its line: one line
        ("def f(x):", "\n", "auto", True, 1),  # end of a block opener
        ("    if x {", "", "auto", True, 5),
        ("def f(x):\n    ", "\n", "auto", True, 1),  # empty line under an opener
        ("def f(x):\n\n    ", "", "auto", True, 1),  # blank lines between do not matter
        ("x = 1\ny = ", "", "auto", False, 0),  # mid-statement
        ("x = 1\n", "", "auto", False, 0),  # empty line, nothing opened above
        ("def f(x):", "\n", "never", False, 0),
        ("    x = 1", "", "always", True, 4),
    ],
)
def test_plan(prefix, suffix, mode, multiline, scope):
    p = plan(prefix, suffix, mode)
    assert (p.multiline, p.scope_indent) == (multiline, scope)
    assert p.stop_strings == (("\n\n",) if multiline else ("\n",))


MULTI = Plan(True, 5, ("\n\n",))  # inside a block opened at indent 4


@pytest.mark.parametrize(
    "text, the_plan, max_lines, expected",
    [
        ("a + b\nmore", Plan(False, 0, ("\n",)), 8, "a + b"),  # single line: first line only
        ("\n        x = 1\n        y = 2", MULTI, 8, "\n        x = 1\n        y = 2"),
        ("\n        x = 1\n    def g():", MULTI, 8, "\n        x = 1"),  # leaves the scope
        ("\n        x = 1\n    }\n    more", MULTI, 8, "\n        x = 1\n    }"),  # a closer ends the block
        ("\n        x = 1\n\n        y = 2", MULTI, 8, "\n        x = 1"),  # blank line
        ("\n        x = 1\n   \n        y = 2", MULTI, 8, "\n        x = 1"),  # whitespace-only line
        ("\n        a\n        b\n        c", MULTI, 2, "\n        a"),  # max lines (the first counts)
        ("\n    def g():", MULTI, 8, ""),  # nothing inside the scope at all
        ("\n\tx = 1\n\ty", Plan(True, 1, ("\n\n",)), 8, "\n\tx = 1\n\ty"),  # tabs are indentation
    ],
)
def test_stop_rules(text, the_plan, max_lines, expected):
    assert apply_stop_rules(text, "", the_plan, max_lines) == expected


@pytest.mark.parametrize(
    "prefix, suffix, docstring",
    [
        ('def add(a, b):\n    """', "\n", True),
        ("    x = r'''", "", True),
        ('def add(a, b):\n    """Add."""', "\n", False),  # opened and closed: a line of code follows
        ('def add(a, b):\n    """', '"""\n', False),  # the editor closed the quotes: one line in between
        ('def add(a, b):\n    """Sum of a and b.\n\n    """', "\n", False),  # this one closes a docstring
        ('"""', "\n", True),  # a module docstring
        ('class A:\n    r"""', "\n", True),
    ],
)
def test_plan_after_an_opening_triple_quote_writes_the_docstring(prefix, suffix, docstring):
    p = plan(prefix, suffix)
    assert p.docstring == docstring
    if docstring:
        assert p.multiline and p.scope_indent == len(prefix.split("\n")[-1]) - len(prefix.split("\n")[-1].lstrip())


DOC = Plan(True, 4, ("\n\n",), docstring=True)


@pytest.mark.parametrize(
    "text, max_lines, expected",
    [
        ("\n    Add a and b.", 8, "\n    Add a and b."),  # the summary starts on the next line
        ("\n    Add a and b.\n\n    More.", 8, "\n    Add a and b."),  # a blank line ends it
        ('Add a and b."""\n    return a + b', 8, 'Add a and b."""'),  # closed on the quotes' line
        ('\n    Add a\n    and b."""\n    return a + b', 8, '\n    Add a\n    and b."""'),  # the closing line ends it
        ("\n    a\n    b\n    c", 2, "\n    a"),  # max lines (the first counts)
        ("\n\n    Later.", 8, ""),  # nothing before the blank line
    ],
)
def test_docstring_stop_rules(text, max_lines, expected):
    assert apply_stop_rules(text, "", DOC, max_lines) == expected
