"""The completion path with a tiny real model (random weights, byte tokens)."""

import threading
from dataclasses import replace

import pytest

from assistant.completion.service import CompletionService
from assistant.completion.settings import CompletionSettings
from assistant.engine.torch_engine import TorchEngine
from models.tokenizer import ByteTokenizer
from tests.assistant.engine.helpers import random_model

TEXT = "def add(a, b):\n    return a + b\n\nx = add(1, "
LINE, COL = 3, 11  # the end of TEXT


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(random_model(seed=2), ByteTokenizer())


def service(engine, **settings) -> CompletionService:
    # No time cap: the text must not depend on how busy the machine is.
    defaults = {"max_tokens": 12, "context_tokens": 128, "time_cap_ms": 600_000}
    return CompletionService(engine, CompletionSettings(**(defaults | settings)))


def test_speculative_path_equals_plain_decoding(engine):
    fast = service(engine, heads=None).complete_at(TEXT, LINE, COL)  # all heads draft
    plain = service(engine, heads=1).complete_at(TEXT, LINE, COL)
    assert fast.text and fast.text == plain.text
    assert fast.stats.forward_passes <= plain.stats.forward_passes


def test_cache_serves_repeats_and_typed_ahead_text(engine):
    svc = service(engine)
    first = svc.complete_at(TEXT, LINE, COL)
    assert not first.cached and len(first.text) >= 2
    again = svc.complete_at(TEXT, LINE, COL)
    assert again.cached and again.stats is None and again.text == first.text
    typed = TEXT + first.text[:1]  # the user types the suggestion's first character
    ahead = svc.complete_at(typed, LINE, COL + 1)
    assert ahead.cached and ahead.text == first.text[1:]


def test_keystrokes_reuse_the_engine_cache(engine):
    svc = service(engine, context_tokens=200)
    svc.complete_at(TEXT, LINE, COL)
    after = svc.complete_at(TEXT + "2", LINE, COL + 1)
    assert not after.cached
    assert after.stats.reused_tokens >= after.stats.prompt_tokens - 3


def test_cancelled_generation_returns_nothing_and_is_not_cached(engine):
    svc = service(engine)
    cancel = threading.Event()
    cancel.set()
    result = svc.complete_at(TEXT, LINE, COL, cancel=cancel)
    assert (result.text, result.stop_reason) == ("", "cancelled")
    assert not svc.complete_at(TEXT, LINE, COL).cached


def test_a_new_request_supersedes_the_one_in_flight(engine):
    svc = service(engine)
    first = svc.begin("file:///a.py")
    other = svc.begin("file:///b.py")
    second = svc.begin("file:///a.py")
    assert first.is_set() and not other.is_set() and not second.is_set()
    svc.end("file:///a.py", second)
    assert svc.begin("file:///a.py") is not second


def test_binary_text_gets_no_completion(engine):
    result = service(engine).complete("data = b'\x00\x01\x02", "")
    assert (result.text, result.stop_reason, result.stats) == ("", "binary", None)


def test_a_huge_file_costs_no_more_than_its_window(engine, monkeypatch):
    seen = []  # the length of every text the tokenizer encodes
    encode = engine.tokenizer.encode
    monkeypatch.setattr(engine.tokenizer, "encode", lambda text: seen.append(len(text)) or encode(text))
    svc = service(engine, multiline="never")
    filler = "# padding line\n" * 700_000  # about 10 MB before the code
    huge = svc.complete_at(filler + TEXT, LINE + 700_000, COL)
    assert seen and max(seen) < 20_000  # the window around the cursor, never the 10 MB
    prefix, suffix, origin = svc.windows(filler + TEXT, len(filler + TEXT))
    small = service(engine, multiline="never").complete(prefix, suffix, origin=origin)
    assert huge.text == small.text


def test_position_past_the_end_is_the_end(engine):
    svc = service(engine)
    assert svc.complete_at(TEXT, 99, 0).text == service(engine).complete_at(TEXT, LINE, COL).text


def test_max_tokens_is_capped_to_fit_the_context(engine):
    svc = service(engine, max_tokens=4000, context_tokens=4000, multiline="always", max_lines=1000)
    budget, max_new = svc.limits()
    assert max_new == engine.max_seq_len // 2
    assert budget.max_tokens + max_new + engine.n_future < engine.max_seq_len
    result = svc.complete_at(TEXT * 20, LINE + 60, COL)
    assert result.stats.prompt_tokens <= budget.max_tokens


