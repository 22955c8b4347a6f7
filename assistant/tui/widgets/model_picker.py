"""Which model a screen works with: "default model" first, then every model the store lists
that reads (the shipped one included); re-read whenever the screen comes back, since models
come and go on other screens and in the CLI. A screen may put one option of its own first
(the Train screen's "from scratch")."""

from __future__ import annotations

from textual import work
from textual.widgets import Select

from assistant.store import StoreError
from assistant.tui.models_info import list_models

DEFAULT_MODEL = "__default__"


class ModelPicker(Select):
    def __init__(self, extra: tuple[str, str] | None = None, **kwargs):
        """extra: (label, value) of an option before "default model"; the default model
        stays the one chosen at first."""
        self._extra = [extra] if extra else []
        super().__init__(
            [*self._extra, ("default model", DEFAULT_MODEL)], value=DEFAULT_MODEL, allow_blank=False, compact=True,
            **kwargs,
        )

    @property
    def model(self) -> str | None:
        """The chosen model's directory; None for the default model (and the extra option)."""
        return None if self.value in (DEFAULT_MODEL, Select.BLANK) or self.extra_chosen else str(self.value)

    @property
    def extra_chosen(self) -> bool:
        return bool(self._extra) and self.value == self._extra[0][1]

    def on_mount(self) -> None:
        if self._extra and not self._has_default():
            self.value = self._extra[0][1]

    def _has_default(self) -> bool:
        """Whether "default model" names one (reads the store's settings only)."""
        try:
            self.app.store.resolve(None)
            return True
        except StoreError:
            return False

    @work(thread=True, exit_on_error=False, exclusive=True, group="model-picker")
    def refresh_models(self) -> None:
        models = [(m.name, str(m.path)) for m in list_models(self.app.store) if not m.error]
        self.app.call_from_thread(self._set_models, models, self._has_default())

    def _set_models(self, models: list[tuple[str, str]], has_default: bool) -> None:
        """New options; the choice stays where it is still listed (set_options alone would
        pick the first option), else it goes back to the default model, or to the extra
        option where there is no default model."""
        options = [*self._extra, ("default model", DEFAULT_MODEL), *models]
        value = self.value
        kept = value if any(v == value for _, v in options) else DEFAULT_MODEL
        if kept == DEFAULT_MODEL and self._extra and not has_default:
            kept = self._extra[0][1]
        if options == self._options and kept == value:
            return  # unchanged: no Changed message for a choice nobody made
        with self.prevent(Select.Changed):
            self.set_options(options)
            self.value = kept
        if kept != value:
            self.post_message(self.Changed(self, kept))
