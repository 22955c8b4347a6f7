"""The torch engine: exactness of speculative decoding, prefix reuse, rollback, sampling."""

import math
import random
import threading
from collections import Counter
from dataclasses import replace

import pytest
import torch

from assistant.engine.base import GenerationConfig, cut_at_stop_strings
from assistant.engine.torch_engine import TorchEngine
from models.tokenizer import ByteTokenizer, train_bpe

from .helpers import random_model, repetitive_code


def prompts(seed: int, count: int, vocab: int = 261) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(1, 40))] for _ in range(count)]


def greedy(engine, prompt, k, max_new=40, reuse=True):
    return engine.generate(prompt, GenerationConfig(max_new_tokens=max_new, k=k, reuse_prefix=reuse)).tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_future", [2, 4, 8])
def test_random_model_speculative_greedy_equals_plain(n_future, dtype):
    engine = TorchEngine(random_model(n_future, n_layers=n_future + 2), ByteTokenizer(), dtype=dtype)
    for prompt in prompts(n_future, 6):
        plain = greedy(engine, prompt, k=1, reuse=False)
        for k in range(2, n_future + 1):
            assert greedy(engine, prompt, k, reuse=False) == plain, (k, prompt)
            assert greedy(engine, prompt, k, reuse=True) == plain, (k, prompt)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_speculative_greedy_equals_plain(dtype):
    """bf16/fp16 through the whole engine, with and without prefix reuse. The bits this rests
    on (a verify step computes each token as a plain step does) are checked directly in
    tests/models/test_transformer.py: random models' logits rarely have the near-ties that
    made 18 of 90 runs of the trained default model differ before."""
    model = random_model(4, n_layers=6, seed=3, dim=64)

    def two_calls(prompt, k):
        engine = TorchEngine(model, ByteTokenizer(), dtype=dtype)
        first = greedy(engine, prompt, k, max_new=24, reuse=False)
        # the same prompt plus a few typed tokens: its prefix is reused, the rest is one short forward
        second = greedy(engine, prompt + [7, 8, 9], k, max_new=24, reuse=True)
        return first, second

    for prompt in prompts(10, 4):
        plain = two_calls(prompt, k=1)
        for k in range(2, 5):
            assert two_calls(prompt, k) == plain, (k, prompt)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_verify_step_gives_each_token_the_bits_of_a_plain_step(dtype):
    """Whichever way the engine chose for this CPU's kernels (a step-equivalent cache, or the
    tokens one at a time), a 4-token forward after a prefix gives every head's hidden state
    bit for bit as four 1-token forwards do."""
    from assistant.engine.torch_engine import _TorchStepModel

    engine = TorchEngine(random_model(4, n_layers=6, seed=3, dim=64), ByteTokenizer(), dtype=dtype)
    assert engine._step_equivalent != engine._token_steps
    tokens = torch.randint(0, 261, (40,), generator=torch.Generator().manual_seed(0)).tolist()

    def step_model():
        cache = engine.model.new_cache(batch=1, step_equivalent=engine._step_equivalent)
        step = _TorchStepModel(engine.model, engine._unembedding, cache, engine.device, engine._token_steps)
        step.forward(tokens[:30], 0, 4)  # the prefill
        return step

    with torch.inference_mode():
        plain = step_model()
        steps = [plain.forward(tokens[p : p + 1], p, 4).hidden[:, 0] for p in range(30, 34)]  # (k, D) each
        verify = step_model().forward(tokens[30:34], 30, 4).hidden  # (k, 4, D)
    for t in range(4):
        assert torch.equal(verify[:, t], steps[t]), t


def test_trained_model_speculative_greedy_equals_plain_and_accepts_drafts(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    tok = loaded.tokenizer
    rng = random.Random(0)
    cuts = [rng.randrange(1, len(body) - 1) for _ in range(12)]
    accepted_any = False
    for cut in cuts:
        prompt = tok.encode(body[max(0, cut - 120) : cut])
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=48, k=1, reuse_prefix=False))
        for k in (2, 3, 4):
            for reuse in (False, True):
                spec = engine.generate(prompt, GenerationConfig(max_new_tokens=48, k=k, reuse_prefix=reuse))
                assert spec.tokens == plain.tokens, (cut, k, reuse)
            accepted_any |= spec.stats.tokens_per_forward > 1.5
    assert accepted_any, "a model trained on repetitive code should accept drafts"


