import pytest

from assistant.completion.prompt import Prompt, PromptBudget, build_prompt, split_at
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
    assert build_prompt(TOK, "def f(", "  \n", heal=False) == Prompt(TOK.encode("def f("))
    assert build_prompt(TOK, "", "") == Prompt([TOK.eot_id])


def test_the_prefix_last_token_is_healed():
    assert build_prompt(TOK, "x = ", "") == Prompt(TOK.encode("x ="), b" ")
    spm = build_prompt(TOK, "y = f(", ")\n")  # SPM: the token before [MID] is the one healed
    assert spm.heal == b"(" and TOK.decode(spm.ids[spm.ids.index(TOK.fim_prefix_id) + 1 : -1]) == "y = f"
    assert spm.ids[-1] == TOK.fim_middle_id
    assert build_prompt(TOK, "", "\nz = 1\n").heal == b""  # nothing before the cursor: nothing to heal


def test_spm_order_and_budget():
    prefix, suffix = "x = 1\n" * 100, "\ny = 2\n" * 100
    ids = build_prompt(TOK, prefix, suffix, PromptBudget(max_tokens=103, suffix_share=0.25), heal=False).ids
    assert len(ids) == 103
    assert ids[0] == TOK.fim_suffix_id and ids[-1] == TOK.fim_middle_id
    pre = ids.index(TOK.fim_prefix_id)
    assert TOK.decode(ids[1:pre]) == suffix[:25]  # the suffix's start
    assert TOK.decode(ids[pre + 1 : -1]) == prefix[-75:]  # the prefix's end


def test_typing_extends_the_prompt():
    """A keystroke at the cursor only appends to the cached part of an SPM prompt."""
    a = build_prompt(TOK, "def add(a, b", ")\n\nprint(add(1, 2))\n").ids
    b = build_prompt(TOK, "def add(a, b)", ")\n\nprint(add(1, 2))\n").ids
    assert b[: len(a) - 1] == a[:-1]


from assistant.completion.prompt import Snippet


def test_snippets_come_first_and_whole():
    snippets = [Snippet("a.py", "def helper():\n    return 1"), Snippet("b.py", "x" * 500)]
    ids = build_prompt(TOK, "y = helper(", ")\n", PromptBudget(max_tokens=200, snippet_share=0.5), snippets).ids
    eot = ids.index(TOK.eot_id)
    assert TOK.decode(ids[:eot]) == "# a.py\ndef helper():\n    return 1\n\n"  # b.py did not fit: left out whole
    assert ids[eot + 1] == TOK.fim_suffix_id and ids[-1] == TOK.fim_middle_id
    assert len(ids) <= 200


@pytest.mark.parametrize("step", [1, 16])
def test_prefix_cut_in_steps_keeps_keystrokes_extending(step):
    """Past its budget the prefix is cut in steps, so most keystrokes still extend the
    previous prompt (the engine reuses its KV cache for the common prefix)."""
    budget = PromptBudget(max_tokens=64, prefix_step=step)
    snippets = [Snippet("a.py", "z = 0")]
    text = "value = compute(alpha, beta) + other_thing\n" * 4
    extended = 0
    for n in range(100, len(text)):
        a = build_prompt(TOK, text[:n], "\n}\n", budget, snippets).ids
        b = build_prompt(TOK, text[: n + 1], "\n}\n", budget, snippets).ids
        assert len(b) <= 64
        extended += b[: len(a) - 1] == a[:-1]
    total = len(text) - 100
    assert (extended == 0) if step == 1 else (extended >= total * (step - 1) / step - 1)
