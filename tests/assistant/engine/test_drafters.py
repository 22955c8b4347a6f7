"""Drafters (heads, context lookup, both, cost-aware auto) in the one speculative loop:
stub models whose drafts are always or never right, n-gram lookup itself, the planner,
exact greedy output and exact sampling distribution on real models."""

import random

import pytest
import torch

from assistant.engine.base import GenerationConfig
from assistant.engine.drafting import (
    LOOKUP_HEAD,
    Acceptance,
    CostCurve,
    DraftPlanner,
    History,
    best_length,
    expected_tokens,
)
from assistant.engine.speculative import decode
from assistant.engine.torch_engine import TorchEngine
from models.tokenizer import ByteTokenizer

from .helpers import random_model
from .test_speculative import V, StubModel, truth
from .test_torch_engine import exact_joint, prompts


def run(model, k, prompt, max_new=25, planner=None, **config):
    gen = GenerationConfig(max_new_tokens=max_new, **config)
    return decode(model, list(prompt), 0, gen, k, 512, lambda t: bytes([65 + t]), planner=planner)


# The stub's head 1 writes truth(position), a sequence of period V with stride 7: a prompt
# that holds one period of it makes every lookup draft right; a prompt of stride 5 holds
# none of its 2-grams, so every lookup draft (from a 1-gram match) is wrong.
PERIODIC = [truth(p) for p in range(V + 8)]
STRIDE5 = [(5 * p + 1) % V for p in range(V + 8)]


@pytest.mark.parametrize("draft_len", [1, 2, 3, 5, 8])
def test_lookup_drafts_always_right_give_draft_len_plus_one_tokens_per_forward(draft_len):
    out = run(StubModel(agree=False), 1, PERIODIC, max_new=1 + 6 * (draft_len + 1) - 1, drafter="lookup",
              draft_len=draft_len)
    assert out.tokens == [truth(p) for p in range(len(PERIODIC), len(PERIODIC) + len(out.tokens))]
    assert out.stats.forward_passes == 1 + 6  # the prefill, then draft_len + 1 tokens a forward
    assert out.stats.acceptance == [1.0] * draft_len
    assert out.stats.lookup_accepted == out.stats.draft_accepted
    assert out.token_heads[:draft_len + 2] == [1] + [LOOKUP_HEAD] * draft_len + [1]


@pytest.mark.parametrize("draft_len", [1, 4, 8])
def test_lookup_drafts_never_right_give_one_token_per_forward(draft_len):
    out = run(StubModel(agree=True), 4, STRIDE5, max_new=20, drafter="lookup", draft_len=draft_len)
    assert out.tokens == [truth(p) for p in range(len(STRIDE5), len(STRIDE5) + 20)]
    assert out.stats.tokens_per_forward == 1.0
    assert out.stats.draft_proposed[0] == 19 and out.stats.draft_accepted == [0] * draft_len
    assert set(out.token_heads) == {1}


def test_lookup_copies_from_the_callers_sequences():
    extra = (tuple(PERIODIC),)
    out = run(StubModel(agree=False), 1, PERIODIC[-3:], max_new=17, drafter="lookup", draft_len=4, lookup_tokens=extra)
    assert out.stats.forward_passes == 1 + 4
    without = run(StubModel(agree=False), 1, PERIODIC[-3:], max_new=17, drafter="lookup", draft_len=4)
    assert without.tokens == out.tokens and without.stats.forward_passes > 10


