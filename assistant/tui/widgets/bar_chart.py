"""The benchmark's speedup for each k, as bars."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class SpeedupChart(PlotextPlot):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._bars: list[tuple[int, float]] = []

    def show(self, bars: list[tuple[int, float]]) -> None:
        """(k, speedup vs k = 1) pairs."""
        self._bars = bars
        self._replot()

    def on_mount(self) -> None:
        self._replot()

    def _replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("speedup vs plain decoding (k = 1)")
        if self._bars:
            plt.bar([f"k={k}" for k, _ in self._bars], [s for _, s in self._bars], color="green", width=0.5)
        self.refresh()
