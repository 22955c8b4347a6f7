"""The top line: which screen this is and the keys (or clicks) that switch screens."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from assistant.tui.screens import SCREENS


class NavBar(Static):
    def __init__(self, current: str, **kwargs):
        super().__init__(**kwargs)
        self.current = current

    def on_mount(self) -> None:
        text = Text.from_markup("[b]mtp-assistant[/b] ")
        for entry in SCREENS:
            style = "reverse bold" if entry.mode == self.current else ""
            item = Text.from_markup(f"[@click=app.switch_mode('{entry.mode}')] {entry.key} {entry.label} [/]")
            item.stylize(style)
            text.append_text(item)
        self.update(text)
