"""Exact match of the next line: can the model write the line that comes next in held-out code?

Cursor positions are line starts (just after a line end) in files the model never saw,
chosen deterministically; the line to predict is not blank. The model gets the text
before the cursor as prefix and everything after the removed line as suffix (the same
FIM prompt an editor's request builds) and decodes greedily until the end of the line.
A hit is a generated line equal to the real one, trailing whitespace ignored.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.completion.prompt import PromptBudget, build_prompt, generate
from assistant.engine.base import GenerationConfig
from assistant.training.corpus import CorpusConfig, SourceFile, build_corpus


@dataclass(frozen=True)
class LineCase:
    path: str
    prefix: str
    line: str  # what the model should write (no newline)
    suffix: str  # from the newline that ends `line`


def line_cases(root: Path | str, count: int = 200, seed: int = 0, context_chars: int = 4000) -> list[LineCase]:
    """`count` cursor positions at line starts in the code files under root."""
    corpus = build_corpus(root, CorpusConfig(val_fraction=0.0))
    return cases_from_files(corpus.train + corpus.val, count, seed, context_chars)


def cases_from_files(
    files: list[SourceFile], count: int = 200, seed: int = 0, context_chars: int = 4000
) -> list[LineCase]:
    """`count` cursor positions at line starts in these files (e.g. a held-out split)."""
    files = sorted(files, key=lambda f: f.path)
    candidates = []  # (file index, offset of the line start)
    for index, source in enumerate(files):
        offset = 0
        lines = source.text.split("\n")
        for previous, line in zip(lines, lines[1:]):
            offset += len(previous) + 1
            if line.strip() and offset > 0:
                candidates.append((index, offset))
    rng = random.Random(seed)
    cases = []
    for index, start in sorted(rng.sample(candidates, min(count, len(candidates)))):
        text = files[index].text
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        cases.append(
            LineCase(
                path=files[index].path,
                prefix=text[max(0, start - context_chars) : start],
                line=text[start:end],
                suffix=text[end : end + context_chars],
            )
        )
    return cases


@dataclass
class NextLineResult:
    hits: int = 0
    total: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)  # the first few, for the card
    latencies_s: list[float] = field(default_factory=list)  # each case's prompt + decoding time

    @property
    def exact_match(self) -> float:
        return self.hits / self.total if self.total else 0.0


def run_next_line(engine: Any, cases: list[LineCase], max_new_tokens: int = 48, keep_examples: int = 5) -> NextLineResult:
    tokenizer = engine.tokenizer
    budget = PromptBudget(max_tokens=engine.max_seq_len - max_new_tokens - engine.n_future - 1)
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eot_id,), stop_strings=("\n",))
    result = NextLineResult()
    for case in cases:
        started = time.perf_counter()
        generated = generate(engine, build_prompt(tokenizer, case.prefix, case.suffix, budget), config).text
        result.latencies_s.append(time.perf_counter() - started)
        hit = generated.rstrip() == case.line.rstrip()
        result.hits += hit
        result.total += 1
        if len(result.examples) < keep_examples:
            result.examples.append({"path": case.path, "expected": case.line, "generated": generated, "hit": hit})
    return result
