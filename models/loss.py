"""The multi-token-prediction loss: the sum over heads of next-i-token cross-entropies.

Two ways to get the same gradients:

* `mtp_loss`: one autograd graph through all heads. Simple, but every head's logits
  (B, T, V) are alive at once at backward time: O(n V) memory.
* `mtp_forward_backward`: the paper's memory-efficient order (Sec. 2, Fig. 2). Run the
  trunk once, detach its output z, then run each head's forward *and* backward in turn,
  accumulating the gradient at z and freeing that head's logits before the next head;
  finally backpropagate the trunk once with the accumulated gradient. O(V) logit memory.

Its targets are tokens, or (distillation) a teacher's distribution per head and position,
`SoftTargets`: each head then learns KL(p_teacher || q_head), the cross-entropy against
p_teacher less its constant entropy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from models.transformer import MTPTransformer

IGNORE_INDEX = -100


def split_window(window: torch.Tensor, n_future: int) -> tuple[torch.Tensor, torch.Tensor]:
    """window (B, T + n) -> inputs (B, T) and targets (B, n, T), targets[:, i, t] = x[t + i + 1]."""
    T = window.shape[1] - n_future
    if T <= 0:
        raise ValueError(f"window of {window.shape[1]} tokens is too short for {n_future} future tokens")
    targets = torch.stack([window[:, i + 1 : i + 1 + T] for i in range(n_future)], dim=1)
    return window[:, :T], targets


def _weights(head_weights: Sequence[float] | None, n: int) -> list[float]:
    if head_weights is None:
        return [1.0] * n
    if len(head_weights) != n:
        raise ValueError(f"{len(head_weights)} head weights given for {n} heads")
    return [float(w) for w in head_weights]


@dataclass
class HeadStats:
    """Per-head results of one forward/backward, detached."""

    loss: torch.Tensor  # (n,) mean cross-entropy of each head (unweighted)
    correct: torch.Tensor  # (n,) number of top-1 hits
    count: torch.Tensor  # (n,) number of scored positions

    @property
    def total_loss(self) -> float:
        return float(self.loss.sum())

    @property
    def accuracy(self) -> torch.Tensor:
        return self.correct / self.count.clamp(min=1)


@dataclass
class SoftTargets:
    """A teacher's next-token distribution per head and position, kept as its top K: the
    token ids and their probabilities renormalised over those K (a (B, n, T, V) tensor would
    not fit for a 128K vocabulary). Positions whose token target is IGNORE_INDEX are not scored."""

    ids: torch.Tensor  # (B, n, T, K) long
    probs: torch.Tensor  # (B, n, T, K) float; each scored row sums to 1


def _soft_head_loss(logits: torch.Tensor, target: torch.Tensor, ids: torch.Tensor,
                    probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (B, T, V), target (B, T) (the teacher's top token: what agreement counts, and
    which positions count), ids/probs (B, T, K) -> mean KL(p || q), top-1 hits, scored count."""
    valid = target != IGNORE_INDEX
    # At least float32 (half-precision logits under autocast), without narrowing a double.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_q = torch.log_softmax(logits.to(dtype), dim=-1).gather(-1, ids)  # (B, T, K)
    p = probs.to(dtype)
    # xlogy: a zero probability (a padded row) adds 0, not 0 * -inf.
    kl = (torch.xlogy(p, p) - p * log_q).sum(-1)
    count = valid.sum()
    loss = torch.where(valid, kl, 0.0).sum() / count.clamp(min=1)
    with torch.no_grad():
        correct = ((logits.argmax(-1) == target) & valid).sum()
    return loss, correct, count


def _head_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (B, T, V), target (B, T) -> mean loss, top-1 hits, scored count."""
    valid = target != IGNORE_INDEX
    count = valid.sum()
    # A sum over the count rather than the mean: no scored row gives a loss of 0, not NaN.
    loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum") / count.clamp(min=1)
    with torch.no_grad():
        correct = ((logits.argmax(-1) == target) & valid).sum()
    return loss, correct, count


def mtp_loss(
    model: MTPTransformer,
    inputs: torch.Tensor,  # (B, T)
    targets: torch.Tensor,  # (B, n, T)
    head_weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, HeadStats]:
    """Naive MTP loss with one graph through all heads: returns (weighted sum, stats)."""
    weights = _weights(head_weights, model.n_future)
    logits = model(inputs)  # (B, n, T, V)
    parts = [_head_loss(logits[:, i], targets[:, i]) for i in range(model.n_future)]
    total = sum(w * loss for w, (loss, _, _) in zip(weights, parts))
    stats = HeadStats(*(torch.stack([p[j].detach().float() for p in parts]) for j in range(3)))
    return total, stats


def mtp_forward_backward(
    model: MTPTransformer,
    inputs: torch.Tensor,  # (B, T)
    targets: torch.Tensor,  # (B, n, T)
    head_weights: Sequence[float] | None = None,
    loss_scale: float = 1.0,
    train_trunk: bool = True,
    autocast: contextlib.AbstractContextManager | None = None,
    soft: SoftTargets | None = None,
) -> HeadStats:
    """Memory-efficient MTP forward and backward; gradients accumulate into `.grad`.

    Gradients equal those of `(loss_scale * mtp_loss(...)[0]).backward()`.
    `loss_scale` serves gradient accumulation over micro-batches; `train_trunk=False`
    (fine-tuning the heads only) runs the trunk without a graph and skips its backward.
    With `soft`, each head's loss is its mean KL from the teacher's distribution instead
    (targets then mark the scored positions and give the token agreement counts).
    """
    weights = _weights(head_weights, model.n_future)
    autocast = autocast or contextlib.nullcontext()
    with autocast, torch.set_grad_enabled(train_trunk):
        z = model.trunk(inputs)  # (B, T, D)
    # The heads see a leaf copy of z: each head's backward stops here and adds to z_leaf.grad.
    z_leaf = z.detach().requires_grad_(train_trunk)

    losses, corrects, counts = [], [], []
    for head, weight in enumerate(weights):
        if soft is None:
            # Only the scored rows reach the output matrix: a head whose targets are mostly
            # IGNORE_INDEX (path-masked distillation) then pays for the rows it learns from.
            target = targets[:, head]  # (B, T)
            valid = target != IGNORE_INDEX
            with autocast:
                hidden = model.head_hidden(z_leaf, head)  # (B, T, D)
                logits = model.output(hidden[valid])[None]  # (1, N, V)
            loss, correct, count = _head_loss(logits, target[valid][None])
        else:
            with autocast:
                logits = model.output(model.head_hidden(z_leaf, head))  # (B, T, V)
            loss, correct, count = _soft_head_loss(logits, targets[:, head], soft.ids[:, head], soft.probs[:, head])
        # Autograd keeps what it needs (the log-probabilities); holding the logits
        # through the backward would add a second (B, T, V) tensor to the peak.
        del logits
        (loss * (weight * loss_scale)).backward()
        losses.append(loss.detach().float())
        corrects.append(correct.float())
        counts.append(count.float())

    if train_trunk:
        z.backward(z_leaf.grad)
    return HeadStats(torch.stack(losses), torch.stack(corrects), torch.stack(counts))
