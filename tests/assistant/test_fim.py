import random

import pytest

from assistant.fim import FimConfig, document_tokens, format_psm, format_spm
from models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
SPECIALS = (TOK.fim_prefix_id, TOK.fim_suffix_id, TOK.fim_middle_id)
DOC = "def add(a, b):\n    # sum — ünïcödé 🐍\n    return a + b\n"


def split_fim(ids: list[int]) -> tuple[str, str, str, str]:
    """(order, prefix, middle, suffix) of a FIM example, checking its layout."""
    assert ids[-1] == TOK.eot_id and ids.count(TOK.eot_id) == 1
    for special in SPECIALS:
        assert ids.count(special) == 1
    pre, suf, mid = (ids.index(s) for s in SPECIALS)
    if pre < suf < mid:
        order = "psm"
        prefix, suffix = ids[pre + 1 : suf], ids[suf + 1 : mid]
    elif suf < pre < mid:
        order = "spm"
        suffix, prefix = ids[suf + 1 : pre], ids[pre + 1 : mid]
    else:
        raise AssertionError(f"unexpected special token order in {ids}")
    assert min(pre, suf) == 0, "a FIM example starts with its first special token"
    middle = ids[mid + 1 : -1]
    return order, TOK.decode(prefix), TOK.decode(middle), TOK.decode(suffix)


def test_rate_zero_is_plain_text():
    rng = random.Random(0)
    for _ in range(50):
        assert document_tokens(DOC, TOK, rng, FimConfig(rate=0.0)) == TOK.encode(DOC) + [TOK.eot_id]


@pytest.mark.parametrize("spm_rate, order", [(0.0, "psm"), (1.0, "spm")])
def test_rate_one_is_fim_in_documented_order(spm_rate, order):
    rng = random.Random(1)
    config = FimConfig(rate=1.0, spm_rate=spm_rate)
    for _ in range(200):
        got_order, prefix, middle, suffix = split_fim(document_tokens(DOC, TOK, rng, config))
        assert got_order == order
        assert prefix + middle + suffix == DOC


def test_format_functions():
    prefix, suffix = [1, 2], [3]
    p, s, m = SPECIALS
    assert format_psm(TOK, prefix, suffix) == [p, 1, 2, s, 3, m]
    assert format_spm(TOK, prefix, suffix) == [s, 3, p, 1, 2, m]


def test_same_seed_same_output():
    config = FimConfig(rate=0.5, spm_rate=0.5)
    docs = [DOC * k for k in range(1, 20)]
    runs = []
    for _ in range(2):
        rng = random.Random(1234)
        runs.append([document_tokens(d, TOK, rng, config) for d in docs])
    assert runs[0] == runs[1]


def test_rng_draws_do_not_depend_on_branch():
    # Whatever each call decides, the stream afterwards is in the same state.
    states = []
    for config in (FimConfig(rate=0.0), FimConfig(rate=1.0), FimConfig(rate=0.5)):
        rng = random.Random(7)
        for doc in ("", "x", DOC):
            document_tokens(doc, TOK, rng, config)
        states.append(rng.random())
    assert len(set(states)) == 1


def test_rates_respected_statistically():
    rng = random.Random(42)
    config = FimConfig(rate=0.5, spm_rate=0.3)
    counts = {"plain": 0, "psm": 0, "spm": 0}
    for _ in range(2000):
        ids = document_tokens(DOC, TOK, rng, config)
        if TOK.fim_middle_id not in ids:
            assert ids == TOK.encode(DOC) + [TOK.eot_id]
            counts["plain"] += 1
        else:
            counts[split_fim(ids)[0]] += 1
    fim = counts["psm"] + counts["spm"]
    assert 850 < fim < 1150
    assert 0.24 < counts["spm"] / fim < 0.36


def test_cut_points_cover_empty_and_full_pieces():
    # Cuts range over both ends, so every piece is sometimes empty.
    rng = random.Random(3)
    seen = set()
    for _ in range(500):
        _, prefix, middle, suffix = split_fim(document_tokens("abc", TOK, rng, FimConfig(rate=1.0)))
        seen.add((prefix, middle, suffix))
    assert ("", "abc", "") in seen and ("", "", "abc") in seen and ("abc", "", "") in seen


@pytest.mark.parametrize("doc", ["", "x", "🐍"])
@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_tiny_documents(doc, rate):
    rng = random.Random(5)
    for _ in range(20):
        ids = document_tokens(doc, TOK, rng, FimConfig(rate=rate))
        if rate == 0.0:
            assert ids == TOK.encode(doc) + [TOK.eot_id]
        else:
            _, prefix, middle, suffix = split_fim(ids)
            assert prefix + middle + suffix == doc


@pytest.mark.parametrize("kwargs", [{"rate": -0.1}, {"rate": 1.5}, {"spm_rate": 2}, {"spm_rate": float("nan")}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        FimConfig(**kwargs)