@pytest.mark.parametrize("drafter", ["heads", "lookup", "both", "auto"])
@pytest.mark.parametrize("agree", [True, False])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_every_drafter_gives_head_ones_tokens_with_stops_and_limits(drafter, agree, k):
    planner = DraftPlanner(CostCurve([1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6])) if drafter == "auto" else None
    for prompt in (PERIODIC, STRIDE5, [1, 2, 3]):
        for max_new in (0, 1, 7, 30):
            out = run(StubModel(agree=agree), k, prompt, max_new=max_new, planner=planner, drafter=drafter)
            assert out.tokens == [truth(p) for p in range(len(prompt), len(prompt) + max_new)]
            assert len(out.token_heads) == len(out.tokens)
            assert out.stats.tokens_per_forward >= 1.0 or max_new == 0
    stop = truth(len(PERIODIC) + 9)
    out = run(StubModel(agree=agree), k, PERIODIC, planner=planner, drafter=drafter, stop_token_ids=(stop,))
    assert out.stop_reason == "stop_token" and len(out.tokens) == 9
    out = decode(StubModel(agree), PERIODIC, 0, GenerationConfig(max_new_tokens=50, drafter=drafter), k, 48,
                 lambda t: b"", planner=planner)
    assert out.stop_reason == "context_full" and out.cached_len <= 48


def test_both_takes_the_drafter_that_is_right():
    # Heads right, lookup wrong: after a rejection or two the heads draft.
    out = run(StubModel(agree=True), 4, STRIDE5, max_new=40, drafter="both")
    assert out.stats.lookup_proposed[0] <= 5 and out.stats.tokens_per_forward > 3
    # Lookup right and longer than the heads' 3 tokens: lookup drafts.
    out = run(StubModel(agree=False), 4, PERIODIC, max_new=40, drafter="both", draft_len=8)
    assert out.stats.tokens_per_forward > 5 and LOOKUP_HEAD in out.token_heads


def test_auto_drafts_nothing_where_no_draft_can_pay():
    # Each row costs as much as a forward: only a certain draft would break even.
    planner = DraftPlanner(CostCurve([float(r) for r in range(1, 10)], head_s=0.1))
    out = run(StubModel(agree=True), 4, PERIODIC, max_new=30, planner=planner, drafter="auto")
    assert out.stats.forward_passes == 30 and sum(out.stats.draft_proposed) == 0


def test_auto_leaves_a_drafter_after_its_rejections_and_uses_one_that_pays():
    cost = CostCurve([1.0, 1.9, 2.8, 3.5, 4.2, 4.9, 5.6, 6.3, 7.0], head_s=0.05)  # this CPU's curve, shape only
    planner = DraftPlanner(cost)
    wrong = run(StubModel(agree=False), 4, STRIDE5, max_new=30, planner=planner, drafter="auto")
    assert wrong.stats.draft_proposed[0] <= 3  # a few tries (heads, lookup), then plain steps
    planner = DraftPlanner(cost)
    right = run(StubModel(agree=False), 4, PERIODIC, max_new=60, planner=planner, drafter="auto")
    assert right.stats.tokens_per_forward > 3  # lookup, right every time, drafts long


def test_ngram_lookup_takes_the_longest_then_most_recent_match():
    h = History([5, 1, 2, 9, 7, 1, 2, 8, 3, 2, 8, 6, 1, 2], room=4)
    assert h.lookup(2) == ([8, 3], 2)  # "1 2" occurs twice before the end: the later one, followed by 8 3
    h = History([5, 1, 2, 9, 2, 7, 4, 1, 2], room=4)
    assert h.lookup(3) == ([9, 2, 7], 2)
    h = History([3, 4, 5, 6], room=4)
    assert h.lookup(3) == ([], 0)
    h = History([9, 9, 4], room=4, extra=[(1, 4, 8, 8)])
    assert h.lookup(5) == ([8, 8], 1)  # from the caller's sequence
    h.append(8)
    assert h.lookup(2) == ([8], 2)  # "4 8" in the extra sequence; the history has only "8" at its end


def test_acceptance_is_conditional_and_bounded_by_its_prior():
    a = Acceptance(prior=0.9, weight=2)
    assert a.rates(2) == [0.9, 0.9]
    a.record(proposed=4, accepted=1)  # first right, second wrong; the last two say nothing
    assert a.proposed == [1, 1, 0, 0] and a.accepted == [1, 0, 0, 0]
    assert a.rates(2) == pytest.approx([2.8 / 3, 1.8 / 3])
    assert expected_tokens([0.5, 0.5]) == [1.0, 1.5, 1.75]
    assert best_length([1.0] * 4, CostCurve([1.0, 1.5, 2.0, 2.5, 3.0]))[0] == 4
    assert best_length([0.5] * 4, CostCurve([1.0, 1.9, 2.8, 3.5, 4.2]))[0] == 0


