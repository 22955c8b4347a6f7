"""The llama.cpp engine against the torch engine: same greedy tokens at f32/f16, z equal to
the torch trunk, speculative == plain at every quantization, prefix reuse, errors."""

import os
import random
import shutil
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from assistant.engine import load_engine
from assistant.engine.base import GenerationConfig
from assistant.engine.llama_engine import LlamaEngine, LlamaSettings, checked_export
from assistant.engine.torch_engine import TorchEngine
from assistant.training.trainer import TrainConfig, train
from models.checkpoint import ModelFileError, load_model, read_config, save_model
from models.gguf_export import export_files, export_model
from models.tokenizer import ByteTokenizer
from tests.near_ties import GreedyAgreement, model_logits

from .helpers import random_model, repetitive_code

QUANTS = ("f16", "q8_0", "q4_k_m")


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    """A 4-head byte model of dim 64 (rows llama.cpp's 32-wide blocks fit) trained for seconds
    on repetitive code, exported at f32 and every quantization."""
    repo = tmp_path_factory.mktemp("repo")
    body = repetitive_code()
    (repo / "a.py").write_text(body)
    out = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(
        repo=str(repo), out_dir=str(out), model_overrides={"dim": 64, "n_layers": 5, "n_heads": 4, "max_seq_len": 256},
        steps=100, batch_size=8, seq_len=96, lr=5e-3, warmup_steps=10, fim_rate=0.0, eval_every=1000,
        checkpoint_every=1000, device="cpu",
    )
    model_dir = train(config, show_progress=False)
    for quant in ("f32", *QUANTS):
        export_model(model_dir, quant)
    return load_model(model_dir), body


def engine_for(loaded, quant, exact=True, **settings) -> LlamaEngine:
    """Exact mode unless told otherwise: most tests here check that speculative == plain."""
    return LlamaEngine(loaded.path, LlamaSettings(quant=quant, threads=1, exact=exact, **settings))


def cuts(body, count, seed=0, width=120):
    rng = random.Random(seed)
    return [body[max(0, c - width) : c] for c in (rng.randrange(20, len(body) - 1) for _ in range(count))]


# Tolerances: a near-tie is a top-2 margin within the two engines' rounding of each other
# (f32: 1e-3; f16 weights, or llama.cpp's default f16 KV cache: 0.05; the logits are O(10)).
# tests/near_ties.py says how.
@pytest.mark.parametrize("quant,tolerance,exact", [("f32", 1e-3, True), ("f16", 0.05, True), ("f16", 0.05, False)])
def test_greedy_tokens_match_the_torch_engine(model64, quant, tolerance, exact):
    loaded, body = model64
    engine = engine_for(loaded, quant, exact=exact)
    torch_engine = TorchEngine(loaded.model, loaded.tokenizer)
    agreement = GreedyAgreement(model_logits(loaded.model), tolerance)
    for prompt in [loaded.tokenizer.encode(p) for p in cuts(body, 6)]:
        tokens = engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=1)).tokens
        agreement.check(prompt, tokens, (quant, prompt))
        reference = torch_engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=1)).tokens
        agreement.check_same_until_a_near_tie(prompt, tokens, reference, (quant, prompt))
    agreement.assert_few_skipped(0.1)


@pytest.mark.parametrize("n_ubatch", [512, 7])
def test_captured_z_matches_the_torch_trunk(model64, n_ubatch):
    """z from llama_get_embeddings_layer_inp, also when one decode spans several micro-batches
    (n_ubatch 7: 100 tokens in 15 micro-batches). Tolerance: 1e-4 of z's largest magnitude
    (measured: ~1e-6 of it)."""
    loaded, body = model64
    engine = engine_for(loaded, "f32", n_ubatch=n_ubatch)
    tokens = loaded.tokenizer.encode(body[:100])
    z = engine.capture_z(tokens)
    with torch.no_grad():
        expected = loaded.model.trunk(torch.tensor([tokens]))[0].numpy()  # (T, D)
    assert z.shape == expected.shape
    assert np.abs(z - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("quant", QUANTS)
def test_speculative_greedy_equals_plain_at_every_quantization(model64, quant):
    loaded, body = model64
    engine = engine_for(loaded, quant)
    accepted_any = False
    for text in cuts(body, 8, seed=1):
        prompt = loaded.tokenizer.encode(text)
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=1, reuse_prefix=False))
        for k in (2, 3, 4):
            for reuse in (False, True):
                spec = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=k, reuse_prefix=reuse))
                assert spec.tokens == plain.tokens, (quant, text, k, reuse)
                # Which head drafted each token (the TUI colours them): as many as the stats say.
                assert len(spec.token_heads) == len(spec.tokens)
                assert [spec.token_heads.count(h) for h in range(2, k + 1)] == spec.stats.draft_accepted
            accepted_any |= spec.stats.tokens_per_forward > 1.5
    assert accepted_any, "a model trained on repetitive code should accept drafts"


