"""What a llama.cpp forward of R rows costs, and the speedup perfect heads reach
(`mtp-assistant bench-cost`, assistant/cli/bench_cost.py).

The step-cost curve. On each model (a model directory's GGUF export, or a random model of
a named size built here, models/synthetic.py), llama_decode of R rows after a prefix, timed
as speculative.decode runs it (R = 1: a plain step; R > 1: a verify that keeps z for the
heads), median of the repeats, the R interleaved so that a busy moment on a shared machine
spreads over all of them. On a small CPU R rows cost far more than one (ggml's small-batch
kernels): that, not the heads, is what bounds the speedup of drafting there.

The ceiling. With perfect heads (a model whose output matrix is zero: every head predicts
what head 1 does, so every draft is accepted; models/synthetic.py) the engine decodes N
tokens at k = 1..n, and the measured speedup over k = 1 is set beside what the curve
predicts for k tokens per forward of k rows:

    predicted(k)        = k * cost(1) / cost(k)
    predicted+heads(k)  = k * cost(1) / (cost(k) + (k - 1) * head(k))

head(k) being what one head's catch-up over the k accepted positions costs (its block on k
rows and the unembedding of the last), which the first formula leaves out. Random models
have the zero output matrix from the start, so one model serves both parts; a model given
by path is timed as it is and its ceiling run on a perfect-heads copy (same shapes, same
quantization). Built models are kept in a cache folder (under the store's home, or --work)
and reused.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from assistant.errors import UserError

DEFAULT_ROWS = (1, 2, 4, 8, 16)
CACHE_FOLDER = "bench-cost"  # under the store's home


@dataclass(frozen=True)
class StepCostSettings:
    models: tuple[str, ...] = ()  # model references (paths, store names); with no random either: the shipped model
    random: tuple[str, ...] = ()  # random model sizes, models.synthetic.RANDOM_SIZES keys
    quants: tuple[str, ...] = ("q8_0",)
    threads: int | None = None  # llama.cpp threads; None: the engine's default (half the logical cores)
    rows: tuple[int, ...] = DEFAULT_ROWS
    prefix: int = 256  # tokens cached before each timed forward
    repeats: int = 5
    ceiling: bool = True
    ks: tuple[int, ...] | None = None  # the ceiling's head counts; None: 1..n_future
    new_tokens: int = 96  # decoded per ceiling run after the first token (rounded down to a multiple of k)
    ceiling_repeats: int = 3
    work: Path | None = None  # where built models are kept; None: <store home>/bench-cost
    seed: int = 0

    def __post_init__(self) -> None:
        from models.gguf_export import QUANTS
        from models.synthetic import RANDOM_SIZES

        for size in self.random:
            if size not in RANDOM_SIZES:
                raise UserError(f"unknown random model size {size!r}; choose from {', '.join(RANDOM_SIZES)}")
        for quant in self.quants:
            if quant not in QUANTS:
                raise UserError(f"unknown quantization {quant!r}; choose from {', '.join(QUANTS)}")
        if not self.quants:
            raise UserError("give at least one quantization")
        if not self.rows or any(r < 1 for r in self.rows):
            raise UserError(f"rows must be positive, got {list(self.rows)}")
        if self.ks is not None and any(k < 1 for k in self.ks):
            raise UserError(f"k must be >= 1, got {list(self.ks)}")
        for name in ("prefix", "repeats", "new_tokens", "ceiling_repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")


@dataclass
class RowCost:
    rows: int
    ms: float  # median
    relative: float  # ms / the R = 1 forward's ms (for head costs: / the main R = 1 forward's)
    times_ms: list[float] = field(default_factory=list)


@dataclass
class CeilingRow:
    k: int
    tokens: int  # decoded after the first token (which the prefill yields)
    forwards: int  # forwards after the prefill
    tokens_per_forward: float  # k exactly when every draft is accepted
    tokens_per_s: float  # median over the repeats, decoding only (the prefill excluded)
    speedup: float  # over k = 1
    predicted: float  # k * cost(1) / cost(k)
    ratio: float  # speedup / predicted
    predicted_with_heads: float  # k * cost(1) / (cost(k) + (k - 1) * head(k))
    ratio_with_heads: float


@dataclass
class ModelCost:
    label: str
    path: str
    quant: str
    params: int
    main_params: int  # what main.gguf holds (trunk, head 1, embeddings, norm, output)
    built: bool  # built by this run (False: given, or found in the cache)
    max_seq_len: int
    costs: list[RowCost]
    head_costs: list[RowCost]  # one head's catch-up over R positions, R = the ceiling's k > 1
    ceiling_path: str = ""  # the perfect-heads model the ceiling ran on
    ceiling: list[CeilingRow] = field(default_factory=list)

    def cost_ms(self, rows: int) -> float:
        return next(c.ms for c in self.costs if c.rows == rows)


@dataclass
class StepCostReport:
    machine: str
    threads: int
    prefix: int
    repeats: int
    rows: list[int]  # asked for; costs also hold the ceiling's k
    new_tokens: int
    ceiling_repeats: int
    models: list[ModelCost]
    build_peak_rss_bytes: int  # peak resident memory of this process up to the end of the builds
    peak_rss_bytes: int  # over the whole run (mapped GGUF pages included)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StepCostReport":
        models = []
        for m in data["models"]:
            m = dict(m)
            m["costs"] = [RowCost(**c) for c in m["costs"]]
            m["head_costs"] = [RowCost(**c) for c in m["head_costs"]]
            m["ceiling"] = [CeilingRow(**c) for c in m["ceiling"]]
            models.append(ModelCost(**m))
        return cls(**{**data, "models": models})


# --- measuring ---------------------------------------------------------------------------------


def _prompt(vocab: int, length: int, seed: int) -> list[int]:
    """Token ids to feed: what they are does not change what a forward costs."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