def test_prefix_reuse_computes_only_the_new_part(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    text = body[:200]
    first = engine.generate(loaded.tokenizer.encode(text[:150]), GenerationConfig(max_new_tokens=8, k=4))
    assert first.stats.reused_tokens == 0
    # The user typed 10 more characters: only those are new.
    second = engine.generate(loaded.tokenizer.encode(text[:160]), GenerationConfig(max_new_tokens=8, k=4))
    assert second.stats.reused_tokens >= 150  # more when the first completion guessed the typed text
    fresh = TorchEngine(loaded.model, loaded.tokenizer).generate(
        loaded.tokenizer.encode(text[:160]), GenerationConfig(max_new_tokens=8, k=4)
    )
    assert second.tokens == fresh.tokens
    # Same prompt again: everything but the last token is reused.
    third = engine.generate(loaded.tokenizer.encode(text[:160]), GenerationConfig(max_new_tokens=8, k=4))
    assert third.stats.reused_tokens == 159 and third.tokens == fresh.tokens
    # A different k cannot reuse the cache filled with other heads.
    other = engine.generate(loaded.tokenizer.encode(text[:160]), GenerationConfig(max_new_tokens=8, k=2))
    assert other.stats.reused_tokens == 0 and other.tokens == fresh.tokens


def test_rollback_leaves_the_cache_as_a_fresh_prefill(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    result = engine.generate(loaded.tokenizer.encode(body[37:140]), GenerationConfig(max_new_tokens=40, k=4))
    assert sum(result.stats.draft_proposed) > sum(result.stats.draft_accepted), "need rejected drafts to roll back"
    cached = engine._cached
    fresh = loaded.model.new_cache()
    with torch.inference_mode():
        loaded.model.forward_hidden(torch.tensor([cached]), 0, fresh, heads=range(4))
    n = len(cached)
    for layer, (a, b) in enumerate(zip(engine._cache.layers, fresh.layers)):
        torch.testing.assert_close(a.k[:, :n], b.k[:, :n], atol=1e-5, rtol=1e-4, msg=f"block {layer} keys")
        torch.testing.assert_close(a.v[:, :n], b.v[:, :n], atol=1e-5, rtol=1e-4, msg=f"block {layer} values")


def test_stats_and_stops(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    prompt = loaded.tokenizer.encode(body[:100])
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=30, k=4, stop_strings=("\n\n",)))
    assert result.stop_reason in ("stop_string", "max_tokens")
    assert "\n\n" not in result.text
    s = result.stats
    assert s.prompt_tokens == len(prompt) and s.new_tokens == len(result.tokens)
    assert len(s.acceptance) == 3 and s.forward_passes >= 1 and s.prefill_s > 0
    cancel = threading.Event()
    cancel.set()
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=30), cancel).stop_reason == "cancelled"
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([], GenerationConfig())
    with pytest.raises(ValueError, match="no room"):
        engine.generate([1] * 256, GenerationConfig())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([1, 9999], GenerationConfig())


def test_cut_at_stop_strings():
    assert cut_at_stop_strings("abc\n\ndef", ("x", "\n\n", "c")) == "ab"
    assert cut_at_stop_strings("abc", ()) == "abc"


def exact_joint(model, prompt, length, temperature):
    """Plain sampling's exact probability of every continuation of `length` tokens."""
    V = model.config.vocab_size
    joint = {(): 1.0}
    for _ in range(length):
        nxt = {}
        for seq, p in joint.items():
            with torch.no_grad():
                logits = model(torch.tensor([prompt + list(seq)]), heads=(0,))[0, 0, -1].double()
            probs = torch.softmax(logits / temperature, -1)
            for t in range(V):
                nxt[seq + (t,)] = p * float(probs[t])
        joint = nxt
    return joint


