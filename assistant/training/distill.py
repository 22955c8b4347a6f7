"""Self-distillation of the draft heads: each learns the model's own greedy tokens.

Speculative decoding accepts head i's draft at t exactly when it is the token the model
itself picks at t+i, so the target that raises acceptance is not the text's token x[t+i+1]
but the model's greedy token there: the argmax of head 1 at t+i. The trunk and head 1 stay
as they are (they make the targets); only heads 2..n learn. Per batch the model runs once
without a graph, giving what the draft heads read and its greedy tokens; then the draft
heads train through models.loss's memory-efficient forward/backward.

Mode "base-soft" gives each draft head the model's whole next-token distribution there
instead of its argmax (kept as its top K, temperature 1): a distribution says how close
the runners-up are, which the argmax alone does not, so each token carries more signal.

Two users: `models add-heads` (new heads for a plain base, assistant/training/heads.py) and
the trainer's `finetune="heads-distill"` (the heads of one of our models, e.g. in `tune`).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from models.loss import IGNORE_INDEX, HeadStats, SoftTargets, mtp_forward_backward
from models.transformer import MTPTransformer

# The model's greedy tokens (distillation), those only where the text took the model's own
# path (see head_targets), its top-K distributions, or the text's tokens.
TARGET_MODES = ("base", "base-path", "base-soft", "corpus")
DEFAULT_TOP_K = 32


class DraftHeads:
    """Heads 2..n of an MTPTransformer as the model mtp_forward_backward trains: its
    "trunk" is the identity on a precomputed input, its heads are extra_heads only."""

    def __init__(self, model: MTPTransformer):
        self.model, self.output = model, model.output
        self.n_future = model.n_future - 1

    def trunk(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def head_hidden(self, z: torch.Tensor, head: int) -> torch.Tensor:
        return self.model.block_hidden(z, head + 1)


@torch.no_grad()
def greedy_pass(model: MTPTransformer, tokens: torch.Tensor,
                top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """tokens (B, L) -> what the draft heads read (B, L, D), the model's greedy next token
    at every position (B, L), and with top_k its next-token distribution there as the top_k
    ids and their probabilities renormalised over them ((B, L, K) each; else None). The draft
    heads read z (the input of head 1's block), or with heads_read_final head 1's normed
    output. The logits are made a row at a time: (L, V) for a 128K vocabulary is already large."""
    z = model.trunk(tokens)
    hidden = model.head_hidden(z, 0)
    greedy, ids, probs = [], [], []
    for row in hidden:
        logits = model.output(row).float()
        greedy.append(logits.argmax(-1))
        if top_k:
            # The softmax of the top K logits is p_base restricted to them, renormalised.
            values, top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
            ids.append(top)
            probs.append(torch.softmax(values, dim=-1))
    top = (torch.stack(ids), torch.stack(probs)) if top_k else None
    return (hidden if model.config.heads_read_final else z), torch.stack(greedy), top


def head_targets(tokens: torch.Tensor, greedy: torch.Tensor, draft_heads: int, mode: str) -> torch.Tensor:
    """(B, draft_heads, L) targets: draft head j (predicting t+1+j) at position t gets the
    model's greedy token at t+1+j (greedy[t+j]), or with mode "corpus" the text's token
    x[t+1+j]; IGNORE_INDEX past the end of the window.

    Mode "base-path" keeps greedy[t+j] only where the text's tokens x[t+1..t+j] are the
    model's own greedy tokens. Decoding accepts head j's draft when it is the token the model
    picks after its own tokens g1..gj, and greedy[t+j] is that token only where the text
    went the model's way; elsewhere it answers a prefix the head cannot see."""
    B, L = tokens.shape
    targets = torch.full((B, draft_heads, L), IGNORE_INDEX, dtype=torch.long, device=tokens.device)
    # on_path[:, s]: the model's greedy token after position s is the text's x[s+1].
    on_path = torch.zeros((B, L), dtype=torch.bool, device=tokens.device)
    on_path[:, : L - 1] = greedy[:, : L - 1] == tokens[:, 1:]
    path = torch.ones_like(on_path)  # path[:, t]: x[t+1..t+j] all on the model's path
    for j in range(1, draft_heads + 1):
        if mode in ("base", "base-path"):
            targets[:, j - 1, : L - j] = greedy[:, j:]
            if mode == "base-path":
                path[:, : L - j] &= on_path[:, j - 1 : L - 1]
                targets[:, j - 1, : L - j][~path[:, : L - j]] = IGNORE_INDEX
        else:
            targets[:, j - 1, : L - j - 1] = tokens[:, j + 1 :]
    return targets


def soft_head_targets(ids: torch.Tensor, probs: torch.Tensor, draft_heads: int) -> SoftTargets:
    """The distributions of greedy_pass (B, L, K) as draft-head targets (B, draft_heads, L, K),
    shifted as head_targets shifts the greedy tokens: draft head j at t gets the model's
    distribution at t+j. Past the end of the window the rows are zeros (head_targets marks
    those positions IGNORE_INDEX)."""
    B, L, K = ids.shape
    out_ids = torch.zeros((B, draft_heads, L, K), dtype=ids.dtype, device=ids.device)
    out_probs = torch.zeros((B, draft_heads, L, K), dtype=probs.dtype, device=probs.device)
    for j in range(1, draft_heads + 1):
        out_ids[:, j - 1, : L - j] = ids[:, j:]
        out_probs[:, j - 1, : L - j] = probs[:, j:]
    return SoftTargets(out_ids, out_probs)


def distill_forward_backward(
    model: MTPTransformer,
    tokens: torch.Tensor,  # (B, L)
    mode: str = "base",
    head_weights: Sequence[float] | None = None,
    loss_scale: float = 1.0,
    autocast: contextlib.AbstractContextManager | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> HeadStats:
    """One batch for the draft heads: their gradients accumulate into `.grad`; the stats
    (n - 1 heads) count agreement with the targets (with mode "base-soft": with the model's
    greedy tokens, the loss being the KL from its top_k distribution)."""
    soft = mode == "base-soft"
    with autocast or contextlib.nullcontext():
        z, greedy, top = greedy_pass(model, tokens, top_k if soft else 0)
    n = model.n_future - 1
    targets = head_targets(tokens, greedy, n, "base" if soft else mode)
    return mtp_forward_backward(DraftHeads(model), z, targets, head_weights, loss_scale, train_trunk=False,
                                autocast=autocast, soft=soft_head_targets(*top, n) if soft else None)


@torch.no_grad()
def evaluate_agreement(model: MTPTransformer, windows: torch.Tensor, batch: int = 4, autocast=None) -> HeadStats:
    """Each draft head's mean loss against the model's greedy tokens over fixed windows
    (N, L), and its hits: the positions where its argmax is the model's token, which is
    what acceptance needs (HeadStats.accuracy is the agreement)."""
    was_training = model.training
    model.eval()
    n = model.n_future - 1
    loss_sum, hits, count = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    with autocast or contextlib.nullcontext():
        for start in range(0, len(windows), batch):
            tokens = windows[start : start + batch].to(model.output.weight.device)
            z, greedy, _ = greedy_pass(model, tokens)
            targets = head_targets(tokens, greedy, n, "base")
            for j in range(n):
                valid = targets[:, j] != IGNORE_INDEX
                for b in range(len(tokens)):
                    logits = model.output(model.block_hidden(z[b : b + 1], j + 1))[0].float()
                    t = targets[b, j][valid[b]]
                    rows = logits[valid[b]]
                    loss_sum[j] += float(torch.nn.functional.cross_entropy(rows, t, reduction="sum"))
                    hits[j] += float((rows.argmax(-1) == t).sum())
                    count[j] += float(valid[b].sum())
    model.train(was_training)
    return HeadStats(loss_sum / count.clamp(min=1), hits, count)


def agreement_record(stats: HeadStats) -> dict[str, list[float]]:
    """The metrics record of an evaluate_agreement."""
    return {"loss_per_head": stats.loss.tolist(), "agreement_per_head": stats.accuracy.tolist()}
