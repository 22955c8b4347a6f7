"""New heads for a plain base model, trained by self-distillation.

New head i (predicting t+i) is trained to agree with the base, not with the corpus: its
target at position t is the base's own greedy token at t+i, where the text up to there is
what the base itself would have written (`targets="base-path"`, the default), at every
position (`"base"`), or with `targets="base-soft"` the base's whole next-token distribution
there (its top `soft_top_k`); `targets="corpus"` trains on the text instead; the batch and
the targets are made as assistant/training/distill.py says.

Time-boxed (`minutes`, the total over resumes) and resumable: the run directory holds

    heads_config.json    the run's settings (a rerun with the same ones resumes)
    heads_checkpoint.pt  the new heads' weights, optimizer, data position, elapsed time
    metrics.jsonl        one record per step and per evaluation
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from assistant.fim import FimConfig
from assistant.training.corpus import CorpusConfig, CorpusError, build_corpus
from assistant.training.data import WindowStream, evaluation_windows
from assistant.training.distill import DEFAULT_TOP_K, TARGET_MODES, agreement_record, distill_forward_backward, evaluate_agreement
from assistant.training.metrics import MetricsWriter
from models.base_import import Base, build_model, read_base, sha256_files
from models.checkpoint import write_atomic
from models.transformer import MTPTransformer

# Heads trained on ~3 passes of a 2.8 MB corpus lost 4-11% of their tokens per forward on code outside it
# against heads that read 22 MB under once (BENCHMARKS.md, "A broad corpus").
REPEATED_CORPUS_PASSES = 1.5

CONFIG_FILE = "heads_config.json"
CHECKPOINT_FILE = "heads_checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


class HeadsError(Exception):
    """A heads run that cannot start or continue; one line for the user."""


class HeadsStopped(Exception):
    """The run stopped when asked to, with a checkpoint: running it again resumes it."""

    def __init__(self, run_dir: Path, step: int, seconds: float):
        super().__init__(f"stopped at step {step} ({seconds / 60:.1f} min); the run in {run_dir} resumes from there")
        self.run_dir, self.step, self.seconds = run_dir, step, seconds


@dataclass(frozen=True)
class HeadsConfig:
    base: str  # a GGUF file or a Hugging Face directory
    # Repositories or directories, read with the training corpus rules and mixed. A broad
    # mix generalises: heads trained 30 minutes on 22 MB of varied Python beat the same
    # minutes on 2.8 MB of it on code neither saw (BENCHMARKS.md).
    corpus: tuple[str, ...]
    run_dir: str
    new_heads: int = 3
    minutes: float = 10.0  # training time over all resumes
    # "base-path": self-distillation on the base's greedy tokens where the text went the base's
    # way (10 minutes on broad code: 1.97 tokens per forward where "base", all of its greedy
    # tokens, gave 1.83; BENCHMARKS.md); "base": on all of them; "base-soft": on its next-token
    # distributions (KL from their top soft_top_k); "corpus": the text's own next tokens.
    targets: str = "base-path"
    soft_top_k: int = DEFAULT_TOP_K
    seq_len: int = 256
    batch_size: int = 8
    # Heads-only from the base's last block: in 12 minutes of stdlib self-distillation 3e-3
    # reached agreement 0.44/0.32/0.21 where 1e-3 reached 0.36/0.24/0.14 (BENCHMARKS.md).
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    grad_clip: float = 1.0
    max_seq_len: int | None = None  # the new model's context (default: the base's, at most 4096)
    tokenizer_from: str | None = None  # a model directory whose tokenizer a GGUF export of ours used
    eval_windows: int = 8
    checkpoint_seconds: float = 60.0
    max_steps: int | None = None  # stop after this many steps even with time left
    seed: int = 0
    device: str = "auto"
    # New heads read the base's final hidden state (None: as the base's architecture needs
    # for the llama.cpp engine, gguf_export.FINAL_HIDDEN_ARCHS).
    heads_read_final: bool | None = None

    def __post_init__(self) -> None:
        # One path (as run settings written before mixes existed have it) or a list from JSON.
        object.__setattr__(self, "corpus", (self.corpus,) if isinstance(self.corpus, str) else tuple(self.corpus))
        checks = {
            "corpus": len(self.corpus) > 0,
            "new_heads": 1 <= self.new_heads <= 16,
            "minutes": self.minutes > 0,
            "targets": self.targets in TARGET_MODES,
            "soft_top_k": self.soft_top_k > 0,
            "seq_len": self.seq_len > 0,
            "batch_size": self.batch_size > 0,
            "lr": self.lr > 0,
            "eval_windows": self.eval_windows > 0,
            "max_steps": self.max_steps is None or self.max_steps > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise HeadsError(f"invalid setting {bad[0]}={getattr(self, bad[0])!r}")

    def resumable_from(self, other: "HeadsConfig") -> bool:
        """Whether a run with `other`'s settings can continue as this one (only the time and
        step budgets may change)."""
        ignore = {"minutes", "max_steps", "checkpoint_seconds", "device"}
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return all(mine[k] == theirs[k] for k in mine if k not in ignore)


def _learning_rate(progress: float, step: int, config: HeadsConfig) -> float:
    """Linear warmup over steps, then cosine decay over the run's time budget."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def evaluate_heads(model: MTPTransformer, windows: torch.Tensor) -> dict[str, list[float]]:
    """Each new head's loss against the base's greedy tokens and its agreement with them."""
    return agreement_record(evaluate_agreement(model, windows))


