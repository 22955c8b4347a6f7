"""A block of `label  value` lines."""

from __future__ import annotations

from rich.table import Table
from textual.widgets import Static


class StatsPanel(Static):
    rows: list[tuple[str, str]] = []

    @property
    def plain(self) -> str:
        """What it shows, as plain lines (for tests and logs)."""
        return "\n".join(f"{label} {value}" for label, value in self.rows)

    def show(self, rows: list[tuple[str, str]]) -> None:
        self.rows = rows
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold")
        table.add_column()
        for label, value in rows:
            table.add_row(label, value)
        self.update(table)
