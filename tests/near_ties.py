"""Greedy decoding compared across engines or precisions, near-ties allowed for.

Two correct implementations that round differently (torch fp32 and llama.cpp f16, say)
may put two logits within rounding of each other in either order, and from that token on
their greedy sequences part for good. So instead of comparing whole sequences, each token
one engine chose is checked against a reference model teacher-forced on that engine's own
output: where the reference's top-2 margin is clear of the tolerance, the token must be
the reference's argmax; where it is not, the position is a near-tie and is skipped. The
caller bounds how many positions may be skipped, so a test cannot pass by skipping all.

Comparisons of one engine at one precision with itself (speculative against plain
decoding) stay exact: that is the engine's guarantee, and these helpers are not for it.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# The reference's head-1 logits, (T, V), for a whole sequence of token ids.
Logits = Callable[[Sequence[int]], torch.Tensor]


def model_logits(model) -> Logits:
    """Head-1 logits of an MTPTransformer, in its own dtype, for one sequence."""

    def logits(tokens: Sequence[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([list(tokens)]), heads=(0,))[0, 0].float()

    return logits


def _margin(row: torch.Tensor) -> float:
    top2 = row.topk(2).values
    return float(top2[0] - top2[1])


@dataclass
class GreedyAgreement:
    """Tallies of token-by-token checks against one reference, over any number of sequences."""

    reference: Logits
    tolerance: float  # logit margins at or under this are near-ties
    checked: int = 0
    skipped: int = 0

    def check(self, prompt: Sequence[int], tokens: Sequence[int], what: object = None) -> None:
        """Each of `tokens` (greedy from `prompt`) is the reference's argmax, or a near-tie."""
        logits = self.reference([*prompt, *tokens])
        for i, token in enumerate(tokens):
            self._check_row(logits[len(prompt) - 1 + i], token, f"token {i} is {token}", what)

    def check_predictions(self, tokens: Sequence[int], predictions: Sequence[int], what: object = None) -> None:
        """predictions[p], another engine's argmax at position p of `tokens` teacher-forced (a
        head's prediction), is the reference's argmax at p, or p is a near-tie."""
        logits = self.reference(list(tokens))
        assert len(predictions) == len(logits), f"{len(predictions)} predictions for {len(logits)} positions ({what})"
        for p, token in enumerate(predictions):
            self._check_row(logits[p], token, f"position {p} predicts {token}", what)

    def _check_row(self, row: torch.Tensor, token: int, found: str, what: object) -> None:
        """token is the argmax of the reference's logits `row`, unless they nearly tie there."""
        if _margin(row) <= self.tolerance:
            self.skipped += 1
            return
        self.checked += 1
        best = int(row.argmax())
        assert best == token, (
            f"{found}, the reference's argmax is {best} by a margin of {_margin(row):.4f} > {self.tolerance} ({what})"
        )

    def check_same_until_a_near_tie(self, prompt: Sequence[int], a: Sequence[int], b: Sequence[int],
                                    what: object = None) -> None:
        """Two engines' greedy sequences (no stop strings) agree, or part at a token that is a
        near-tie for the reference: both had the same context up to it. A sequence that ends
        early chose a stop token there, which counts as parting."""
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if n == len(a) == len(b):
            return
        row = self.reference([*prompt, *a[:n]])[-1]
        assert _margin(row) <= self.tolerance, (
            f"the sequences part at token {n} ({a[n:n + 1]} and {b[n:n + 1]}) where the reference's margin is "
            f"{_margin(row):.4f} > {self.tolerance} ({what})"
        )

    def assert_few_skipped(self, max_fraction: float = 0.1) -> None:
        total = self.checked + self.skipped
        assert total > 0, "nothing was compared"
        assert self.skipped <= max_fraction * total, (
            f"{self.skipped} of {total} positions were near-ties (tolerance {self.tolerance}): "
            f"more than {max_fraction:.0%}, the comparison says too little"
        )
