"""Per-head validation loss and top-1 accuracy."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from assistant.errors import UserError
from assistant.training.corpus import CorpusConfig, build_corpus
from assistant.training.data import evaluation_windows
from models.checkpoint import load_model
from models.loss import HeadStats, mtp_loss, split_window
from models.transformer import MTPTransformer


@torch.no_grad()
def evaluate(model: MTPTransformer, windows: torch.Tensor, batch_size: int = 8, autocast=None) -> HeadStats:
    """Per-head mean loss and top-1 accuracy over fixed windows (N, T + n)."""
    was_training = model.training
    model.eval()
    device = model.output.weight.device
    total_loss = torch.zeros(model.n_future)
    correct = torch.zeros(model.n_future)
    count = torch.zeros(model.n_future)
    for start in range(0, len(windows), batch_size):
        inputs, targets = split_window(windows[start : start + batch_size].to(device), model.n_future)
        with autocast or contextlib.nullcontext():
            _, stats = mtp_loss(model, inputs, targets)
        total_loss += stats.loss.cpu() * stats.count.cpu()
        correct += stats.correct.cpu()
        count += stats.count.cpu()
    model.train(was_training)
    return HeadStats(total_loss / count.clamp(min=1), correct, count)


@dataclass
class RepoEvaluation:
    stats: HeadStats
    files: int
    tokens: int


def evaluate_on_repo(
    model_dir: Path | str,
    repo: Path | str,
    split: str = "val",
    seq_len: int = 256,
    max_windows: int = 64,
    val_fraction: float = 0.1,
    device: str = "cpu",
) -> RepoEvaluation:
    """Evaluate a saved model on a repository's validation split (or "train" or "all").

    The split is the same deterministic by-file split training uses, so "val" holds
    files a model trained on this repo with the same val_fraction never saw.
    """
    loaded = load_model(model_dir, device=device)
    corpus = build_corpus(repo, CorpusConfig(val_fraction=val_fraction))
    files = {"val": corpus.val, "train": corpus.train, "all": corpus.train + corpus.val}[split]
    if not files:
        raise UserError(f"the {split} split of {repo} is empty (try --split all)")
    seq_len = min(seq_len, loaded.config.max_seq_len)
    windows = evaluation_windows([f.text for f in files], loaded.tokenizer, seq_len, loaded.model.n_future, max_windows)
    stats = evaluate(loaded.model, windows)
    return RepoEvaluation(stats, len(files), int(stats.count[0]))