@pytest.mark.parametrize("drafter", ["lookup", "both", "auto"])
def test_random_model_every_drafter_greedy_equals_plain(drafter):
    engine = TorchEngine(random_model(4, n_layers=6), ByteTokenizer(), dtype=torch.float64)
    # A cheap verifier, so that auto drafts (the probe of a busy test machine might not).
    engine._costs = {k: CostCurve([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]) for k in range(1, 5)}
    # Prompts that repeat themselves, so that lookups find matches.
    for prompt in [p * 3 for p in prompts(4, 4)]:
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=30, k=1, reuse_prefix=False)).tokens
        for k in (1, 2, 4):
            for draft_len in (1, 3, 8):
                for reuse in (False, True):
                    config = GenerationConfig(max_new_tokens=30, k=k, reuse_prefix=reuse, drafter=drafter,
                                              draft_len=draft_len, lookup_tokens=(tuple(prompt[::-1]),))
                    assert engine.generate(prompt, config).tokens == plain, (k, draft_len, reuse)


def test_trained_model_lookup_and_both_equal_plain_and_accept_drafts(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    tok = loaded.tokenizer
    rng = random.Random(1)
    tpf = {"lookup": [], "both": []}
    for cut in [rng.randrange(300, len(body) - 1) for _ in range(4)]:
        prompt = tok.encode(body[max(0, cut - 200) : cut])
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=1, reuse_prefix=False))
        for drafter in tpf:
            for k in (1, 4):
                for reuse in (False, True):
                    spec = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=k, reuse_prefix=reuse,
                                                                    drafter=drafter))
                    assert spec.tokens == plain.tokens, (cut, drafter, k, reuse)
            tpf[drafter].append(spec.stats.tokens_per_forward)
    assert max(tpf["lookup"]) > 1.3 and max(tpf["both"]) > 1.3, tpf  # repetitive code: lookups are right


@pytest.mark.parametrize("drafter,k", [("lookup", 1), ("both", 3)])
def test_lookup_sampling_matches_plain_sampling_distribution(drafter, k):
    """A lookup draft is a one-hot proposal: accepted with probability p(token), else the
    next token is drawn from p without it. Chi-square against the exact distribution."""
    import math
    from collections import Counter

    model = random_model(n_future=3, vocab_size=4, seed=3, dim=16, n_layers=4)
    with torch.no_grad():
        model.output.weight.mul_(40)
    model = model.double()
    prompt = [1, 2, 3, 0, 1, 2]  # "1 2" then, after a generated token, matches to copy from
    exact = exact_joint(model, prompt, 3, 1.0)
    engine = TorchEngine(model, ByteTokenizer(), dtype=torch.float64)
    samples = 3000
    counts = Counter()
    accepted = proposed = by_lookup = 0
    for seed in range(samples):
        config = GenerationConfig(max_new_tokens=3, k=k, temperature=1.0, seed=seed, drafter=drafter, draft_len=2)
        out = engine.generate(prompt, config)
        counts[tuple(out.tokens)] += 1
        accepted += sum(out.stats.draft_accepted)
        proposed += sum(out.stats.draft_proposed)
        by_lookup += sum(out.stats.lookup_proposed)
    # Lookup drafts in most calls; accept and reject paths both run.
    assert by_lookup > samples / 2 and 0.1 < accepted / proposed < 0.9, (accepted, proposed, by_lookup)
    cells = [s for s, p in exact.items() if p * samples >= 5]
    rest = 1 - sum(exact[s] for s in cells)
    chi2 = sum((counts[s] - exact[s] * samples) ** 2 / (exact[s] * samples) for s in cells)
    dof = len(cells) - 1
    if rest * samples >= 5:
        chi2 += (samples - sum(counts[s] for s in cells) - rest * samples) ** 2 / (rest * samples)
        dof += 1
    critical = dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < critical, f"chi2 {chi2:.1f} >= {critical:.1f} with {dof} dof"


