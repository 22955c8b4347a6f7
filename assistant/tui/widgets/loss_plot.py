"""Training and validation loss per head over steps (plotext in the terminal).

The legend is a line of its own under the plot: plotext draws its legend inside the
canvas's top-left corner, which is where falling loss curves start."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual_plotext import PlotextPlot

MAX_POINTS = 400  # per series: more only slows the redraw of a terminal-sized plot

# One colour per head; train is a line, validation the same colour's markers.
# As RGB: plotext maps colour names through the app's theme, rich does not, and the
# legend must match the curves.
HEAD_COLORS = ((0, 200, 220), (90, 210, 60), (230, 70, 200), (240, 200, 40), (240, 80, 60), (80, 130, 255),
               (220, 220, 220), (255, 150, 30))


def legend(heads: int) -> Text:
    text = Text()
    for head in range(heads):
        r, g, b = HEAD_COLORS[head % len(HEAD_COLORS)]
        text.append(f"━ h{head + 1}  ", style=f"bold rgb({r},{g},{b})")
    text.append("· val", style="dim")
    return text


class LossPlot(PlotextPlot):
    """Set `records` (the metrics.jsonl records so far) and it redraws."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._records: list[dict[str, Any]] = []
        self._heads = 0

    def show(self, records: list[dict[str, Any]]) -> None:
        self._records = records
        self._replot()

    def on_mount(self) -> None:
        self._replot()

    def _replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss per head")
        plt.xlabel("step")
        train = [r for r in self._records if r.get("split") == "train" and r.get("loss_per_head")]
        val = [r for r in self._records if r.get("split") == "val" and r.get("loss_per_head")]
        if len(train) > MAX_POINTS:  # every n-th step, and always the latest
            stride = -(-len(train) // MAX_POINTS)
            train = train[::stride] + ([train[-1]] if (len(train) - 1) % stride else [])
        heads = self._heads = len(train[-1]["loss_per_head"]) if train else 0
        for head in range(heads):
            color = HEAD_COLORS[head % len(HEAD_COLORS)]
            plt.plot([r["step"] for r in train], [r["loss_per_head"][head] for r in train], color=color)
            if val:
                plt.scatter(
                    [r["step"] for r in val], [r["loss_per_head"][head] for r in val], color=color, marker="dot"
                )
        self.refresh()

    def render(self):
        """The plot one row shorter, and the legend in that row."""
        if not self._heads or self.size.height < 4:
            return super().render()
        width, height = self.size.width, self.size.height - 1
        # What PlotextPlot.render does, at the smaller height.
        self.plt.plotsize(width, height)
        self.plt._set_size(width, height)
        self.plt.theme(self._get_plotext_theme_name(self.app.theme))
        return Text.assemble(Text.from_ansi(self.plt.build().rstrip("\n")), "\n", legend(self._heads))
