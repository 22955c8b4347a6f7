"""Which model a screen works with: "default model" first, then every model the store lists
that reads (the shipped one included); re-read whenever the screen comes back, since models
come and go on other screens and in the CLI."""

from __future__ import annotations

from textual import work
from textual.widgets import Select

from assistant.tui.models_info import list_models

DEFAULT_MODEL = "__default__"


class ModelPicker(Select):
    def __init__(self, **kwargs):
        super().__init__([("default model", DEFAULT_MODEL)], value=DEFAULT_MODEL, allow_blank=False, compact=True, **kwargs)

    @property
    def model(self) -> str | None:
        """The chosen model's directory; None for the default model."""
        return None if self.value in (DEFAULT_MODEL, Select.BLANK) else str(self.value)

    @work(thread=True, exit_on_error=False, exclusive=True, group="model-picker")
    def refresh_models(self) -> None:
        models = [(m.name, str(m.path)) for m in list_models(self.app.store) if not m.error]
        self.app.call_from_thread(self.set_options, [("default model", DEFAULT_MODEL)] + models)