def measure_costs(engine, rows: Sequence[int], head_rows: Sequence[int], prefix: int, repeats: int,
                  prompt: Sequence[int]) -> tuple[list[RowCost], list[RowCost]]:
    """Median ms of a forward of each R in `rows` (1 among them) after `prefix` cached tokens,
    and of one head's catch-up over R positions for each R in `head_rows`.

    Each timed forward follows an untimed one of the same shape, as a decoding step follows
    the previous step at the same k: llama.cpp may then reuse the graph it built, and the
    context keeps z or not (R > 1 or 1) as it already did."""
    step = engine.measurement_step()
    step.forward(prompt[:prefix], 0, 2, all_rows=False)  # a prefill that keeps z, as decode's does
    head_rows = list(head_rows) if step.heads else []
    if head_rows:
        step.head_logits(prefix - 1, 1 + len(step.heads))  # every head caught up to the prefix
    times: dict[int, list[float]] = {r: [] for r in rows}
    head_times: dict[int, list[float]] = {r: [] for r in head_rows}
    for _ in range(repeats):
        for r in rows:
            for timed in (False, True):
                clock = time.perf_counter()
                step.forward(prompt[prefix : prefix + r], prefix, r).next_logits()  # k = r: z kept where r > 1
                if timed:
                    times[r].append((time.perf_counter() - clock) * 1000)
        if head_rows:
            widest = max(head_rows)
            step.forward(prompt[prefix : prefix + widest], prefix, widest)  # z of the positions the heads read
            for r in head_rows:
                for timed in (False, True):
                    clock = time.perf_counter()
                    step.heads[0].decode(prefix, step.z[prefix : prefix + r], all_logits=False)
                    if timed:
                        head_times[r].append((time.perf_counter() - clock) * 1000)
    engine.measurement_step()  # the timed positions are no prompt's
    one = statistics.median(times[1])
    costs = [RowCost(r, statistics.median(t), statistics.median(t) / one, t) for r, t in sorted(times.items())]
    heads = [RowCost(r, statistics.median(t), statistics.median(t) / one, t) for r, t in sorted(head_times.items())]
    return costs, heads


