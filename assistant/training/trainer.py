"""The training loop: from scratch or fine-tuning, resumable, one process or torchrun.

Layout of an output directory:
    train_config.json   the settings of the run (a resumed run reads them back)
    metrics.jsonl       one JSON record per step and per evaluation
    checkpoint/         latest checkpoint: a loadable model directory + trainer_state.pt
    model/              the final model, written when the run completes
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from assistant.fim import FimConfig
from assistant.training.config import (  # noqa: F401  (re-exported: the trainer's public names)
    CHECKPOINT_DIR,
    FINAL_MODEL_DIR,
    METRICS_FILE,
    TRAIN_CONFIG_FILE,
    TRAINER_STATE_FILE,
    TrainConfig,
    TrainError,
)
from assistant.training.corpus import Corpus, CorpusConfig, CorpusError, build_corpus
from assistant.training.data import StepPrefetcher, WindowStream, evaluation_windows
from assistant.training.distill import agreement_record, distill_forward_backward, evaluate_agreement
from assistant.training.evaluation import evaluate
from assistant.training.distributed import average_gradients, init_world, shutdown, sum_across
from assistant.training.metrics import MetricsRecord, MetricsWriter, ProgressReporter
from models.checkpoint import ModelFileError, load_model, save_model, write_atomic
from models.config import PRESETS, ConfigError
from models.loss import mtp_forward_backward, split_window
from models.tokenizer import ByteTokenizer, train_bpe
from models.transformer import MTPTransformer


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --- setting up a run ---


@dataclass
class RunParts:
    model: MTPTransformer
    tokenizer: Any
    trainable: list[torch.nn.Parameter]
    provenance: dict[str, Any]


def _load_corpus(config: TrainConfig) -> Corpus:
    try:
        return build_corpus(config.repo, CorpusConfig(val_fraction=config.val_fraction))
    except CorpusError as e:
        raise TrainError(str(e)) from None


def _build_model(config: TrainConfig, corpus: Corpus, device: torch.device) -> RunParts:
    if config.base_model is not None:
        try:
            base = load_model(config.base_model)
        except ModelFileError as e:
            raise TrainError(f"base model: {e}") from None
        if config.model_overrides:
            raise TrainError("model settings cannot change when fine-tuning a base model")
        model, tokenizer = base.model, base.tokenizer
        if config.fim_rate > 0 and not tokenizer.has_fim:  # e.g. Meta's Llama 2 tokenizer
            raise TrainError(f"the base model's {tokenizer.kind} tokenizer has no FIM tokens: use --fim-rate 0")
        provenance = {"base_model": str(config.base_model), "base_provenance": base.provenance}
    else:
        if config.tokenizer == "bpe":
            tokenizer = train_bpe((f.text for f in corpus.train), config.bpe_vocab_size)
        else:
            tokenizer = ByteTokenizer()
        try:
            model_config = PRESETS[config.preset].replace(vocab_size=tokenizer.vocab_size, **config.model_overrides)
        except (ConfigError, TypeError) as e:
            raise TrainError(f"model settings: {e}") from None
        torch.manual_seed(config.seed)
        model = MTPTransformer(model_config)
        provenance = {}
    if config.seq_len > model.config.max_seq_len:
        raise TrainError(f"seq_len {config.seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}")
    if config.finetune == "heads-distill" and model.n_future < 2:
        raise TrainError("the base model has one head: there are no draft heads to distill (finetune heads-distill)")
    if config.head_weights is not None and len(config.head_weights) != model.n_future:
        raise TrainError(f"{len(config.head_weights)} head weights given for a model with {model.n_future} heads")
    model.to(device).train()
    trainable = _set_trainable(model, config.finetune)
    provenance |= {
        "trained_by": "mtp-assistant train",
        "repo": str(Path(config.repo).resolve()),
        "finetune": config.finetune if config.base_model else None,
        "tokenizer": tokenizer.kind,
        "corpus": corpus.summary(),
    }
    return RunParts(model, tokenizer, trainable, provenance)


def _optimizer(params: list[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Decay matrices only; norms' gains stay free.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # One fused kernel on a GPU instead of a few per parameter (a small model's step is launch-bound).
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda")


# --- checkpoints ---


def _save_checkpoint(
    out: Path, parts: RunParts, optimizer, stream_state: dict, step: int, provenance: dict, tokens_per_step: int
) -> None:
    """Write the checkpoint beside the old one, then swap: a crash leaves one intact."""
    tmp, final, old = out / f"{CHECKPOINT_DIR}.tmp", out / CHECKPOINT_DIR, out / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(tmp, parts.model, parts.tokenizer, provenance | {"steps": step, "tokens_seen": step * tokens_per_step})
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "data": stream_state,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    torch.save(state, tmp / TRAINER_STATE_FILE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _find_checkpoint(out: Path) -> Path | None:
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):  # .old: a crash between the two renames
        if (out / name / TRAINER_STATE_FILE).is_file():
            return out / name
    return None


# --- the loop ---


def train(
    config: TrainConfig | None = None,
    resume_dir: str | Path | None = None,
    on_step: Callable[[int, MetricsRecord], None] | None = None,
    show_progress: bool = True,
) -> Path:
    """Run (or resume) training; returns the final model directory.

    Give `config` for a new run, or `resume_dir` to continue the run there from its last
    checkpoint with its saved settings. `on_step(step, record)` is called after every
    optimizer step (the TUI and tests hook in here).
    """
    if resume_dir is not None:
        out = Path(resume_dir)
        try:
            config = TrainConfig.from_json(json.loads((out / TRAIN_CONFIG_FILE).read_text()))
        except FileNotFoundError:
            raise TrainError(f"{out / TRAIN_CONFIG_FILE}: missing, nothing to resume") from None
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise TrainError(f"{out / TRAIN_CONFIG_FILE}: unreadable ({e})") from None
        except TrainError as e:
            raise TrainError(f"{out / TRAIN_CONFIG_FILE}: {e}") from None
        checkpoint = _find_checkpoint(out)
        if checkpoint is None:
            raise TrainError(f"{out}: no checkpoint to resume from")
    else:
        assert config is not None, "give a config or a directory to resume"
        out = Path(config.out_dir)
        if (out / TRAIN_CONFIG_FILE).exists():
            raise TrainError(f"{out} already holds a run: resume it with --resume {out} or pick another --out")
        checkpoint = None

    device = resolve_device(config.device)
    world = init_world(device.type)
    if config.batch_size % (world.size * config.grad_accum):
        raise TrainError(f"batch_size {config.batch_size} must divide by ranks x grad_accum ({world.size * config.grad_accum})")
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)

    created_out = not out.exists()
    try:
        corpus = _load_corpus(config)
        if checkpoint is not None:
            parts = _build_resumed(config, load_model(checkpoint), device)
        else:
            parts = _build_model(config, corpus, device)
    except BaseException:
        if created_out and world.is_main:
            shutil.rmtree(out, ignore_errors=True)  # leave nothing half-written behind
        shutdown(world)
        raise

    model, tokenizer = parts.model, parts.tokenizer
    if show_progress and world.is_main:
        print(describe_run(corpus, model, tokenizer), file=sys.stderr)
    optimizer = _optimizer(parts.trainable, config, device)
    fim = FimConfig(rate=config.fim_rate, spm_rate=config.spm_rate)
    lanes = config.window_lanes or config.batch_size // config.grad_accum
    stream = WindowStream(
        training_texts(corpus, config.file_weights), tokenizer, config.seq_len, model.n_future, config.seed, fim, lanes=lanes,
        workers=config.data_workers,
    )
    val_texts = [f.text for f in corpus.val] or [f.text for f in corpus.train]  # a one-file repo validates on itself
    val_windows = evaluation_windows(val_texts, tokenizer, config.seq_len, model.n_future, config.eval_windows)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    # Distillation scores heads 2..n against the model's greedy tokens: its per-head figures are
    # agreement, and its validation loss is theirs (what picks a checkpoint).
    distill = config.finetune == "heads-distill"
    scored_heads = model.n_future - 1 if distill else model.n_future
    hits_key = "agreement_per_head" if distill else "accuracy_per_head"

    start_step = 0
    if checkpoint is not None:
        state = torch.load(checkpoint / TRAINER_STATE_FILE, weights_only=True)
        start_step = int(state["step"])
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["data"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_as_python_rng_state(state["python_rng"]))

    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / TRAIN_CONFIG_FILE, (json.dumps(config.to_json(), indent=2) + "\n").encode())
    metrics = MetricsWriter(out / METRICS_FILE, enabled=world.is_main, truncate_after_step=start_step)
    last_step = config.stop_after or config.steps
    progress = ProgressReporter(last_step, start_step, enabled=show_progress and world.is_main)
    local_batch = config.batch_size // (world.size * config.grad_accum)
    # With data workers (a GPU run) the next step's windows are made while this one computes.
    prefetch = StepPrefetcher(stream, config.grad_accum, config.batch_size // config.grad_accum) \
        if config.data_workers else None

    try:
        with progress:
            for step in range(start_step, last_step):
                t0 = time.perf_counter()
                lr = learning_rate(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                stats_sum = torch.zeros(3, scored_heads)
                checkpointing = world.is_main and ((step + 1) % config.checkpoint_every == 0 or step + 1 == last_step)
                if prefetch is not None:
                    micro_batches = prefetch.take(save_state=checkpointing)
                else:
                    micro_batches = (stream.next_windows(config.batch_size // config.grad_accum)
                                     for _ in range(config.grad_accum))
                for windows in micro_batches:
                    # Every rank reads the same global windows and keeps its own rows.
                    rows = windows[world.rank * local_batch : (world.rank + 1) * local_batch].to(device)
                    # Distillation reads the same seq_len inputs: a longer window would not fit the
                    # context of a model tuned at its max_seq_len; its targets are the model's own.
                    inputs, targets = split_window(rows, model.n_future)
                    if distill:
                        stats = distill_forward_backward(
                            model, inputs, head_weights=config.head_weights and config.head_weights[1:],
                            loss_scale=1.0 / config.grad_accum, autocast=autocast,
                        )
                    else:
                        stats = mtp_forward_backward(
                            model,
                            inputs,
                            targets,
                            config.head_weights,
                            loss_scale=1.0 / config.grad_accum,
                            train_trunk=config.finetune == "full",
                            autocast=autocast,
                        )
                    stats_sum += torch.stack([stats.loss.cpu() * stats.count.cpu(), stats.correct.cpu(), stats.count.cpu()])
                average_gradients(parts.trainable, world)
                grad_norm = torch.nn.utils.clip_grad_norm_(parts.trainable, config.grad_clip or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

                stats_sum = sum_across(stats_sum, world)
                seconds = time.perf_counter() - t0
                record = MetricsRecord(
                    step=step + 1,
                    split="train",
                    lr=lr,
                    loss=float((stats_sum[0] / stats_sum[2]).sum()),
                    loss_per_head=(stats_sum[0] / stats_sum[2]).tolist(),
                    **{hits_key: (stats_sum[1] / stats_sum[2]).tolist()},
                    grad_norm=float(grad_norm),
                    tokens_per_s=float(stats_sum[2, 0]) / seconds,
                    time=time.time(),
                )
                metrics.write(record.to_dict())
                done = step + 1
                if done % config.eval_every == 0 or done == last_step:
                    if distill:
                        val = evaluate_agreement(model, split_window(val_windows, model.n_future)[0], autocast=autocast)
                        per_head = agreement_record(val)
                    else:
                        val = evaluate(model, val_windows, autocast=autocast)
                        per_head = {"loss_per_head": val.loss.tolist(), "accuracy_per_head": val.accuracy.tolist()}
                    val_record = MetricsRecord(step=done, split="val", loss=float(val.loss.sum()), **per_head,
                                               time=time.time())
                    metrics.write(val_record.to_dict())
                    progress.note(val_record)
                if checkpointing:
                    stream_state = prefetch.saved_state if prefetch is not None else stream.state_dict()
                    _save_checkpoint(
                        out, parts, optimizer, stream_state, done, parts.provenance, config.batch_size * config.seq_len
                    )
                progress.advance(record)
                if on_step is not None:
                    on_step(done, record)
    finally:
        if prefetch is not None:
            prefetch.close()
        stream.close()
        metrics.close()
        shutdown(world)

    final = out / FINAL_MODEL_DIR
    if world.is_main:
        tmp = out / f"{FINAL_MODEL_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out / CHECKPOINT_DIR, tmp, ignore=shutil.ignore_patterns(TRAINER_STATE_FILE))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


def training_texts(corpus: Corpus, file_weights: dict[str, int]) -> list[str]:
    """The training files' texts, each as many times as its weight (default once) an epoch."""
    return [f.text for f in corpus.train for _ in range(file_weights.get(f.path, 1))]


