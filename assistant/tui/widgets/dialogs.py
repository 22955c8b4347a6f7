"""Modal dialogs: each dismisses with its answer (None when cancelled with Escape)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select


class _Dialog(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(_Dialog):
    """A yes/no question; dismisses with True or None."""

    def __init__(self, question: str, yes: str = "Yes"):
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button("Cancel", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(True if event.button.id == "yes" else None)


class _TextDialog(_Dialog):
    """A dialog of text fields with OK / Cancel buttons; OK dismisses with _answer()."""

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._answer()
        else:
            self.dismiss(None)


class InputDialog(_TextDialog):
    """One line of text (a path, a name); dismisses with the text or None."""

    def __init__(self, question: str, value: str = "", placeholder: str = ""):
        super().__init__()
        self.question, self.value, self.placeholder = question, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            yield Input(self.value, placeholder=self.placeholder, id="answer")
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="no")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._answer()

    def _answer(self) -> None:
        text = self.query_one("#answer", Input).value.strip()
        self.dismiss(text or None)


@dataclass(frozen=True)
class FormField:
    key: str  # the answer's key; the Input's id is f"field-{key}"
    label: str
    value: str = ""
    placeholder: str = ""


class FormDialog(_TextDialog):
    """A few labelled lines of text; dismisses with {key: text} or None. Enter in a field
    moves to the next one, and in the last one answers."""

    def __init__(self, question: str, fields: list[FormField]):
        super().__init__()
        self.question, self.fields = question, fields

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            for f in self.fields:
                with Horizontal(classes="field"):
                    yield Label(f.label, classes="field-label")
                    yield Input(f.value, placeholder=f.placeholder, id=f"field-{f.key}", compact=True)
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="no")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        ids = [f"field-{f.key}" for f in self.fields]
        if event.input.id == ids[-1]:
            self._answer()
        else:
            self.query_one(f"#{ids[ids.index(event.input.id) + 1]}", Input).focus()

    def _answer(self) -> None:
        self.dismiss({f.key: self.query_one(f"#field-{f.key}", Input).value.strip() for f in self.fields})


class ChoiceDialog(_Dialog):
    """Pick one of a few options; dismisses with the option's value or None."""

    def __init__(self, question: str, options: list[tuple[str, str]], value: str | None = None):
        super().__init__()
        self.question, self.options = question, options
        self.value = value if value is not None else options[0][1]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            yield Select(self.options, value=self.value, allow_blank=False, id="choice")
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.query_one("#choice", Select).value if event.button.id == "ok" else None)


class QuitDialog(_Dialog):
    """Quitting while training runs: leave them running, stop them, or stay."""

    def __init__(self, running: list[str]):
        super().__init__()
        self.running = running

    def compose(self) -> ComposeResult:
        names = ", ".join(self.running)
        with Vertical(classes="dialog"):
            yield Label(
                f"Training still running: {names}.\nLeft running, it goes on in the background and "
                "the Train screen re-attaches to it next time.",
                classes="question",
            )
            with Horizontal(classes="buttons"):
                yield Button("Leave running", variant="primary", id="leave")
                yield Button("Stop and quit", variant="error", id="stop")
                yield Button("Cancel", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "no" else event.button.id)