@pytest.mark.parametrize("quant", QUANTS)
def test_healing_keeps_speculative_equal_to_plain(model64, quant):
    loaded, body = model64
    engine, tok = engine_for(loaded, quant), loaded.tokenizer
    for text in cuts(body, 4, seed=2):
        # A byte vocabulary writes the healed bytes one token each: several healing steps.
        prompt, healed = tok.encode(text[:-5]), text[-5:].encode()
        config = GenerationConfig(max_new_tokens=30, k=1, heal_bytes=healed, reuse_prefix=False)
        plain = engine.generate(prompt, config)
        assert tok.decode_bytes(plain.tokens[:5]) == healed
        assert plain.text == tok.decode(plain.tokens[5:])
        for k in (2, 4):
            assert engine.generate(prompt, replace(config, k=k, reuse_prefix=True)).tokens == plain.tokens, (quant, k)


def test_speculative_equals_plain_with_real_k_quants(tmp_path):
    """dim 256: rows fit 256-wide k-quant blocks, so q4_k_m holds Q4_K/Q6_K tensors."""
    model = random_model(n_future=3, dim=256, n_layers=4)
    save_model(tmp_path, model, ByteTokenizer())
    types = export_model(tmp_path, "q4_k_m").tensor_types["main.gguf"]
    assert "Q4_K" in types.values()
    engine = LlamaEngine(tmp_path, LlamaSettings(threads=1, exact=True))
    assert engine.quant == "q4_k_m"
    rng = random.Random(0)
    for _ in range(4):
        prompt = [rng.randrange(256) for _ in range(rng.randint(1, 30))]
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=1)).tokens
        assert engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=3)).tokens == plain


def test_prefix_reuse_across_requests_and_head_counts(model64):
    loaded, body = model64
    tok = loaded.tokenizer
    engine = engine_for(loaded, "q8_0")

    def check(text, k, reused):
        """Reusing gives the tokens of a fresh engine, and the same drafts (heads' caches are right)."""
        config = GenerationConfig(max_new_tokens=12, k=k)
        result = engine.generate(tok.encode(text), config)
        fresh = engine_for(loaded, "q8_0").generate(tok.encode(text), config)
        assert result.stats.reused_tokens >= reused, (text, k)
        assert result.tokens == fresh.tokens and result.stats.draft_accepted == fresh.stats.draft_accepted, (text, k)
        return result

    text = body[:200]
    assert check(text[:150], 4, 0).stats.reused_tokens == 0
    check(text[:160], 4, 150)
    # Heads catch up from the kept z, so a different k reuses the cache too.
    check(text[:170], 2, 160)
    check(text[:180], 4, 170)
    # The user deleted text: the shorter common prefix is reused, the rest rolled back.
    assert check(text[:140] + "pass\n", 3, 140).stats.reused_tokens == 140
    assert check(text[:120] + "   ", 4, 120).stats.reused_tokens == 120


def test_stats_stops_cancel_and_bad_prompts(model64):
    loaded, body = model64
    engine = engine_for(loaded, "q8_0")
    prompt = loaded.tokenizer.encode(body[:100])
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=30, k=4, stop_strings=("\n\n",)))
    assert result.stop_reason in ("stop_string", "max_tokens") and "\n\n" not in result.text
    s = result.stats
    assert s.prompt_tokens == len(prompt) and s.new_tokens == len(result.tokens) and len(s.acceptance) == 3
    cancel = threading.Event()
    cancel.set()
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=30), cancel).stop_reason == "cancelled"
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([], GenerationConfig())
    with pytest.raises(ValueError, match="no room"):
        engine.generate([1] * 256, GenerationConfig())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([1, 9999], GenerationConfig())


def test_load_errors_name_the_file(model64, tmp_path):
    loaded, _ = model64
    bare = tmp_path / "bare"
    shutil.copytree(loaded.path, bare, ignore=shutil.ignore_patterns("gguf"))
    with pytest.raises(ModelFileError, match="no GGUF export"):
        LlamaEngine(bare)
    with pytest.raises(ModelFileError, match="f16/main.gguf: missing"):
        LlamaEngine(bare, LlamaSettings(quant="f16"))
    broken = tmp_path / "broken"
    shutil.copytree(loaded.path, broken)
    main, head2, head3, head4 = export_files(broken, "q8_0", 4)
    head4.unlink()
    with pytest.raises(ModelFileError, match="head-4.gguf: missing"):
        LlamaEngine(broken, LlamaSettings(quant="q8_0"))
    shutil.copy(export_files(broken, "q4_k_m", 4)[3], head4)  # the right head, from another export
    LlamaEngine(broken, LlamaSettings(quant="q8_0", threads=1)).close()  # same weights: accepted
    shutil.copy(head2, head4)
    with pytest.raises(ModelFileError, match="head-4.gguf: does not match its main model main.gguf: head is 2"):
        LlamaEngine(broken, LlamaSettings(quant="q8_0"))
    data = main.read_bytes()
    main.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="q8_0/main.gguf: .*truncated"):
        LlamaEngine(broken, LlamaSettings(quant="q8_0"))


