import pytest

from assistant.completion.prompt import PromptBudget, build_prompt, split_at
from models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


@pytest.mark.parametrize(
    "text, line, col, prefix",
    [
        ("abc\ndef", 0, 0, ""),
        ("abc\ndef", 0, 2, "ab"),
        ("abc\ndef", 1, 1, "abc\nd"),
        ("abc\ndef", 1, 99, "abc\ndef"),  # past the end of the line: its end
        ("", 0, 0, ""),
        ("é😀x\ny", 0, 2, "é😀"),  # columns count code points
    ],
)
def test_split_at(text, line, col, prefix):
    before, after = split_at(text, line, col)
    assert before == prefix and before + after == text


def test_split_at_bad_line():
    with pytest.raises(ValueError, match="line 3 is outside"):
        split_at("a\nb", 2, 0)


def test_prefix_only_when_nothing_follows():
    assert build_prompt(TOK, "def f(", "  \n") == TOK.encode("def f(")
    assert build_prompt(TOK, "", "") == [TOK.eot_id]


def test_spm_order_and_budget():
    prefix, suffix = "x = 1\n" * 100, "\ny = 2\n" * 100
    ids = build_prompt(TOK, prefix, suffix, PromptBudget(max_tokens=103, suffix_share=0.25))
    assert len(ids) == 103
    assert ids[0] == TOK.fim_suffix_id and ids[-1] == TOK.fim_middle_id
    pre = ids.index(TOK.fim_prefix_id)
    assert TOK.decode(ids[1:pre]) == suffix[:25]  # the suffix's start
    assert TOK.decode(ids[pre + 1 : -1]) == prefix[-75:]  # the prefix's end


def test_typing_extends_the_prompt():
    """A keystroke at the cursor only appends to the cached part of an SPM prompt."""
    a = build_prompt(TOK, "def add(a, b", ")\n\nprint(add(1, 2))\n")
    b = build_prompt(TOK, "def add(a, b)", ")\n\nprint(add(1, 2))\n")
    assert b[: len(a) - 1] == a[:-1]
