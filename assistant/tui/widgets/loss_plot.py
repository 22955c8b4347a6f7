"""Training and validation loss per head over steps (plotext in the terminal)."""

from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

MAX_POINTS = 400  # per series: more only slows the redraw of a terminal-sized plot

# One colour per head; train is a line, validation the same colour's markers.
HEAD_COLORS = ("cyan", "green", "magenta", "yellow", "red", "blue", "white", "orange")


class LossPlot(PlotextPlot):
    """Set `records` (the metrics.jsonl records so far) and it redraws."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._records: list[dict[str, Any]] = []

    def show(self, records: list[dict[str, Any]]) -> None:
        self._records = records
        self._replot()

    def on_mount(self) -> None:
        self._replot()

    def _replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss per head (dots: validation)")
        plt.xlabel("step")
        train = [r for r in self._records if r.get("split") == "train" and r.get("loss_per_head")]
        val = [r for r in self._records if r.get("split") == "val" and r.get("loss_per_head")]
        if len(train) > MAX_POINTS:  # every n-th step, and always the latest
            stride = -(-len(train) // MAX_POINTS)
            train = train[::stride] + ([train[-1]] if (len(train) - 1) % stride else [])
        heads = len(train[-1]["loss_per_head"]) if train else 0
        for head in range(heads):
            color = HEAD_COLORS[head % len(HEAD_COLORS)]
            plt.plot(
                [r["step"] for r in train], [r["loss_per_head"][head] for r in train], color=color, label=f"h{head + 1}"
            )
            if val:
                plt.scatter(
                    [r["step"] for r in val], [r["loss_per_head"][head] for r in val], color=color, marker="dot"
                )
        self.refresh()