@dataclass
class HeadsResult:
    model: MTPTransformer
    base: Base
    fingerprint: str
    steps: int
    seconds: float
    first_eval: dict[str, list[float]]
    final_eval: dict[str, list[float]]
    corpus_passes: float  # the tokens trained on over the corpus's (estimated) tokens

    def corpus_note(self) -> str | None:
        """What to do about a corpus read many times, for the user; None when it was not."""
        if self.corpus_passes < REPEATED_CORPUS_PASSES:
            return None
        return (f"the heads read their corpus {self.corpus_passes:.1f} times and learn its habits, so on other code "
                "they agree less: mixing in broad code (another --data, e.g. the Python standard library) carries "
                "further (README, 'Bring your own model')")

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "minutes": self.seconds / 60, "corpus_passes": self.corpus_passes,
                "before": self.first_eval, "after": self.final_eval}


def read_corpora(roots: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The training and validation texts of every root, mixed (a text in two roots once).
    The validation texts take each root's in turn, so the first windows sample them all."""
    train: list[str] = []
    vals: list[list[str]] = []
    seen: set[str] = set()
    for root in roots:
        try:
            corpus = build_corpus(root, CorpusConfig(val_fraction=0.05))
        except CorpusError as e:
            raise HeadsError(str(e)) from None
        train += [f.text for f in corpus.train if f.text not in seen]
        vals.append([f.text for f in corpus.val if f.text not in seen])
        seen.update(f.text for f in corpus.train + corpus.val)
    val = [text for group in itertools.zip_longest(*vals) for text in group if text is not None]
    return train, val or train


def corpus_tokens(texts: list[str], tokenizer, sample_chars: int = 50_000) -> float:
    """The texts' length in tokens, from the characters per token of their first sample_chars
    (tokenizing a whole large corpus up front would take minutes)."""
    total = sum(len(text) for text in texts)
    sample = ""
    for text in texts:
        if len(sample) >= sample_chars:
            break
        sample += text[: sample_chars - len(sample)]
    return max(1.0, total * len(tokenizer.encode(sample)) / max(1, len(sample)))


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _read_run(run_dir: Path, config: HeadsConfig) -> dict[str, Any] | None:
    """The checkpoint of an earlier run of these settings in run_dir, or None for a new run."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        earlier = HeadsConfig(**json.loads(config_path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise HeadsError(f"{config_path}: unreadable ({e})") from None
    if not config.resumable_from(earlier):
        raise HeadsError(f"{run_dir} holds a heads run with other settings: pick another run directory")
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise HeadsError(f"{path}: unreadable checkpoint ({e})") from None


def _save(run_dir: Path, model: MTPTransformer, optimizer, stream: WindowStream, step: int, seconds: float,
          fingerprint: str, first_eval: dict) -> None:
    state = {
        "step": step,
        "seconds": seconds,
        "base_sha256": fingerprint,
        "first_eval": first_eval,
        "heads": {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("extra_heads.")},
        "optimizer": optimizer.state_dict(),
        "data": stream.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    tmp = run_dir / f".{CHECKPOINT_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, run_dir / CHECKPOINT_FILE)


class _Progress:
    """A bar over the time budget on a terminal; a line per checkpoint otherwise."""

    def __init__(self, total_s: float, done_s: float, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=sys.stderr)
        self.enabled, self.plain = enabled, enabled and not console.is_terminal
        self._bar = Progress(TextColumn("[bold]heads"), BarColumn(), TextColumn("{task.fields[info]}"),
                             TimeRemainingColumn(), console=console, disable=not enabled or self.plain)
        self._task = self._bar.add_task("heads", total=total_s, completed=done_s, info="")

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def update(self, seconds: float, info: str, line: bool = False) -> None:
        self._bar.update(self._task, completed=seconds, info=info)
        if self.plain and line:
            print(f"heads: {seconds / 60:.1f} min {info}", file=sys.stderr, flush=True)


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def train_heads(
    config: HeadsConfig,
    show_progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    base: Base | None = None,
    stop: threading.Event | None = None,
) -> HeadsResult:
    """Read the base, add config.new_heads heads, train them until the time (or step)
    budget is spent; resumes from run_dir's checkpoint when there is one. on_step gets each
    train record (its "seconds" against config.minutes is the progress). When `stop` is set
    the run ends after the step in progress, saves its checkpoint and raises HeadsStopped."""
    run_dir = Path(config.run_dir)
    checkpoint = _read_run(run_dir, config)
    train_texts, val_texts = read_corpora(config.corpus)
    base = base or read_base(config.base, config.max_seq_len, config.tokenizer_from)
    fingerprint = sha256_files(base.files)
    if checkpoint is not None and checkpoint["base_sha256"] != fingerprint:
        raise HeadsError(f"{config.base} changed since the run in {run_dir} started: pick another run directory")
    if config.seq_len + config.new_heads + 1 > base.config.max_seq_len:
        raise HeadsError(f"seq_len {config.seq_len} does not fit the model's context of {base.config.max_seq_len}")

    device = _device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(base, config.new_heads, heads_read_final=config.heads_read_final).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [p for block in model.extra_heads for p in block.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)

    tokenizer = base.tokenizer
    fim = FimConfig(rate=0.5 if tokenizer.has_fim else 0.0)
    window = config.seq_len + config.new_heads  # the stream adds n_future tokens to seq_len
    stream = WindowStream(train_texts, tokenizer, config.seq_len, config.new_heads, config.seed,
                          fim, lanes=config.batch_size)
    val = evaluation_windows(val_texts, tokenizer, config.seq_len, config.new_heads, config.eval_windows)

    step, seconds = 0, 0.0
    if checkpoint is not None:
        model.load_state_dict({**model.state_dict(), **{k: v.to(device) for k, v in checkpoint["heads"].items()}})
        optimizer.load_state_dict(checkpoint["optimizer"])
        stream.load_state_dict(checkpoint["data"])
        torch.set_rng_state(checkpoint["torch_rng"])
        version, internal, gauss = checkpoint["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        step, seconds, first_eval = int(checkpoint["step"]), float(checkpoint["seconds"]), checkpoint["first_eval"]
    else:
        model.eval()
        first_eval = evaluate_heads(model, val)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / CONFIG_FILE, (json.dumps(dataclasses.asdict(config), indent=2) + "\n").encode())
    metrics = MetricsWriter(run_dir / METRICS_FILE, truncate_after_step=step)
    if checkpoint is None:
        metrics.write({"step": 0, "split": "val", **first_eval, "time": time.time()})

    budget = config.minutes * 60
    last_save = seconds
    try:
        with _Progress(budget, seconds, show_progress) as progress:
            while seconds < budget and (config.max_steps is None or step < config.max_steps):
                if stop is not None and stop.is_set():
                    break
                t0 = time.perf_counter()
                lr = _learning_rate(seconds / budget, step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                tokens = stream.next_windows(config.batch_size)[:, :window].to(device)
                stats = distill_forward_backward(model, tokens, config.targets, top_k=config.soft_top_k)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seconds += time.perf_counter() - t0
                record = {"step": step, "split": "train", "lr": lr, "loss_per_head": stats.loss.tolist(),
                          "agreement_per_head" if config.targets != "corpus" else "accuracy_per_head":
                              stats.accuracy.tolist(), "grad_norm": float(grad_norm), "seconds": seconds}
                metrics.write(record)
                save = seconds - last_save >= config.checkpoint_seconds
                if save:
                    _save(run_dir, model, optimizer, stream, step, seconds, fingerprint, first_eval)
                    last_save = seconds
                progress.update(seconds, f"step {step} loss {_fmt(stats.loss.tolist())} "
                                         f"agree {_fmt(stats.accuracy.tolist())}", line=save)
                if on_step is not None:
                    on_step(step, record)
    finally:
        stream.close()
    _save(run_dir, model, optimizer, stream, step, seconds, fingerprint, first_eval)
    if stop is not None and stop.is_set():
        metrics.close()
        raise HeadsStopped(run_dir, step, seconds)
    model.eval()
    final_eval = evaluate_heads(model, val)
    metrics.write({"step": step, "split": "val", **final_eval, "time": time.time()})
    metrics.close()
    for p in model.parameters():
        p.requires_grad_(False)
    passes = step * config.batch_size * config.seq_len / corpus_tokens(train_texts, tokenizer)
    return HeadsResult(model.cpu(), base, fingerprint, step, seconds, first_eval, final_eval, passes)


def heads_provenance(config: HeadsConfig, result: HeadsResult) -> dict[str, Any]:
    return {
        "made_by": "mtp-assistant models add-heads",
        "new_heads": config.new_heads,
        "heads_training": {
            "targets": {"base": "the base's greedy tokens (self-distillation)",
                        "base-path": "the base's greedy tokens where the text took its path (self-distillation)",
                        "base-soft": f"the base's next-token distributions, top {config.soft_top_k} "
                                     "(self-distillation)",
                        "corpus": "the corpus"}[config.targets],
            "corpus": [str(Path(root).resolve()) for root in config.corpus],
            "seq_len": config.seq_len,
            "batch_size": config.batch_size,
            "lr": config.lr,
            **result.summary(),
        },
    }


def add_heads(config: HeadsConfig, out_dir: Path | str, show_progress: bool = True,
              on_step: Callable[[int, dict], None] | None = None,
              stop: threading.Event | None = None) -> tuple[Path, HeadsResult]:
    """train_heads, then the model directory at out_dir (models.base_import.write_model_dir)."""
    from models.base_import import write_model_dir

    result = train_heads(config, show_progress, on_step, stop=stop)
    path = write_model_dir(result.base, result.model, out_dir, heads_provenance(config, result), result.fingerprint)
    return path, result
