"""One screen per job: models, train, playground, bench, server.

SCREENS is the one list of them: the app's modes and F-key bindings, the nav bar and
`mtp-assistant tui --screen` all read it. Each screen's module is imported only by the app
(the CLI reads the names without importing Textual's screens).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ScreenEntry:
    key: str  # the key that switches to it
    mode: str  # its name: the app's mode, `tui --screen NAME`
    label: str
    module: str
    class_name: str

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.class_name)


SCREENS = (
    ScreenEntry("f1", "models", "Models", "assistant.tui.screens.models", "ModelsScreen"),
    ScreenEntry("f2", "train", "Train", "assistant.tui.screens.train", "TrainScreen"),
    ScreenEntry("f3", "playground", "Playground", "assistant.tui.screens.playground", "PlaygroundScreen"),
    ScreenEntry("f4", "bench", "Bench", "assistant.tui.screens.bench", "BenchScreen"),
    ScreenEntry("f5", "server", "Server", "assistant.tui.screens.server", "ServerScreen"),
)
SCREEN_NAMES = tuple(entry.mode for entry in SCREENS)
