"""Drafters (heads, context lookup, heads+lookup, both, cost-aware auto) in the one
speculative loop: stub models whose drafts are always or never right, n-gram lookup itself,
the planner and its copy streaks, exact greedy output and exact sampling distribution on
real models."""

import random

import pytest
import torch

from assistant.engine.base import GenerationConfig
from assistant.engine.drafting import (
    LOOKUP_HEAD,
    Acceptance,
    CostCurve,
    MAX_STREAK,
    DraftPlanner,
    History,
    Proposal,
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


@pytest.mark.parametrize("drafter", ["heads", "lookup", "heads+lookup", "both", "auto"])
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


@pytest.mark.parametrize("drafter", ["lookup", "heads+lookup", "both", "auto"])
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
    tpf = {"lookup": [], "heads+lookup": [], "both": []}
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
    assert min(max(t) for t in tpf.values()) > 1.3, tpf  # repetitive code: lookups are right


@pytest.mark.parametrize("drafter,k", [("lookup", 1), ("both", 3), ("heads+lookup", 2), ("auto", 2)])
def test_lookup_sampling_matches_plain_sampling_distribution(drafter, k):
    """A lookup draft is a one-hot proposal: accepted with probability p(token), else the
    next token is drawn from p without it; heads+lookup's heads' positions keep the heads'
    proposal rows. Chi-square against the exact distribution. auto is taught to prefer
    heads+lookup: its choice is made before the heads' tokens are drawn (from their
    likeliest ones), the extension's length after."""
    import math
    from collections import Counter

    model = random_model(n_future=3, vocab_size=4, seed=3, dim=16, n_layers=4)
    with torch.no_grad():
        model.output.weight.mul_(40)
    model = model.double()
    prompt = [1, 2, 3, 0, 1, 2]  # "1 2" then, after a generated token, matches to copy from
    exact = exact_joint(model, prompt, 3, 1.0)
    engine = TorchEngine(model, ByteTokenizer(), dtype=torch.float64)
    if drafter == "auto":
        engine._costs = {k: CostCurve.free()}
        engine._planner.heads = fixed(0.9)
        engine._planner.lookup = {(n, s): fixed(0.05) for n in range(1, 4) for s in range(3)}
        engine._planner.extension = {(n, s): fixed(0.9) for n in range(1, 4) for s in range(3)}
    samples = 3000
    counts = Counter()
    accepted = proposed = by_lookup = after_heads = 0
    for seed in range(samples):
        config = GenerationConfig(max_new_tokens=3, k=k, temperature=1.0, seed=seed, drafter=drafter, draft_len=2)
        out = engine.generate(prompt, config)
        counts[tuple(out.tokens)] += 1
        accepted += sum(out.stats.draft_accepted)
        proposed += sum(out.stats.draft_proposed)
        by_lookup += sum(out.stats.lookup_proposed)
        after_heads += sum(out.stats.lookup_proposed[k - 1:]) - sum(out.stats.lookup_proposed[: k - 1])
    # Lookup drafts in most calls; accept and reject paths both run.
    assert by_lookup > samples / 2 and 0.1 < accepted / proposed < 0.9, (accepted, proposed, by_lookup)
    if drafter in ("heads+lookup", "auto"):
        assert after_heads == by_lookup  # every lookup token followed the heads' token
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
    assert curve.head_s > 0 and curve.switch_s >= 0
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
        return CostCurve([1e-3, 2e-3], 1e-4, switch_s=3e-4)

    assert cached_probe(tmp_path, key, measure).rows == [1e-3, 2e-3]
    again = cached_probe(tmp_path, key, measure)
    assert again.head_s == 1e-4 and again.switch_s == 3e-4 and len(calls) == 1
    # A file from before switch_s was measured:
    (tmp_path / f"probe-{key}.json").write_text('{"rows": [1e-3, 2e-3], "head_s": 1e-4}')
    assert cached_probe(tmp_path, key, measure).switch_s == 3e-4 and len(calls) == 2
    (tmp_path / f"probe-{key}.json").write_text("{not json")
    assert cached_probe(tmp_path, key, measure).rows == [1e-3, 2e-3] and len(calls) == 3
    assert cached_probe(None, key, measure) and len(calls) == 4


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
    # At most one try per explore_gap steps, and two more: a proposal never tried before (its
    # try spends no budget) and this completion's first draft, made on the long-run rates.
    assert 10 <= tries <= 1500 // planner.explore_gap + 3, tries
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


def losing_planner(max_streak: int = 0) -> DraftPlanner:
    """A planner that has learned that no draft pays: every lookup and head was wrong 50 times."""
    planner = DraftPlanner(CostCurve([1.0 + 0.1 * r for r in range(9)], learns=False), max_streak=max_streak)
    for n in range(1, 4):
        planner.lookup_rates(n, 8)
        planner.lookup[n, 0].record(1, 0)  # by (match length, copy streak)
        planner.lookup[n, 0].accepted[0], planner.lookup[n, 0].proposed[0] = 0.0, 50.0
        planner._tried[("lookup", n, 0)] = 0
    planner.heads.accepted, planner.heads.proposed = [0.0] * 3, [50.0] * 3
    planner._tried[("heads",)] = 0
    return planner


def test_nothing_to_gain_means_no_lookup_and_no_planning():
    planner = losing_planner()
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


def test_with_copy_streaks_nothing_to_gain_still_runs_a_lookup_to_see_copies():
    planner = losing_planner(max_streak=MAX_STREAK)
    drafts = heads = 0
    for _ in range(200):
        lookup, heads_wanted = planner.wanted(8, 3)
        assert lookup  # a right lookup would pay: it runs, to be checked against what is committed
        heads += heads_wanted
        drafts += planner.plan(([1] * 8, 2), 3 if heads_wanted else 0)[1] > 0
    tries = 200 // planner.explore_gap + 1  # the steps where a try is due
    assert drafts <= tries and heads <= tries, (drafts, heads)


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


def test_the_switch_back_to_one_row_after_a_draft_is_charged_to_drafts():
    # llama.cpp rebuilds its graph when the batch changes shape: the 1-row forward after a
    # draft's forward is slower than the one after a 1-row forward.
    curve = CostCurve([1.0, 1.5, 2.0], rate=0.5)
    curve.begin()
    curve.observe(1, 5.0)  # the first step of a decode follows a forward not observed (a prefill): ignored
    assert curve.forward_s(1) == 1.0
    curve.observe(1, 1.0)
    curve.observe(3, 2.0)
    curve.observe(1, 1.4)  # the switch back cost 0.4
    assert curve.forward_s(1) == pytest.approx(1.0)  # not the cost of a row
    assert curve.switch_back_s() == pytest.approx(0.2)  # half way (rate 0.5) to 0.4
    assert curve.forward_s(3) == pytest.approx(2.0)
    # A draft pays the switch where it ends in a rejection: 2.14 tokens expected for three rows'
    # 2.0 pay, not with a switch of 0.8 at the 46% chance of a rejection.
    assert best_length([0.6, 0.9], CostCurve([1.0, 1.5, 2.0]))[0] == 2
    assert best_length([0.6, 0.9], CostCurve([1.0, 1.5, 2.0], switch_s=0.8))[0] == 0
    # Drafts always right are followed by drafts: no switch back.
    with_switch, without = CostCurve([1.0, 1.5, 2.0], switch_s=0.8), CostCurve([1.0, 1.5, 2.0])
    assert best_length([1.0, 1.0], with_switch) == best_length([1.0, 1.0], without)


def test_a_completion_whose_lookups_fail_stops_drafting_them_for_a_while_whatever_the_long_run_says():
    planner = DraftPlanner(CostCurve([1.0 + 0.5 * r for r in range(9)], learns=False))
    copied = Proposal([1] * 4, "lookup", ngram=2)
    for _ in range(40):  # earlier completions: lookups right
        planner.record(copied, 4, 4)
    planner.begin()
    assert planner.plan(([1] * 4, 2), 0)[1] == 4
    for _ in range(2):  # this completion: wrong twice
        planner.record(copied, 0, 4)
    assert planner.lookup_rates(2, 1)[0] < 0.5 < planner.lookup.get((2, 0)).rates(1)[0]
    assert planner.plan(([1] * 4, 2), 0)[1] == 0
    for _ in range(3 * int(planner.recent_steps)):  # plain steps later the evidence has faded: a copy may begin again
        planner.wanted(4, 0)
    assert planner.plan(([1] * 4, 2), 0)[1] > 0
    for _ in range(2):
        planner.record(copied, 0, 4)
    assert planner.plan(([1] * 4, 2), 0)[1] == 0
    planner.begin()  # the next completion starts from the long-run rates again
    assert planner.plan(([1] * 4, 2), 0)[1] == 4


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


# --- heads+lookup, and copy streaks ---

class ScriptModel:
    """Head 1 writes `script` (after position p comes script[p + 1]); heads 2..k its next
    tokens where `heads_right`, else a token the script never has. Keeps each decoding
    forward's (position of its first draft token, number of draft tokens)."""

    def __init__(self, script, heads_right=True):
        self.script, self.heads_right = list(script), heads_right
        self.vocab = max(script) + 2
        self.drafts = []

    def forward(self, tokens, start_pos, k, all_rows=True):
        if all_rows:
            self.drafts.append((start_pos + 1, len(tokens) - 1))
        return _ScriptOutput(self, range(start_pos, start_pos + len(tokens)))

    def token(self, position):
        return self.script[position] if position < len(self.script) else self.vocab - 1


class _ScriptOutput:
    def __init__(self, model, positions):
        self.model, self.positions = model, positions

    def _rows(self, tokens):
        return torch.nn.functional.one_hot(torch.tensor(tokens), self.model.vocab).float()

    def next_logits(self, start=0):
        return self._rows([self.model.token(p + 1) for p in list(self.positions)[start:]])

    def draft_logits(self, index, n=None):
        p, wrong = self.positions[index], self.model.vocab - 1
        return self._rows([self.model.token(p + 1 + h) if self.model.heads_right else wrong for h in range(1, 1 + n)])


def script_run(model, prompt_len, k, planner=None, **config):
    gen = GenerationConfig(max_new_tokens=len(model.script) - prompt_len, **config)
    out = decode(model, model.script[:prompt_len], 0, gen, k, 4096, lambda t: b"", planner=planner)
    assert out.tokens == model.script[prompt_len:]
    return out


@pytest.mark.parametrize("agree", [True, False])
@pytest.mark.parametrize("draft_len", [2, 4, 8, 16])
def test_heads_plus_lookup_drafts_the_heads_then_the_copy_after_them(agree, draft_len):
    """The heads' 3 tokens, then the lookup continuation of the 3-gram that ends with them:
    always right on the periodic stub when the heads are."""
    per_forward = 1 + max(3, draft_len)  # head 1's token, the heads' 3, the copy up to draft_len in all
    out = run(StubModel(agree=agree), 4, PERIODIC, max_new=1 + 6 * per_forward, drafter="heads+lookup",
              draft_len=draft_len)
    extension = per_forward - 4
    assert out.stats.lookup_proposed[:3] == [0, 0, 0]  # the heads' positions are the heads'
    if agree:
        assert out.token_heads[: per_forward + 1] == [1, 2, 3, 4] + [LOOKUP_HEAD] * extension + [1]
        assert out.stats.forward_passes == 1 + 6
        assert out.stats.lookup_accepted == out.stats.lookup_proposed
    else:  # the heads wrong: the copy after their tokens is never even verified
        assert out.stats.tokens_per_forward == 1.0 and set(out.token_heads) == {1}
        assert sum(out.stats.lookup_accepted) == 0


def test_lookup_after_a_draft_matches_the_ngram_that_ends_with_it_and_keeps_nothing():
    h = History([5, 1, 2, 9, 7, 3, 1], room=4)
    assert h.lookup(2, after=[2]) == ([9, 7], 2)  # "1 2": the history's last token, the draft's
    assert h.lookup(2, after=[8]) == ([], 0)
    assert h.length == 7 and h.lookup(2) == ([2, 9], 1)  # the drafts were not kept
    h.append(6)
    assert h.lookup(3, after=[1, 2]) == ([9, 7, 3], 2)


# A script whose copy only the heads reach: the prompt holds "a b c" then the copied segment;
# the continuation starts with a token never seen, then "a b c" (the heads' drafts), then the copy.
COPY_SOURCE = list(range(100, 140))
HEADS_THEN_COPY = [7, 8, 9, 1, 2, 3, *COPY_SOURCE, 9, 8] + [500, 1, 2, 3, *COPY_SOURCE[:30]]


@pytest.mark.parametrize("drafter", ["both", "auto"])
def test_both_and_auto_take_heads_plus_lookup_where_only_it_reaches_the_copy(drafter):
    planner = None
    if drafter == "auto":  # heads known to be right (as both's free verifier finds at once)
        planner = DraftPlanner(CostCurve([1.0 + 0.1 * r for r in range(9)], learns=False), heads=fixed(0.9))
    model = ScriptModel(HEADS_THEN_COPY)
    out = script_run(model, 48, 4, planner, drafter=drafter, draft_len=8)
    # The first forward drafts "1 2 3" (heads) and the 5 copied tokens after them.
    assert model.drafts[0] == (49, 8) and out.token_heads[:10] == [1, 2, 3, 4] + [LOOKUP_HEAD] * 5 + [1]


def fixed(rate):
    return Acceptance(prior=rate, weight=1e9)  # a rate taught for good


def test_the_planner_takes_heads_plus_lookup_where_it_is_expected_fastest():
    cost = CostCurve([1.0, 1.5, 2.1, 2.6, 3.0, 3.4, 3.8, 4.0, 4.2], head_s=0.05, learns=False)  # this CPU's shape
    calls = []

    def extend(found=(7,) * 5, ngram=3):
        def look():
            calls.append(1)
            return list(found), ngram
        return look

    def planner(heads, lookup, extension):
        p = DraftPlanner(cost, heads=fixed(heads))
        p.lookup = {(n, 0): fixed(lookup) for n in range(1, 4)}
        p.extension = {(n, 0): fixed(extension) for n in range(1, 4)}
        return p

    # Heads right, the copy after them right, the lookup of the history itself wrong.
    assert planner(0.95, 0.1, 0.99).plan(([5] * 8, 1), 3, extend(), 5) == ("heads+lookup", 8)
    # The copy after the heads' tokens wrong: the heads alone.
    assert planner(0.95, 0.1, 0.1).plan(([5] * 8, 1), 3, extend(), 5) == ("heads", 3)
    # The history's own lookup right: it, without drafting the heads to look after them.
    calls.clear()
    assert planner(0.6, 0.99, 0.99).plan(([5] * 8, 3), 3, extend(), 5) == ("lookup", 8)
    assert calls == []
    # No match after the heads' tokens: heads+lookup is no option.
    assert planner(0.95, 0.1, 0.99).plan(None, 3, extend(found=()), 5) == ("heads", 3)
    # A short match after them: the heads and what there is.
    assert planner(0.95, 0.1, 0.99).plan(None, 3, extend(found=(7, 7)), 5) == ("heads+lookup", 5)
    # wanted() asks for both where only heads+lookup pays.
    assert planner(0.8, 0.1, 0.99).wanted(8, 3) == (True, True)


def noise(seed, n):
    """Text outside copies: tokens 1..4 at random, where every lookup finds a match whose
    continuation is right a quarter of the time."""
    rng = random.Random(seed)
    return [rng.randint(1, 4) for _ in range(n)]


def test_copy_streaks_draft_long_inside_a_copy_and_stop_soon_after_it():
    source = list(range(1000, 1100))
    prompt = source + noise(0, 12)
    copy = source[10:90]
    script = prompt + noise(1, 120) + copy + noise(2, 120)
    model = ScriptModel(script)
    cost = CostCurve([1.0, 1.5, 2.1, 2.6, 3.0, 3.4, 3.8, 4.0, 4.2], learns=False)  # this CPU's shape
    planner = DraftPlanner(cost, max_streak=MAX_STREAK)
    script_run(model, len(prompt), 1, planner, drafter="auto", draft_len=8)
    copy_start = len(prompt) + 120
    copy_end = copy_start + len(copy)
    inside = [n for p, n in model.drafts if copy_start + 8 <= p < copy_end - 8]
    after = [n for p, n in model.drafts if p >= copy_end]
    # Inside the copy every step drafts all it may.
    assert inside and all(n == 8 for n in inside), inside
    # After it: no long draft past the first few steps.
    long_after = [p for p, n in model.drafts if p >= copy_end and n > 2]
    assert len(long_after) <= 3 and all(p < copy_end + 20 for p in long_after), (long_after, after)
    # The same without streaks (the default: one table per match length, which the text
    # outside copies teaches): much less of the copy is drafted.
    flat_model = ScriptModel(script)
    script_run(flat_model, len(prompt), 1, DraftPlanner(cost), drafter="auto", draft_len=8)
    flat_inside = [n for p, n in flat_model.drafts if copy_start + 8 <= p < copy_end - 8]
    assert sum(flat_inside) < 0.75 * sum(inside), (flat_inside, inside)