def test_auto_probes_the_cost_of_a_forward_once_per_k():
    engine = TorchEngine(random_model(4, n_layers=4), ByteTokenizer())
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=12, k=1)).tokens
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=12, k=4, drafter="auto")).tokens == plain
    curve = engine._costs[4]
    assert len(curve.rows) == 8 and all(r > 0 for r in curve.rows) and curve.rows == sorted(curve.rows)
    assert curve.head_s > 0
    again = engine.generate(prompt, GenerationConfig(max_new_tokens=12, k=4, drafter="auto"))
    assert again.tokens == plain and engine._costs[4] is curve
    assert again.stats.reused_tokens == len(prompt) - 1  # the probe did not spoil the cache for later calls


def test_probe_file_is_reused_and_a_damaged_one_is_measured_again(tmp_path):
    from assistant.engine.drafting import cached_probe, probe_key

    model = tmp_path / "main.gguf"
    model.write_bytes(b"x" * 3000)
    key = probe_key(model, quant="q8_0", threads=1)
    assert key != probe_key(model, quant="q8_0", threads=2)
    calls = []

    def measure():
        calls.append(1)
        return CostCurve([1e-3, 2e-3], 1e-4)

    assert cached_probe(tmp_path, key, measure).rows == [1e-3, 2e-3]
    assert cached_probe(tmp_path, key, measure).head_s == 1e-4 and len(calls) == 1
    (tmp_path / f"probe-{key}.json").write_text("{not json")
    assert cached_probe(tmp_path, key, measure).rows == [1e-3, 2e-3] and len(calls) == 2
    assert cached_probe(None, key, measure) and len(calls) == 3


# --- the planner's rules: a margin, tries, costs measured while decoding, state kept by the engine ---

class PairsModel:
    """Head 1 writes every token twice (0 0 1 1 2 2 ...), never repeating a pair: a lookup finds
    the pair's first token and proposes it again, always wrongly; heads 2..k are always wrong."""

    vocab = 4096

    def forward(self, tokens, start_pos, k, all_rows=True):
        return _PairsOutput(range(start_pos, start_pos + len(tokens)), self.vocab)