def measure_ceiling(engine, prompt: Sequence[int], ks: Sequence[int], new_tokens: int, repeats: int,
                    costs: ModelCost) -> list[CeilingRow]:
    """Decode with perfect heads at each k (1 first, interleaved over the repeats); speedups
    over k = 1 beside the curve's predictions from `costs`."""
    from assistant.engine.base import GenerationConfig

    def config(k: int, tokens: int) -> GenerationConfig:
        # No stop token: perfect heads predict id 0, which is the end-of-text token of some tokenizers.
        return GenerationConfig(max_new_tokens=tokens + 1, k=k, drafter="heads", stop_token_ids=())

    ks = sorted(set(ks) | {1})
    tokens = {k: max(k, new_tokens // k * k) for k in ks}  # every forward then commits k
    for k in ks:
        engine.generate(prompt, config(k, 2 * k))  # the prefill, and llama.cpp's buffers for k rows
    speeds: dict[int, list[float]] = {k: [] for k in ks}
    per_forward: dict[int, list[float]] = {k: [] for k in ks}
    forwards: dict[int, int] = {}
    for _ in range(repeats):
        for k in ks:
            stats = engine.generate(prompt, config(k, tokens[k])).stats
            decoded, forwards[k] = stats.new_tokens - 1, stats.forward_passes - 1
            speeds[k].append(decoded / stats.decode_s)
            per_forward[k].append(decoded / forwards[k])
    plain = statistics.median(speeds[1])
    one = costs.cost_ms(1)
    head = {c.rows: c.ms for c in costs.head_costs}
    rows = []
    for k in ks:
        speedup = statistics.median(speeds[k]) / plain
        predicted = k * one / costs.cost_ms(k)
        with_heads = k * one / (costs.cost_ms(k) + (k - 1) * head.get(k, 0.0))
        rows.append(CeilingRow(k, tokens[k], forwards[k], min(per_forward[k]), statistics.median(speeds[k]), speedup,
                               predicted, speedup / predicted, with_heads, speedup / with_heads))
    return rows


# --- the run -------------------------------------------------------------------------------------


@dataclass
class _Target:
    label: str
    path: Path  # timed for the curve
    ceiling_path: Path | None  # the perfect-heads model (path itself for a random one)
    built: bool


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _effective_threads(threads: int | None) -> int:
    return threads or max(1, (os.cpu_count() or 2) // 2)  # LlamaSettings' default


def _check_config(label: str, config, settings: StepCostSettings) -> None:
    """UserError if the settings cannot be run on a model of this config."""
    need = settings.prefix + max(max(settings.rows), max(settings.ks or (config.n_future_tokens,)))
    if settings.ceiling:
        need = max(need, settings.prefix + settings.new_tokens + 1 + max(settings.ks or (config.n_future_tokens,)))
    if need > config.max_seq_len:
        raise UserError(f"{label}: a prefix of {settings.prefix} and the forwards after it need {need} positions, "
                        f"its context is {config.max_seq_len} (lower --prefix, --rows or --new)")
    if settings.ks and max(settings.ks) > config.n_future_tokens:
        raise UserError(f"{label}: k {max(settings.ks)} asks for more heads than its {config.n_future_tokens}")
    if settings.ceiling and (config.qkv_bias or config.qk_norm):
        raise UserError(f"{label}: the perfect-heads copy is exported by our llama exporter, which writes no "
                        "q/k/v biases or q/k norms (run with --no-ceiling)")


def _targets(settings: StepCostSettings, cache: Path, progress: Callable[[str], None]) -> list[_Target]:
    """The models to time, built (or found in the cache) where asked for."""
    from assistant.store import SHIPPED_NAME, ModelStore
    from models.checkpoint import read_config
    from models.gguf_export import available_quants, quant_dir
    from models.synthetic import RANDOM_SIZES, parameter_counts, perfect_copy, random_model

    targets = []
    store = ModelStore()
    refs = settings.models or (() if settings.random else (SHIPPED_NAME,))
    threads = _effective_threads(settings.threads)
    for ref in refs:
        path = store.resolve(ref)
        label = ref if ref == SHIPPED_NAME else path.name
        _check_config(label, read_config(path)[0], settings)
        missing = [q for q in settings.quants if q not in available_quants(path)]
        if missing:
            raise UserError(f"{label}: no {', '.join(missing)} export in {path} "
                            f"(run `mtp-assistant models export {path} --quant {','.join(missing)}`)")
        copy = None
        if settings.ceiling:
            if any((quant_dir(path, q) / "base.json").is_file() for q in settings.quants):
                raise UserError(f"{label}: its export is a base brought with add-heads, which the perfect-heads copy "
                                "cannot reproduce (run with --no-ceiling)")
            progress(f"{label}: perfect-heads copy in {cache}")
            copy, _ = perfect_copy(cache, path, settings.quants, threads, lambda line: progress(f"  {line}"))
        targets.append(_Target(label, path, copy, False))
    for size in settings.random:
        _check_config(f"random {size}", RANDOM_SIZES[size], settings)  # before minutes of building
        total, _ = parameter_counts(RANDOM_SIZES[size])
        progress(f"random {size} ({_count(total)} parameters) in {cache}")
        path, built = random_model(cache, size, settings.quants, threads, settings.seed,
                                   lambda line: progress(f"  {line}"))
        targets.append(_Target(f"random {size}", path, path, built))
    return targets


def run_step_cost(settings: StepCostSettings, progress: Callable[[str], None] = lambda line: None) -> StepCostReport:
    from assistant.engine.llama_engine import LlamaEngine
    from assistant.store import ModelStore
    from models.checkpoint import read_config
    from models.synthetic import parameter_counts

    cache = Path(settings.work) if settings.work else ModelStore().root / CACHE_FOLDER
    targets = _targets(settings, cache, progress)
    build_peak = _peak_rss()
    results = []
    for target in targets:
        config, _, _ = read_config(target.path)
        total, main = parameter_counts(config)
        ks = sorted(set(settings.ks or range(1, config.n_future_tokens + 1)) | {1})
        rows = sorted(set(settings.rows) | set(ks))  # the predictions need cost(k) of every k
        prompt = _prompt(config.vocab_size, settings.prefix + max(rows), settings.seed)
        for quant in settings.quants:
            progress(f"{target.label} {quant}: llama_decode of {', '.join(map(str, rows))} rows")
            engine = LlamaEngine.from_dir(target.path, quant=quant, threads=settings.threads)
            try:
                costs, heads = measure_costs(engine, rows, [k for k in ks if k > 1], settings.prefix, settings.repeats, prompt)
                model = ModelCost(target.label, str(target.path), quant, total, main, target.built, config.max_seq_len,
                                  costs, heads)
                if settings.ceiling and target.ceiling_path is not None:
                    progress(f"{target.label} {quant}: perfect heads, k = {', '.join(map(str, ks))}")
                    if target.ceiling_path != target.path:
                        engine.close()
                        engine = LlamaEngine.from_dir(target.ceiling_path, quant=quant, threads=settings.threads)
                    model.ceiling = measure_ceiling(engine, prompt[: settings.prefix], ks, settings.new_tokens,
                                                    settings.ceiling_repeats, model)
                    model.ceiling_path = str(target.ceiling_path)
            finally:
                engine.close()
            results.append(model)
    import llama_cpp

    machine = f"{platform.machine()}, {os.cpu_count()} cores, llama-cpp-python {llama_cpp.__version__}"
    return StepCostReport(machine, _effective_threads(settings.threads), settings.prefix, settings.repeats,
                          sorted(set(settings.rows)), settings.new_tokens, settings.ceiling_repeats, results,
                          build_peak, _peak_rss())


# --- output ----------------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_report(report: StepCostReport) -> str:
    lines = [f"step cost: llama_decode of R rows after a {report.prefix}-token prefix, median of {report.repeats}; "
             f"{report.machine}, {report.threads} threads"]
    rows = sorted({c.rows for m in report.models for c in m.costs})
    name_width = max([len(m.label) for m in report.models] + [5])
    head = f"{'model':<{name_width}}  quant   params      " + "".join(f"{'R=' + str(r):>9}" for r in rows)
    lines += [head, "-" * len(head)]
    for m in report.models:
        by_rows = {c.rows: c for c in m.costs}
        prefix = f"{m.label:<{name_width}}  {m.quant:<6}  {_count(m.params):>7}  ms "
        lines.append(prefix + "".join(f"{by_rows[r].ms:9.2f}" if r in by_rows else " " * 9 for r in rows))
        lines.append(" " * (len(prefix) - 3) + "x1 " + "".join(f"{by_rows[r].relative:8.2f}x" if r in by_rows else " " * 9
                                                             for r in rows))
    with_ceiling = [m for m in report.models if m.ceiling]
    if with_ceiling:
        lines += ["", f"ceiling: perfect heads (output matrix zero: every draft accepted), {report.new_tokens} tokens "
                      f"decoded after the first, median of {report.ceiling_repeats}; predicted = k * cost(1) / cost(k), "
                      "+heads adds (k - 1) heads' catch-up over k positions"]
        head = (f"{'model':<{name_width}}  quant   k  tok/fwd   tok/s  speedup  predicted  measured/pred  "
                "pred+heads  measured/pred+heads")
        lines += [head, "-" * len(head)]
        for m in with_ceiling:
            for c in m.ceiling:
                lines.append(f"{m.label:<{name_width}}  {m.quant:<6} {c.k:2d}  {c.tokens_per_forward:7.2f}  "
                             f"{c.tokens_per_s:6.1f}  {c.speedup:6.2f}x  {c.predicted:8.2f}x  {c.ratio:13.2f}  "
                             f"{c.predicted_with_heads:9.2f}x  {c.ratio_with_heads:19.2f}")
    lines += ["", f"peak resident memory: {report.build_peak_rss_bytes / 2**30:.2f} GiB up to the end of the builds, "
                  f"{report.peak_rss_bytes / 2**30:.2f} GiB over the run"]
    built = [m for m in report.models if m.built]
    if built:
        lines.append("built now: " + ", ".join(sorted({f"{m.label} ({Path(m.path).parent})" for m in built})))
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------
