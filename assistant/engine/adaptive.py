"""Choose how many heads draft, by measured speed.

Whether drafting pays depends on the machine, the engine and the model. A small model on
a CPU core is compute-bound, so verifying 4 tokens costs ~2.5x one step, and llama.cpp
adds a fixed cost per head context: plain decoding can win even when most drafts are
accepted (BENCHMARKS.md). The output does not depend on k (greedy speculative decoding
is exactly plain greedy; speculative sampling is exactly plain sampling), so k can be
chosen for speed alone: keep a running cost per decoded token for every k, use the
cheapest, and now and then measure the one measured longest ago again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from assistant.engine.base import DecodeStats


@dataclass
class AdaptiveHeads:
    n_future: int
    explore_every: int = 8  # every n-th choice re-measures the k measured longest ago
    smoothing: float = 0.3  # weight of the newest measurement in the running cost
    cost: dict[int, float] = field(default_factory=dict)  # k -> seconds per decoded token
    measured_at: dict[int, int] = field(default_factory=dict)  # k -> choice count when last measured
    choices: int = 0

    def choose(self) -> int:
        self.choices += 1
        for k in range(1, self.n_future + 1):
            if k not in self.cost:
                return k
        if self.choices % self.explore_every == 0:
            return min(self.measured_at, key=self.measured_at.get)
        return min(self.cost, key=self.cost.get)

    def record(self, k: int, stats: DecodeStats) -> None:
        """Learn from one call decoded with k heads (its first token came from the prefill)."""
        decoded = stats.new_tokens - 1
        if decoded < 1 or stats.decode_s <= 0:
            return  # nothing decoded after the prefill: no evidence about k
        per_token = stats.decode_s / decoded
        old = self.cost.get(k)
        self.cost[k] = per_token if old is None else (1 - self.smoothing) * old + self.smoothing * per_token
        self.measured_at[k] = self.choices

    def best(self) -> int | None:
        return min(self.cost, key=self.cost.get) if self.cost else None
