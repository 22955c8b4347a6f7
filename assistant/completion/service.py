"""The completion path from a document and a cursor to the text to show, with stats.

    text, cursor -> prefix/suffix windows -> plan (one line or several)
      -> cache (exact or typed-ahead) -> prompt (snippets, suffix, prefix)
      -> engine.generate (cancellable between forward passes)
      -> stop rules -> post-processing -> cache

The language server and `mtp-assistant complete` both call this; neither knows the
steps. One service serves one engine; the engine serialises generations itself.
"""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass

from assistant.completion.cache import CompletionCache, context_key
from assistant.completion.context import ContextCollector, looks_binary
from assistant.completion.positions import UTF16, offset_at
from assistant.completion.postprocess import postprocess
from assistant.completion.encoding import TokenCache
from assistant.completion.prompt import LINE_SEARCH, WINDOW_STEP, PromptBudget, build_prompt, generate, snippet_text
from assistant.completion.rules import apply_stop_rules, plan
from assistant.completion.settings import CompletionSettings
from assistant.completion.stats import ServerStats
from assistant.engine.base import STOP_CANCELLED, DecodeStats, GenerationConfig

# The prefix window starts near a multiple of this many characters, so that while the
# user types it stays put (and with it the cache's typed-ahead matches). It is the grid
# build_prompt places its own, smaller window on (see windows()).
WINDOW_QUANTUM = WINDOW_STEP
PREFIX_STEP = 128  # tokens: see PromptBudget.prefix_step; a full prefill once per this many typed
# Encodings kept: snippets (for lookup drafts and in the prompt), the suffix's head, the
# prefix's head (see TokenCache).
TOKEN_CACHE = 64
CHARS_PER_TOKEN = 4  # generous: enough text to fill the token budget with any tokenizer


@dataclass
class Completion:
    text: str
    cached: bool = False
    multiline: bool = False
    stop_reason: str = ""
    latency_s: float = 0.0
    stats: DecodeStats | None = None  # None when no model call was made
    # (text of one token, the head that drafted it), joined = text: which head wrote what.
    # None where no model call made the text (a cache hit) or a rule changed it beyond a cut.
    pieces: list[tuple[str, int]] | None = None