def test_auto_heads_is_all_heads_where_a_change_of_k_costs_the_kv_cache(engine):
    assert not engine.reuses_cache_across_k
    completion = service(engine).complete_at(TEXT, LINE, COL)  # heads="auto"
    assert len(completion.stats.draft_proposed) == engine.n_future - 1


class Recording:
    """A real engine that keeps the configs it was called with."""

    def __init__(self, engine):
        self.engine, self.configs = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompt, config, cancel=None):
        self.configs.append(config)
        return self.engine.generate(prompt, config, cancel)


def test_auto_heads_drafts_by_cost_where_k_may_change_and_passes_the_snippets():
    from assistant.completion.context import ContextCollector
    from assistant.completion.prompt import Snippet

    # A torch engine told it may switch k freely (llama.cpp's property).
    engine = TorchEngine(random_model(seed=2), ByteTokenizer())
    engine.reuses_cache_across_k = True
    plain = service(engine, heads=1).complete_at(TEXT, LINE, COL).text
    recording = Recording(engine)
    settings = CompletionSettings(max_tokens=12, context_tokens=128, time_cap_ms=600_000)

    class Context(ContextCollector):
        def __init__(self):
            pass

        def snippets(self, uri, prefix):
            return [Snippet("b.py", "def sub(a, b):\n    return a - b\n")]

    auto = CompletionService(recording, settings, context=Context()).complete_at(TEXT, LINE, COL)
    with_plain = CompletionService(engine, replace(settings, heads=1), context=Context()).complete_at(TEXT, LINE, COL)
    assert auto.text == with_plain.text
    config = recording.configs[-1]
    assert config.drafter == "auto" and config.k is None
    assert config.lookup_tokens == (tuple(engine.tokenizer.encode("def sub(a, b):\n    return a - b\n")),)
    # Where a change of k costs the cache, all heads draft, as before.
    torch_only = Recording(TorchEngine(random_model(seed=2), ByteTokenizer()))
    assert CompletionService(torch_only, settings).complete_at(TEXT, LINE, COL).text == plain
    assert torch_only.configs[-1].drafter == "heads"


def test_snippet_tokens_are_encoded_for_auto_only_and_once_while_they_stay():
    from assistant.completion.context import ContextCollector
    from assistant.completion.prompt import Snippet

    class Context(ContextCollector):
        def __init__(self):
            pass

        def snippets(self, uri, prefix):
            return [Snippet("b.py", "def sub(a, b):\n    return a - b\n")]

    engine = TorchEngine(random_model(seed=2), ByteTokenizer())
    engine.reuses_cache_across_k = True
    settings = CompletionSettings(max_tokens=4, context_tokens=128, time_cap_ms=600_000)
    plain = Recording(engine)
    CompletionService(plain, replace(settings, heads=1), context=Context()).complete_at(TEXT, LINE, COL)
    assert plain.configs[-1].lookup_tokens == ()  # plain decoding does no drafting work
    auto = Recording(engine)
    svc = CompletionService(auto, settings, context=Context())
    svc.complete("x = 1\n", "")
    svc.complete("x = 12\n", "")
    first, second = (c.lookup_tokens[0] for c in auto.configs)
    assert first == tuple(engine.tokenizer.encode("def sub(a, b):\n    return a - b\n")) and second is first


def test_pieces_say_which_head_wrote_each_part_of_the_final_text(engine):
    svc = service(engine, heads=None, max_tokens=24)
    result = svc.complete_at(TEXT, LINE, COL)
    assert result.pieces and "".join(p for p, _ in result.pieces) == result.text
    assert {h for _, h in result.pieces} <= set(range(1, engine.n_future + 1))
    # A stop rule's cut is the pieces' cut too (the engine wrote more than is shown).
    multi = svc.complete("def f(x):", "")
    assert multi.multiline and "".join(p for p, _ in multi.pieces or []) == multi.text
    # The cache knows the text, not who wrote it.
    assert svc.complete_at(TEXT, LINE, COL).pieces is None


def test_token_pieces_decode_split_characters_and_skip_healed_bytes():
    from assistant.completion.service import token_pieces

    tok = ByteTokenizer()
    ids = tok.encode("é+ü")
    assert token_pieces(tok, ids, [1, 2, 3, 4, 1], "é+ü") == [("é", 2), ("+", 3), ("ü", 1)]
    # Healed bytes (here "é", written again by the first tokens) are not part of the text.
    assert token_pieces(tok, ids, [1, 2, 3, 4, 1], "+ü", healed="é".encode()) == [("+", 3), ("ü", 1)]
    assert token_pieces(tok, ids, [1, 2, 3, 4, 1], "é+") == [("é", 2), ("+", 3)]  # cut where the text ends
