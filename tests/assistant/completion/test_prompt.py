import argparse
import json
import pathlib

import pytest

import models
from assistant.completion.encoding import TokenCache
from assistant.completion.prompt import (
    LINE_SEARCH,
    WINDOW_STEP,
    Prompt,
    PromptBudget,
    Snippet,
    _healed,
    _keep_end,
    build_prompt,
    snippet_text,
    split_at,
)
from assistant.fim import format_spm
from models.tokenizer import ByteTokenizer, load_tokenizer

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


# --- windows: the tokenizer sees bounded text ---------------------------------------

SHIPPED = pathlib.Path(models.__file__).parent / "default"
BPE = load_tokenizer(SHIPPED, json.loads((SHIPPED / "config.json").read_text())["tokenizer"])
CODE = pathlib.Path(argparse.__file__).read_text(encoding="utf-8")  # ~100 KB of real Python
# The shipped server's budget (context_tokens 768 capped by a 512-token model) and step.
SERVER = PromptBudget(max_tokens=459, suffix_share=0.2, snippet_share=0.25, prefix_step=128)


def whole_text_prompt(tokenizer, prefix, suffix, budget, snippets=(), heal=True) -> Prompt:
    """build_prompt as it was before windows: the whole prefix and suffix encoded."""
    head = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
    snippet_ids: list[int] = []
    for snippet in snippets:
        ids = tokenizer.encode(snippet_text([snippet]))
        if len(snippet_ids) + len(ids) > int(budget.max_tokens * budget.snippet_share) - 1:
            break
        snippet_ids += ids
    if snippet_ids:
        head += snippet_ids + [tokenizer.eot_id]
    room = budget.max_tokens - len(head)
    if not suffix.strip():
        prefix_ids, healed = _healed(tokenizer, _keep_end(tokenizer.encode(prefix), room, budget.prefix_step), heal)
        return Prompt(head + prefix_ids or [tokenizer.eot_id], healed)
    suffix_ids = tokenizer.encode(suffix)[: int(budget.max_tokens * budget.suffix_share)]
    prefix_ids = _keep_end(tokenizer.encode(prefix), room - 3 - len(suffix_ids), budget.prefix_step)
    prefix_ids, healed = _healed(tokenizer, prefix_ids, heal)
    return Prompt(head + format_spm(tokenizer, prefix_ids, suffix_ids), healed)