def describe_run(corpus: Corpus, model: MTPTransformer, tokenizer: Any) -> str:
    summary = corpus.summary()
    skipped = ", ".join(f"{reason} {count}" for reason, count in summary["skipped"].items() if count)
    return (
        f"corpus: {summary['train']['files']} train files ({summary['train']['bytes'] / 1e3:.0f} kB), "
        f"{summary['val']['files']} validation files ({summary['val']['bytes'] / 1e3:.0f} kB); "
        f"skipped: {skipped or 'nothing'}\n"
        f"model: {model.num_parameters() / 1e6:.2f}M parameters, {model.n_future} heads, "
        f"{model.config.n_layers} blocks of dim {model.config.dim}, {tokenizer.kind} tokenizer ({tokenizer.vocab_size} tokens)"
    )


def _set_trainable(model: MTPTransformer, finetune: str) -> list[torch.nn.Parameter]:
    """Freeze what the run does not train; return the parameters it does, in a fixed order."""
    blocks = model.extra_heads if finetune == "heads-distill" else model.head_blocks()
    head_params = {id(p) for block in blocks for p in block.parameters()}
    for p in model.parameters():
        p.requires_grad_(finetune == "full" or id(p) in head_params)
    return [p for p in model.parameters() if p.requires_grad]


def _build_resumed(config: TrainConfig, loaded, device: torch.device) -> RunParts:
    """Parts of a resumed run: the checkpoint's weights and tokenizer, the run's freezing."""
    model = loaded.model.to(device).train()
    return RunParts(model, loaded.tokenizer, _set_trainable(model, config.finetune), dict(loaded.provenance))


def _as_python_rng_state(state) -> tuple:
    # torch.load returns the tuple as saved; lists only if a future format changes that.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