class _PairsOutput:
    def __init__(self, positions, vocab):
        self.positions, self.vocab = positions, vocab

    def _rows(self, tokens):
        return torch.nn.functional.one_hot(torch.tensor(tokens), self.vocab).float()

    def next_logits(self, start=0):
        return self._rows([((p + 1) // 2) % self.vocab for p in list(self.positions)[start:]])

    def draft_logits(self, index, n=None):
        p = self.positions[index]
        return self._rows([((p + 1 + h) // 2 + 7) % self.vocab for h in range(1, 1 + (n or 3))])


def test_a_planner_whose_drafts_are_never_accepted_stops_and_tries_again_rarely():
    # Rows cheap enough that an optimistic planner drafts at first; nothing is ever right.
    cost = CostCurve([1.0 + 0.1 * r for r in range(9)], head_s=0.0, learns=False)
    planner = DraftPlanner(cost)

    def generate(n):
        prompt = [p // 2 for p in range(8)]
        config = GenerationConfig(max_new_tokens=n, drafter="auto")
        out = decode(PairsModel(), prompt, 0, config, 4, 4096, lambda t: b"", planner=planner)
        assert out.tokens == [(p + 1) // 2 for p in range(7, 7 + n)]
        return out.stats

    learning = generate(100).draft_proposed[0]
    assert 0 < learning <= 20  # stopped within 20 steps (heads and lookup, a few rejections each)
    # Later requests to the same planner: it knows, and only tries again now and then.
    later = generate(1500)
    tries = later.draft_proposed[0]
    assert 10 <= tries <= 1500 // planner.explore_gap + 1, tries
    # Those tries cost at most the budget's share of the plain steps' time (plus what it may bank).
    drafts_of = [p - q for p, q in zip(later.draft_proposed, later.draft_proposed[1:] + [0])]  # drafts of m tokens
    try_time = sum(n * (cost.forward_s(1 + m) - cost.forward_s(1)) for m, n in enumerate(drafts_of, start=1))
    assert try_time <= planner.explore_share * 1500 * cost.forward_s(1) + 2 * (cost.forward_s(9) - cost.forward_s(1))


def test_a_draft_that_pays_only_on_paper_is_not_made():
    # Right 60% of the time at 1.3x the cost of a row: 1.6 / 1.3 = 1.23x on paper, below a 30% margin.
    planner = DraftPlanner(CostCurve([1.0, 1.3], learns=False), margin=0.3)
    planner.heads.record(1000, 0)  # evidence outweighs the prior
    planner.heads.accepted[0], planner.heads.proposed[0] = 600.0, 1000.0
    assert planner.plan(None, heads_room=1) == ("", 0) or planner.explored == 1
    planner.margin = 0.1
    assert planner.plan(None, heads_room=1) == ("heads", 1)


def test_nothing_to_gain_means_no_lookup_and_no_planning():
    planner = DraftPlanner(CostCurve([1.0 + 0.1 * r for r in range(9)], learns=False))
    for n in range(1, 4):
        planner.lookup_rates(n, 8)
        planner.lookup[n, 0].record(1, 0)  # by (match length, copy streak)
        planner.lookup[n, 0].accepted[0], planner.lookup[n, 0].proposed[0] = 0.0, 50.0
        planner._tried[("lookup", n, 0)] = 0
    planner.heads.accepted, planner.heads.proposed = [0.0] * 3, [50.0] * 3
    planner._tried[("heads",)] = 0
    plain = 0
    for _ in range(200):
        lookup, heads = planner.wanted(8, 3)
        if lookup or heads:
            planner.plan(([1] * 8, 2) if lookup else None, 3 if heads else 0)  # a try, made
        else:
            plain += 1
    assert plain >= 200 - 200 // planner.explore_gap - 1  # all but the steps where a try is due
    # Where a right draft could not pay (a row costs what a forward does), never even a try.
    linear = DraftPlanner(CostCurve([float(r) for r in range(1, 10)], learns=False))
    assert all(linear.wanted(8, 3) == (False, False) for _ in range(100))


def test_the_cost_curve_follows_the_forwards_decoding_measures():
    curve = CostCurve([1e-3, 2e-3, 3e-3], head_s=5e-4)
    for _ in range(100):
        curve.observe(1, 2e-3)  # the machine got twice as slow: every count scales with it
    assert curve.forward_s(1) == pytest.approx(2e-3, rel=1e-3)
    assert curve.forward_s(3) == pytest.approx(6e-3, rel=1e-3) and curve.draft_s() == pytest.approx(1e-3, rel=1e-3)
    for _ in range(100):
        curve.observe(3, 1.2e-2)  # three rows cost more next to one than the probe said
    assert curve.forward_s(3) == pytest.approx(1.2e-2, rel=1e-2)
    before = curve.forward_s(3)
    curve.observe(3, 10.0)  # one forward the scheduler interrupted moves it a bounded step
    assert curve.forward_s(3) <= before * 1.21
    curve.observe(5, 2e-2)  # past the probe: extended, then measured
    assert curve.forward_s(5) > curve.forward_s(3)
    assert curve.rows == [1e-3, 2e-3, 3e-3]  # what the probe measured (and its file holds) is kept
    fixed = CostCurve.free()
    fixed.observe(1, 5.0)
    assert fixed.forward_s(1) == 1.0


def test_decode_measures_its_forwards_into_the_planners_curve():
    planner = DraftPlanner(CostCurve([1.0 + 0.1 * r for r in range(9)], head_s=0.1))
    run(StubModel(agree=False), 4, STRIDE5, max_new=40, planner=planner, drafter="auto")
    assert planner.cost.forward_s(1) < 0.5  # a stub's forward takes microseconds, not a second
    assert planner.cost.draft_s() < 0.1
    assert planner.cost.rows[0] == 1.0


def test_acceptance_forgets_slowly_and_unseen_positions_are_no_better_than_the_one_before():
    a = Acceptance(prior=0.9, weight=2, memory=10)
    for _ in range(100):
        a.record(1, 1)
    assert a.proposed[0] == pytest.approx(10, rel=1e-3)  # at most about `memory` drafts count
    assert a.rates(3)[0] > 0.95 and a.rates(3)[1:] == [0.9, 0.9]  # never drafted: the prior, capped
    b = Acceptance(prior=0.9)
    b.record(1, 0)
    assert b.rates(3) == pytest.approx([0.6, 0.6, 0.6])
    card = Acceptance(prior=0.6, priors=(0.5, 0.7))
    assert card.rates(3) == pytest.approx([0.5, 0.5, 0.5])  # untried positions capped by the one before


def test_the_heads_prior_comes_from_the_models_card(tmp_path):
    import json

    from assistant.engine.drafting import DEFAULT_HEADS_PRIOR, heads_priors, planner_for

    rows = [{"engine": "llama q8_0", "k": 1, "acceptance": []},
            {"engine": "llama q8_0", "k": 4, "acceptance": [0.6, 0.3, 0.15]},
            {"engine": "torch", "k": 4, "acceptance": [0.9, 0.9, 0.9]}]
    (tmp_path / "card.json").write_text(json.dumps({"bench": {"rows": rows}}))
    assert heads_priors(tmp_path) == pytest.approx((0.6, 0.5, 0.5))  # conditional: 0.3 / 0.6, 0.15 / 0.3
    planner = planner_for(tmp_path)
    assert planner.heads.rates(3) == pytest.approx([0.6, 0.5, 0.5])
    (tmp_path / "card.json").write_text(json.dumps({"heldout_heads": {"accuracy_per_head": [0.6, 0.4, 0.2]}}))
    assert heads_priors(tmp_path) == pytest.approx((0.4, 0.5))
    for broken in ("{not json", "[]", json.dumps({"bench": {"rows": [{"k": "x", "acceptance": [2]}]}})):
        (tmp_path / "card.json").write_text(broken)
        assert heads_priors(tmp_path) == ()  # only a prior: a bad card is none
    assert planner_for(tmp_path / "missing").heads.rates(1) == [DEFAULT_HEADS_PRIOR]


def test_the_engines_planner_keeps_what_it_learned_across_generate_calls(tmp_path):
    import json

    from models.checkpoint import save_model

    save_model(tmp_path, random_model(4, n_layers=4), ByteTokenizer())
    (tmp_path / "card.json").write_text(json.dumps({"bench": {"rows": [{"k": 4, "acceptance": [0.5, 0.25, 0.125]}]}}))
    engine = TorchEngine.from_dir(tmp_path)
    assert engine._planner.heads.rates(3) == pytest.approx([0.5, 0.5, 0.5])  # the card's
    engine._costs = {4: CostCurve([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8], head_s=0.01)}
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    config = GenerationConfig(max_new_tokens=20, k=4, drafter="auto", lookup_tokens=((5, 6, 7, 8, 9),))
    planner = engine._planner
    engine.generate(prompt, config)
    seen = (sum(planner.heads.proposed), sum(sum(t.proposed) for t in planner.lookup.values()), planner.steps)
    assert seen[0] + seen[1] > 0 and seen[2] > 0
    engine.generate(prompt[:-1], config)
    assert engine._planner is planner and planner.steps > seen[2]
    assert sum(planner.heads.proposed) + sum(sum(t.proposed) for t in planner.lookup.values()) > seen[0] + seen[1]


def test_lookup_in_several_sequences_stays_inside_each():
    h = History([7, 1, 2], room=4, extra=[(1, 2), (4, 1, 2, 3, 3), (9, 1, 2, 5)])
    assert h.lookup(4) == ([3, 3], 2)  # the first sequence of the longest matches, and not past its end
    h = History([7, 8], room=4, extra=[(5, 8), (6, 6, 8, 1)])
    assert h.lookup(4) == ([1], 1)  # (5, 8) ends at 8: nothing follows it there
