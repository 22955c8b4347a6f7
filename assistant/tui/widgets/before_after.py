"""A before/after table: a metric a row, its value before and after (a tune's report)."""

from __future__ import annotations

from rich.table import Table
from textual.widgets import Static


class BeforeAfter(Static):
    rows: list[tuple[str, str, str]] = []

    @property
    def plain(self) -> str:
        """What it shows, as plain lines (for tests and logs)."""
        return "\n".join(" ".join(row) for row in [("", "before", "after"), *self.rows])

    def show(self, rows: list[tuple[str, str, str]]) -> None:
        self.rows = rows
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
        table.add_column("", style="bold")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        for row in rows:
            table.add_row(*row)
        self.update(table)
