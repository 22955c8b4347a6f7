"""A bar for one long operation: what it is doing, a progress bar, how to cancel."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar


class OperationBar(Horizontal):
    """Hidden while idle. `begin(label, total)`, `advance(text, completed)`, `end()`."""

    def compose(self) -> ComposeResult:
        yield Label("", id="op-label")
        yield ProgressBar(total=None, show_eta=False, id="op-progress")
        yield Label("[b]esc[/b] cancel", id="op-hint")

    def on_mount(self) -> None:
        self.display = False

    def begin(self, label: str, total: float | None = None) -> None:
        self.query_one("#op-label", Label).update(label)
        self.query_one(ProgressBar).update(total=total, progress=0)
        self.display = True

    def advance(self, text: str | None = None, completed: float | None = None) -> None:
        if text is not None:
            self.query_one("#op-label", Label).update(text[:60])
        if completed is not None:
            self.query_one(ProgressBar).update(progress=completed)

    def end(self) -> None:
        self.display = False
