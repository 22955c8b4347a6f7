"""A block of `label  value` lines."""

from __future__ import annotations

from rich.table import Table
from textual.widgets import Static


class StatsPanel(Static):
    def show(self, rows: list[tuple[str, str]]) -> None:
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold")
        table.add_column()
        for label, value in rows:
            table.add_row(label, value)
        self.update(table)