def test_an_export_is_parsed_once_until_a_file_of_it_changes(model64, tmp_path):
    loaded, _ = model64
    model_dir = tmp_path / "m"
    shutil.copytree(loaded.path, model_dir)
    config, _, _ = read_config(model_dir)
    files = checked_export(model_dir, "q8_0", config)
    head2, head4 = files[1], files[3]
    assert head2.stat().st_size == head4.stat().st_size
    stamp = head4.stat()
    head4.write_bytes(head2.read_bytes())  # unsound: head 2 in head 4's place
    os.utime(head4, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    # The same path, size, mtime and inode: the check that passed stands, nothing is parsed.
    assert checked_export(model_dir, "q8_0", config) == files
    os.utime(head4, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))  # touched: checked again
    with pytest.raises(ModelFileError, match="head-4.gguf: does not match its main model main.gguf: head is 2"):
        checked_export(model_dir, "q8_0", config)
    shutil.copy(export_files(model_dir, "q4_k_m", 4)[3], head4)  # a sound head 4 again: accepted
    assert checked_export(model_dir, "q8_0", config) == files
    data = head2.read_bytes()
    head2.write_bytes(data[: len(data) - 1000])  # another size
    with pytest.raises(ModelFileError, match="head-2.gguf: .*truncated"):
        checked_export(model_dir, "q8_0", config)


def test_load_engine_auto_prefers_llama_where_exported(model64, tmp_path):
    loaded, _ = model64
    engine = load_engine(loaded.path, threads=1)
    assert isinstance(engine, LlamaEngine) and engine.quant == "q8_0"
    assert isinstance(load_engine(loaded.path, "llama", quant="f16", threads=1), LlamaEngine)
    bare = tmp_path / "bare"
    shutil.copytree(loaded.path, bare, ignore=shutil.ignore_patterns("gguf"))
    assert isinstance(load_engine(bare), TorchEngine)


@pytest.mark.parametrize("quant", QUANTS)
def test_one_token_steps_compute_what_a_prefill_computes(model64, quant):
    """A 1-row llama.cpp batch rounds differently from a multi-row one; the exact mode pads it,
    so plain decoding's steps and a verify step see bit-identical trunk outputs."""
    loaded, body = model64
    ids = loaded.tokenizer.encode(body[:160])
    engine = engine_for(loaded, quant)  # kept: its contexts close when it is collected
    step = engine._step
    step.reset()
    step.forward(ids, 0, 1, all_rows=False)  # a prefill
    whole = step.z[: len(ids)].copy()  # (T, D) trunk output of one prefill
    step.reset()
    step.forward(ids[:100], 0, 1, all_rows=False)
    for i, token in enumerate(ids[100:]):
        step.run([token], 100 + i, 1, capture=True)  # a plain step, made to keep z
    assert np.array_equal(step.z[: len(ids)], whole)


def test_fast_mode_is_the_default_everywhere(model64):
    """Every caller (completion service, server, CLI, TUI) loads through load_engine: fast
    llama.cpp defaults unless exactness is asked for."""
    loaded, _ = model64
    assert LlamaSettings().exact is False
    assert load_engine(loaded.path, threads=1).exact is False
    assert load_engine(loaded.path, "llama", threads=1).exact is False
    assert load_engine(loaded.path, "llama", threads=1, exact=True).exact is True


def test_forwards_of_several_rows_use_every_core_unless_told(model64):
    """llama.cpp's own default: one row is memory-bound, a prompt or a draft's verification
    compute-bound (n_threads_batch)."""
    import llama_cpp

    loaded, body = model64
    # Exact mode (f32 KV cache, no flash attention): only the thread count differs between the two.
    default = load_engine(loaded.path, "llama", threads=1, exact=True)
    told = load_engine(loaded.path, "llama", threads=1, exact=True, batch_threads=1)
    for engine, batch in ((default, os.cpu_count()), (told, 1)):
        assert engine.threads == (1, batch)  # what callers (the server's stats) are told
        for context in [engine._step.main, *engine._step.heads]:
            assert llama_cpp.llama_n_threads(context.ctx) == 1
            assert llama_cpp.llama_n_threads_batch(context.ctx) == batch
    prompt = default.tokenizer.encode(body[:200])
    config = GenerationConfig(max_new_tokens=24, k=4)
    assert default.generate(prompt, config).tokens == told.generate(prompt, config).tokens