def test_speculative_sampling_matches_plain_sampling_distribution():
    # Tiny vocabulary so that the exact distribution over 3-token continuations can be
    # enumerated; random heads disagree often, so both accept and resample paths run.
    model = random_model(n_future=3, vocab_size=4, seed=3, dim=16, n_layers=4)
    with torch.no_grad():
        model.output.weight.mul_(40)  # sharpen the distributions away from uniform
    model = model.double()
    prompt = [1, 2, 3, 0]
    temperature = 1.0
    exact = exact_joint(model, prompt, 3, temperature)
    engine = TorchEngine(model, ByteTokenizer(), dtype=torch.float64)
    samples = 3000
    counts = Counter()
    accepted = proposed = 0
    for seed in range(samples):
        out = engine.generate(prompt, GenerationConfig(max_new_tokens=3, k=3, temperature=temperature, seed=seed))
        counts[tuple(out.tokens)] += 1
        accepted += sum(out.stats.draft_accepted)
        proposed += sum(out.stats.draft_proposed)
    assert 0.1 < accepted / proposed < 0.9, "both accept and reject paths should be exercised"
    # Pearson chi-square over cells with enough expected mass; p < 0.001 critical value.
    cells = [s for s, p in exact.items() if p * samples >= 5]
    rest = 1 - sum(exact[s] for s in cells)
    chi2 = sum((counts[s] - exact[s] * samples) ** 2 / (exact[s] * samples) for s in cells)
    if rest * samples >= 5:
        observed_rest = samples - sum(counts[s] for s in cells)
        chi2 += (observed_rest - rest * samples) ** 2 / (rest * samples)
        dof = len(cells)
    else:
        dof = len(cells) - 1
    # Wilson-Hilferty approximation of the chi-square quantile at 1 - 0.001.
    z = 3.09
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < critical, f"chi2 {chi2:.1f} >= {critical:.1f} with {dof} dof"


def test_sampling_is_reproducible_with_a_seed():
    engine = TorchEngine(random_model(), ByteTokenizer())
    config = GenerationConfig(max_new_tokens=20, k=4, temperature=0.8, seed=7)
    assert engine.generate([5, 6, 7], config).tokens == engine.generate([5, 6, 7], config).tokens


def test_token_heads_match_the_acceptance_stats(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    prompt = loaded.tokenizer.encode(body[:150])
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=4))
    assert len(result.token_heads) == len(result.tokens)
    assert set(result.token_heads) <= {1, 2, 3, 4}
    for head in (2, 3, 4):
        assert result.token_heads.count(head) == result.stats.draft_accepted[head - 2]
    # A draft from head i > 2 is only accepted right after head i - 1's.
    for prev, head in zip(result.token_heads, result.token_heads[1:]):
        assert head in (1, 2) or head == prev + 1


@pytest.fixture(scope="module")
def bpe_engine():
    """A random 4-head model over a BPE vocabulary, in which healed bytes can be written in
    more than one way ("\n        " as "\n       " + " " or in one token)."""
    tok = train_bpe([repetitive_code()], vocab_size=400)
    return TorchEngine(random_model(n_future=4, vocab_size=tok.vocab_size, seed=5), tok)


@pytest.mark.parametrize("heal", ["\n        ", " ", "(self"])
def test_healing_keeps_speculative_equal_to_plain_and_writes_the_healed_bytes(bpe_engine, heal):
    engine, tok = bpe_engine, bpe_engine.tokenizer
    healed = heal.encode()
    for text in ["class Point:\n    def __init__", "def add(a, b):\n    return a", "x = 1"]:
        prompt = tok.encode(text)
        config = GenerationConfig(max_new_tokens=12, k=1, heal_bytes=healed, stop_strings=("\n",), reuse_prefix=False)
        plain = engine.generate(prompt, config)
        written = tok.decode_bytes(plain.tokens)
        assert written.startswith(healed), (text, written)
        # The result's text starts after the healed bytes; the "\n" in them stops nothing.
        assert plain.text == written[len(healed) :].decode("utf-8", errors="replace").split("\n")[0]
        for k in (2, 3, 4):
            spec = engine.generate(prompt, replace(config, k=k))
            assert spec.tokens == plain.tokens and spec.text == plain.text, (text, k)