class Recording:
    """A real tokenizer that notes the length of every text it is asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths, self.texts = tokenizer, [], []

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def encode(self, text):
        self.lengths.append(len(text))
        self.texts.append(text)
        return self.tokenizer.encode(text)


@pytest.mark.parametrize("tok", [BPE, TOK], ids=["bpe", "byte"])
def test_small_files_give_the_prompt_of_encoding_everything(tok):
    """Where the window is the whole prefix, the prompt is byte for byte what encoding all
    of it gives; so is the suffix's part, however long the suffix (a split the tokenizer
    knows to be exact, or for bytes any cut)."""
    snippets = [Snippet("util.py", CODE[5000:5600]), Snippet("b.py", "def sub(a, b):\n    return a - b\n")]
    for cursor in (0, 7, 300, 1100, 1800):
        for suffix_end in (cursor, cursor + 3, cursor + 200, cursor + 5000, cursor + 20_000):
            prefix, suffix = CODE[:cursor], CODE[cursor:suffix_end]
            for heal, some in ((True, ()), (False, ()), (True, snippets)):
                expected = whole_text_prompt(tok, prefix, suffix, SERVER, some, heal)
                assert build_prompt(tok, prefix, suffix, SERVER, some, heal) == expected


@pytest.mark.parametrize("text", [CODE * 5, "a=b(1,2);" * 12_000], ids=["code", "minified"])
def test_the_tokenizer_sees_bounded_text_at_the_end_of_a_huge_prefix_and_before_a_huge_suffix(text):
    """Half a megabyte of code, or 100 KB without a newline (minified): only windows near the
    cursor are encoded, and the prompt still holds the prefix's end and the suffix's start."""
    tok = Recording(BPE)
    cursor = len(text) // 2
    prefix, suffix = text[:cursor], text[cursor:]
    ids = build_prompt(tok, prefix, suffix, SERVER, heal=False, cache=TokenCache(tok)).ids
    bound = 2 * SERVER.max_tokens * 4 + WINDOW_STEP + LINE_SEARCH  # one doubling of the guess, the grid, a line
    assert tok.lengths and max(tok.lengths) <= bound
    assert len(ids) <= SERVER.max_tokens and ids[0] == BPE.fim_suffix_id and ids[-1] == BPE.fim_middle_id
    pre = ids.index(BPE.fim_prefix_id)
    kept_suffix = BPE.decode(ids[1:pre])
    assert suffix.startswith(kept_suffix) and len(ids[1:pre]) == int(SERVER.max_tokens * SERVER.suffix_share)
    assert ids[1:pre] == BPE.encode(suffix)[:pre - 1]  # the very tokens the whole suffix starts with
    kept_prefix = BPE.decode(ids[pre + 1 : -1])
    assert prefix.endswith(kept_prefix) and len(kept_prefix) > 200
    assert SERVER.max_tokens - len(ids) < SERVER.prefix_step  # the prefix filled its room, up to a step


def test_a_prefix_too_dense_for_the_first_guess_grows_its_window():
    """Text of many tokens per character (CJK in byte-level BPE): the window guessed from the
    budget holds too few tokens, so it grows until the prefix fills its room."""
    prefix = "x = '日本語のコードとコメント'\n" * 3000
    ids = build_prompt(BPE, prefix, "", SERVER, heal=False).ids
    assert SERVER.max_tokens - len(ids) < SERVER.prefix_step
    assert prefix.endswith(BPE.decode(ids))


def test_an_unchanged_snippet_and_suffix_are_not_encoded_again():
    tok = Recording(BPE)
    cache = TokenCache(tok)
    snippets = [Snippet("util.py", CODE[5000:5600])]
    prefix, suffix = CODE[:40_000], CODE[40_000:60_000]
    build_prompt(tok, prefix, suffix, SERVER, snippets, cache=cache)
    assert any(snippets[0].text in t for t in tok.texts)
    tok.texts.clear()
    build_prompt(tok, prefix + "x", suffix, SERVER, snippets, cache=cache)
    assert not any(snippets[0].text in t for t in tok.texts)  # the snippet: from the cache
    assert not any(t and suffix.startswith(t) for t in tok.texts)  # the suffix's head: likewise
    assert sum(map(len, tok.texts)) < 1100  # the prefix: only the text after its cached head


def test_typing_at_the_end_of_a_long_prefix_extends_the_prompt():
    """A keystroke changes only the previous prompt's last tokens (the engine reuses its
    cache for the rest) except where the prefix's cut moves a step (128 tokens) or its
    window a grid step (WINDOW_STEP characters); the cached encoding gives exactly the
    prompt a fresh one does."""
    suffix = "\n\nif __name__ == '__main__':\n    main()\n"
    start, typed = 30_000, CODE[30_000:36_000]  # 6000 characters, typed three at a time
    cache = TokenCache(BPE)
    previous, moves = None, 0
    for n in range(0, len(typed) + 1, 3):
        prefix = CODE[:start] + typed[:n]
        prompt = build_prompt(BPE, prefix, suffix, SERVER, cache=cache).ids
        if n % 300 == 0:
            assert prompt == build_prompt(BPE, prefix, suffix, SERVER).ids  # no cache: the same
        if previous is not None:
            same = next((i for i, (a, b) in enumerate(zip(previous, prompt)) if a != b), len(previous))
            moves += same < len(previous) - 16  # more than the last few tokens changed
        previous = prompt
    typed_tokens = len(BPE.encode(typed))
    assert moves <= typed_tokens // SERVER.prefix_step + len(typed) // WINDOW_STEP + 2
    assert moves >= typed_tokens // SERVER.prefix_step - 1  # the cut does move: the test can see it


def test_a_caller_window_moving_does_not_move_the_prompt():
    """The service cuts a window of the document at a multiple of WINDOW_STEP less
    LINE_SEARCH; whichever multiple, with its origin the prompt is the same."""
    text = CODE[:70_000]
    expected = build_prompt(BPE, text, "", SERVER).ids
    for multiple in (8 * WINDOW_STEP, 12 * WINDOW_STEP, 16 * WINDOW_STEP):
        origin = multiple - LINE_SEARCH
        assert build_prompt(BPE, text[origin:], "", SERVER, origin=origin).ids == expected
    assert build_prompt(BPE, text[origin:], "", SERVER).ids != expected  # without it: a different grid


def test_a_cache_for_another_tokenizer_is_refused():
    with pytest.raises(ValueError, match="another tokenizer"):
        build_prompt(TOK, "x", "", cache=TokenCache(BPE))