def token_pieces(
    tokenizer, tokens: list[int], heads: list[int], text: str, healed: bytes = b""
) -> list[tuple[str, int]]:
    """Each token's text with its head, after the healed bytes (GenerationConfig.heal_bytes)
    and cut where `text` ends (a stop string, a stop rule, a post-processing cut).

    The decoder only says how many characters each token adds; the characters are taken
    from `text`, so the pieces always join to it (invalid UTF-8 decodes to replacement
    characters one way in a stream and maybe another in a whole text)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, used, skip = [], 0, len(healed)
    for token, head in zip(tokens, heads):
        if used >= len(text):
            break
        data = tokenizer.token_bytes(token)
        data, skip = data[skip:], max(0, skip - len(data))  # the healed bytes are not new text
        n = len(decoder.decode(data))  # 0 while a character is split
        if n:
            pieces.append((text[used : used + n], head))
            used += n
    if used < len(text):  # what the decoder still held back
        pieces.append((text[used:], pieces[-1][1] if pieces else 1))
    return pieces


class CompletionService:
    def __init__(
        self,
        engine,
        settings: CompletionSettings = CompletionSettings(),
        context: ContextCollector | None = None,
        stats: ServerStats | None = None,
    ):
        self.engine = engine
        self.context = context
        self.stats = stats
        self.settings = settings
        self.cache = CompletionCache(settings.cache_size)
        self._inflight: dict[str, threading.Event] = {}
        self.tokens = TokenCache(engine.tokenizer, TOKEN_CACHE)
        self._inflight_lock = threading.Lock()

    def update_settings(self, settings: CompletionSettings) -> None:
        self.settings = settings
        self.cache = CompletionCache(settings.cache_size)  # old entries were made under other rules

    # --- one request per document at a time ---

    def begin(self, uri: str) -> threading.Event:
        """A cancel event for a new request on `uri`; the one in flight there is cancelled."""
        event = threading.Event()
        with self._inflight_lock:
            previous = self._inflight.get(uri)
            if previous is not None:
                previous.set()
            self._inflight[uri] = event
        return event

    def end(self, uri: str, event: threading.Event) -> None:
        with self._inflight_lock:
            if self._inflight.get(uri) is event:
                del self._inflight[uri]

    # --- completing ---

    def windows(self, text: str, offset: int) -> tuple[str, str, int]:
        """The prefix and suffix the model can see at all, cut from a possibly huge text,
        and where the prefix starts in it (build_prompt's `origin`)."""
        reach = self.settings.context_tokens * CHARS_PER_TOKEN
        # LINE_SEARCH before the multiple: build_prompt starts its window at the line start
        # before a multiple, and that line start must be in this window whichever multiple
        # it starts at; then this window moving does not move the prompt.
        start = max(0, (offset - reach) // WINDOW_QUANTUM * WINDOW_QUANTUM - LINE_SEARCH)
        return text[start:offset], text[offset : offset + reach], start

    def complete_at(
        self, text: str, line: int, character: int, uri: str = "",
        cancel: threading.Event | None = None, encoding: str = UTF16,
    ) -> Completion:
        """The completion at an LSP position (0-based line, character in code units)."""
        offset = offset_at(text, line, character, encoding)
        prefix, suffix, origin = self.windows(text, offset)
        return self.complete(prefix, suffix, uri=uri, cancel=cancel, origin=origin)

    def limits(self) -> tuple[PromptBudget, int]:
        """The prompt budget and the new tokens allowed, both within the model's context:
        max_tokens is capped at half of it, and the prompt gets the rest."""
        s = self.settings
        max_new = min(s.max_tokens, self.engine.max_seq_len // 2)
        # Room in the model's context for the completion and one round of drafts.
        fits = self.engine.max_seq_len - max_new - self.engine.n_future - 1
        return PromptBudget(max(8, min(s.context_tokens, fits)), s.suffix_share, s.snippet_share, PREFIX_STEP), max_new

    def complete(
        self, prefix: str, suffix: str, uri: str = "", cancel: threading.Event | None = None, origin: int = 0
    ) -> Completion:
        """The completion between prefix and suffix; `origin` is where prefix starts in its
        document, if it is a window of it (see build_prompt)."""
        started = time.perf_counter()
        s = self.settings
        if looks_binary(prefix[-8192:]) or looks_binary(suffix):
            return self._done(Completion("", stop_reason="binary"), started)
        the_plan = plan(prefix, suffix, s.multiline)
        snippets = self.context.snippets(uri, prefix) if self.context else []
        key = context_key(suffix, snippet_text(snippets), repr(the_plan), str(s.max_tokens), str(s.max_lines), str(s.heads))
        hit = self.cache.get(key, prefix)
        if hit is not None:
            return self._done(Completion(hit, cached=True, multiline=the_plan.multiline, stop_reason="cache"), started)

        tok = self.engine.tokenizer
        budget, max_new = self.limits()
        prompt = build_prompt(tok, prefix, suffix, budget, snippets, cache=self.tokens, origin=origin)
        # "auto": where the heads' caches follow any k (llama.cpp), the engine drafts, each step,
        # with the drafter and length that pay on this machine (heads, lookup or none);
        # elsewhere a change of k would cost a full prefill per keystroke, so all heads draft.
        auto = s.heads == "auto" and getattr(self.engine, "reuses_cache_across_k", False)
        k = None if s.heads == "auto" else s.heads
        config = GenerationConfig(
            max_new_tokens=max_new,
            k=k,
            temperature=s.temperature,
            # Any special ends a completion (a tokenizer without FIM specials has None for them).
            stop_token_ids=tuple(i for i in (tok.eot_id, tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id, tok.file_sep_id) if i is not None),
            stop_strings=the_plan.stop_strings,
            time_cap_s=s.time_cap_ms / 1000,
            drafter="auto" if auto else "heads",
            # The snippets' code, whole, for lookup drafts to copy from (the prompt holds those that
            # fit); only auto drafts by lookup, and plain decoding does no drafting work at all.
            # They come from the token cache: the snippets stay the same while the cursor stays
            # in one part of a file, and encoding them again at every keystroke costs about as
            # much as a decoding step or two.
            lookup_tokens=tuple(self.tokens.encode(snippet.text) for snippet in snippets) if auto else (),
        )
        result = generate(self.engine, prompt, config, cancel)
        if result.stop_reason == STOP_CANCELLED:
            if self.stats:
                self.stats.cancel()
            return Completion("", multiline=the_plan.multiline, stop_reason=STOP_CANCELLED,
                              latency_s=time.perf_counter() - started, stats=result.stats)
        text = apply_stop_rules(result.text, prefix, the_plan, s.max_lines)
        text = postprocess(text, prefix, suffix)
        self.cache.put(key, prefix, text)
        pieces = None
        if result.text.startswith(text):  # the rules only cut: the tokens still tell who wrote what
            heads = result.token_heads or [1] * len(result.tokens)
            pieces = token_pieces(tok, result.tokens, heads, text, prompt.heal)
        return self._done(
            Completion(text, multiline=the_plan.multiline, stop_reason=result.stop_reason, stats=result.stats, pieces=pieces),
            started,
        )

    def _done(self, completion: Completion, started: float) -> Completion:
        completion.latency_s = time.perf_counter() - started
        if self.stats:
            self.stats.completed(completion.latency_s, completion.cached, completion.stats)
        return completion