@pytest.mark.parametrize("quant", QUANTS)
def test_fast_mode_speculative_differs_from_plain_only_at_near_ties(model64, quant):
    loaded, body = model64
    engine = engine_for(loaded, quant, exact=False)
    # q4_k_m rounds weights and activations the most: its near-ties are the widest.
    agreement = GreedyAgreement(model_logits(loaded.model), tolerance=0.3 if quant == "q4_k_m" else 0.1)
    for text in cuts(body, 6, seed=3):
        prompt = loaded.tokenizer.encode(text)
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=1, reuse_prefix=False)).tokens
        for k in (2, 4):
            spec = engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=k)).tokens
            agreement.check_same_until_a_near_tie(prompt, spec, plain, (quant, k, text))


def test_plain_steps_keep_no_z_and_heads_refeed_them(model64):
    """k=1 decodes without capturing z (the heads will not draft); a later request with heads
    reuses the prompt part of the cache, whose z the prefill kept, and feeds the rest again."""
    loaded, body = model64
    tok = loaded.tokenizer
    engine = engine_for(loaded, "q8_0")
    prompt = tok.encode(body[:150])
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=20, k=1))
    assert engine._step.z_len == len(prompt) and not engine._step.capturing
    follow = prompt + plain.tokens[:10]
    config = GenerationConfig(max_new_tokens=12, k=4)
    again = engine.generate(follow, config)
    assert again.stats.reused_tokens == len(prompt)  # the 10 generated tokens had no z
    fresh = engine_for(loaded, "q8_0").generate(follow, config)
    assert again.tokens == fresh.tokens and again.stats.draft_accepted == fresh.stats.draft_accepted
    # A plain request still reuses everything cached (but the last prompt token, fed again).
    longer = follow + again.tokens[:3]
    assert engine.generate(longer, GenerationConfig(max_new_tokens=5, k=1)).stats.reused_tokens == len(longer) - 1


def test_sampling_on_llama_cpp_logits_is_seeded_for_every_k(model64):
    """The llama.cpp step model hands numpy logits to the shared decoding loop; speculative
    sampling (torch) takes them as they are."""
    loaded, body = model64
    engine = engine_for(loaded, "q8_0", exact=False)
    prompt = loaded.tokenizer.encode(body[:80])
    for k in (1, 2, 4):
        config = GenerationConfig(max_new_tokens=20, k=k, temperature=0.8, seed=3)
        first, again = engine.generate(prompt, config), engine.generate(prompt, config)
        assert first.tokens == again.tokens and len(first.tokens) == 20, k
        assert all(0 <= t < loaded.config.vocab_size for t in first.tokens)
    other = engine.generate(prompt, GenerationConfig(max_new_tokens=20, k=4, temperature=5.0, seed=4)).tokens
    assert other != first.tokens  # a hot temperature and another seed: another sample


@pytest.mark.parametrize("quant", ["f16", "q4_k_m"])
def test_every_drafter_equals_plain_in_exact_mode(model64, quant, tmp_path):
    """Lookup, heads+lookup, both and cost-aware auto drafts verified by head 1: plain
    greedy's tokens, with and without prefix reuse, for every k; the probe is measured once
    and kept in its file."""
    loaded, body = model64
    engine = engine_for(loaded, quant, probe_dir=tmp_path)
    tok = loaded.tokenizer
    drafted = after_heads = 0
    for text in cuts(body, 3, seed=4, width=200):
        prompt = tok.encode(text)
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=1, reuse_prefix=False)).tokens
        for drafter in ("lookup", "heads+lookup", "both", "auto"):
            for k in (1, 2, 4):
                for reuse in (False, True):
                    config = GenerationConfig(max_new_tokens=40, k=k, reuse_prefix=reuse, drafter=drafter,
                                              lookup_tokens=(tuple(tok.encode(body[:300])),))
                    result = engine.generate(prompt, config)
                    assert result.tokens == plain, (text[-30:], drafter, k, reuse)
                    drafted += sum(result.stats.lookup_accepted)
                    if drafter == "heads+lookup" and k > 1:
                        after_heads += sum(result.stats.lookup_accepted[k - 1 :])
    assert drafted > 0, "repetitive code: some lookup drafts must be accepted"
    assert after_heads > 0, "and some copies after the heads' drafts"
    assert len(list(tmp_path.glob("probe-*.json"))) == 3  # one per k
    reloaded = engine_for(loaded, quant, probe_dir=tmp_path)
    reloaded.generate(tok.encode(body[:50]), GenerationConfig(max_new_tokens=4, k=4, drafter="auto"))
    assert reloaded._costs[4].rows == engine._costs[4].rows  # read from the file, not measured again
