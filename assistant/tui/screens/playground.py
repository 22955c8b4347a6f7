"""Playground: an editor with the assistant's ghost completion at the cursor, its tokens
coloured by the head that drafted them, and the decoding stats.

The completion is the language server's: the same CompletionService (plan, prompt, stop
rules, post-processing, cache) with the app's completion settings, on the engine the
server would load (llama.cpp where the model has a GGUF export, else torch).
"""

from __future__ import annotations

import threading
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Footer, Label, Select, TextArea

from assistant.completion.positions import UTF32
from assistant.completion.service import Completion, CompletionService
from assistant.store import StoreError
from assistant.engine import load_engine
from assistant.engine.base import DecodeStats
from assistant.tui.screens.base import TuiScreen
from assistant.tui.widgets.completion_view import CompletionView
from assistant.tui.widgets.ghost_editor import GhostTextArea
from assistant.tui.widgets.model_picker import DEFAULT_MODEL, ModelPicker
from assistant.tui.widgets.nav import NavBar
from assistant.tui.widgets.stats_panel import StatsPanel
from models.checkpoint import ModelFileError

URI = "untitled:playground"  # no file: like an unsaved buffer in an editor


def acceptance_per_position(stats: DecodeStats) -> str:
    """Drafts accepted of those proposed, at each draft position (1: the token after head
    1's), where any was proposed: with the auto drafter a position may be the context
    lookup's rather than a head's, and positions past the longest draft of this completion
    say nothing (not a rate of 0)."""
    cells = [f"{a}/{p}" for a, p in zip(stats.draft_accepted, stats.draft_proposed) if p]
    if not cells:
        return "none drafted"
    lookup = sum(stats.lookup_proposed)
    by_lookup = f" (lookup drafted {lookup} of {sum(stats.draft_proposed)})" if lookup else ""
    return " ".join(cells) + by_lookup


class PlaygroundScreen(TuiScreen):
    AUTO_FOCUS = "#editor"
    BINDINGS = [
        Binding("ctrl+g", "complete", "Complete"),
        Binding("ctrl+l", "accept", "Accept (or →)"),
    ]

    class Completed(Message):
        def __init__(self, completion: Completion, version: int, engine: str, n_future: int):
            super().__init__()
            self.completion, self.version, self.engine, self.n_future = completion, version, engine, n_future

    class Failed(Message):
        def __init__(self, error: str):
            super().__init__()
            self.error = error

    def __init__(self):
        super().__init__()
        self._service: CompletionService | None = None
        self._service_path: str | None = None
        self._engine_lock = threading.Lock()  # one load at a time
        self._cancel = threading.Event()
        self._version = 0  # bumped by every edit and cursor move: stale completions are dropped
        self._debounce: Timer | None = None
        self._model_value = DEFAULT_MODEL
        self._length = 0  # of the editor's text, to tell deletions
        self.shown_version = -1  # the version whose completion is on screen
        self._ghost_at: tuple[str, tuple[int, int]] | None = None  # (text, cursor) the ghost text is for

    def compose(self) -> ComposeResult:
        yield NavBar("playground", id="nav")
        with Vertical(id="playground-body"):
            with Horizontal(classes="field"):
                yield Label("model", classes="field-label")
                yield ModelPicker(id="pg-model")
            yield GhostTextArea(
                self.app.settings.playground_text,
                id="editor",
                show_line_numbers=True,
                tab_behavior="indent",
                soft_wrap=False,
            )
            yield CompletionView("", id="completion")
            yield StatsPanel("", id="pg-stats")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = "Playground"
        editor = self.query_one(TextArea)
        self._length = len(editor.text)
        lines = editor.text.split("\n")
        editor.move_cursor((len(lines) - 1, len(lines[-1])))  # the end of the text
        self.query_one("#pg-stats", StatsPanel).show([("stats", "type, or press ctrl+g for a completion")])

    def on_screen_resume(self) -> None:
        self.query_one(ModelPicker).refresh_models()  # the store may have changed on another screen

    # --- requests ---

    @on(TextArea.Changed)
    def _text_changed(self, event: TextArea.Changed) -> None:
        # TextArea keeps the ghost text while what is typed matches it; a deletion must
        # not leave a completion meant for the longer text.
        editor = event.text_area
        length = len(editor.text)
        if length < self._length:
            editor.suggestion = ""
        self._length = length
        self._ghost_at = (editor.text, editor.cursor_location) if editor.suggestion else None
        self._edited()

    @on(TextArea.SelectionChanged)
    def _selection_changed(self, event: TextArea.SelectionChanged) -> None:
        # A cursor moved without an edit leaves the ghost text where it no longer belongs.
        editor = event.text_area
        if self._ghost_at is not None:
            text, cursor = self._ghost_at
            if text == editor.text and cursor != editor.cursor_location:
                editor.suggestion = ""
                self._ghost_at = None
            elif text != editor.text:  # an edit typed into the ghost text: it follows the cursor
                self._ghost_at = (editor.text, editor.cursor_location)
        self._edited()

    def _edited(self) -> None:
        self._version += 1
        self._cancel.set()  # whatever is being computed is for text that is gone
        if self._debounce is not None:
            self._debounce.stop()
        if self.app.settings.auto_complete:
            self._debounce = self.set_timer(self.app.settings.complete_delay_s, self.action_complete)

    @on(Select.Changed, "#pg-model")
    def _model_changed(self, event: Select.Changed) -> None:
        if event.value != self._model_value:  # not when the options are refreshed
            self._model_value = event.value
            self.action_complete()

    def action_complete(self) -> None:
        editor = self.query_one(TextArea)
        self._cancel.set()
        self._cancel = threading.Event()
        row, col = editor.cursor_location
        model = self.query_one(ModelPicker).model
        self.query_one("#pg-stats", StatsPanel).show([("stats", "completing...")])
        self._complete(editor.text, row, col, model, self._version, self._cancel)

    @work(thread=True, exit_on_error=False, group="complete")
    def _complete(
        self, text: str, row: int, col: int, model: str | None, version: int, cancel: threading.Event
    ) -> None:
        try:
            service = self._get_service(model)
            if cancel.is_set():
                return
            # TextArea's columns are code points: UTF-32 code units.
            completion = service.complete_at(text, row, col, uri=URI, cancel=cancel, encoding=UTF32)
        except (StoreError, ModelFileError, ValueError, OSError) as e:
            self.post_message(self.Failed(str(e)))
            return
        if completion.stop_reason == "cancelled":
            return  # the text or the cursor moved on
        engine = service.engine
        self.post_message(self.Completed(completion, version, engine.label, engine.n_future))

    def _get_service(self, model: str | None) -> CompletionService:
        """One service per model, kept while it is chosen: its cache and the engine's
        cached prompt make the next keystroke's completion cheap, as in the server."""
        settings = self.app.settings.completion
        with self._engine_lock:
            path = str(self.app.store.resolve(model or settings.model or "default"))
            if self._service is None or self._service_path != path:
                self._service = CompletionService(load_engine(Path(path), settings.engine), settings)
                self._service_path = path
            return self._service

    # --- results ---

    def on_playground_screen_completed(self, message: Completed) -> None:
        c = message.completion
        if message.version != self._version:
            return  # the text or the cursor moved on
        self.shown_version = message.version
        editor = self.query_one(TextArea)
        editor.suggestion = c.text
        self._ghost_at = (editor.text, editor.cursor_location) if c.text else None
        self.query_one(CompletionView).show(c.pieces, message.n_future, c.text)
        lines = "several lines" if c.multiline else "one line"
        s = c.stats
        if s is None:  # the cache, or a rule (binary text) answered without the model
            self.query_one("#pg-stats", StatsPanel).show(
                [("time", f"{c.latency_s * 1e3:.0f} ms, no model call ({c.stop_reason}); {lines}")]
            )
            return
        acceptance = acceptance_per_position(s)
        prompt = f"{s.prompt_tokens} prompt tokens, {s.reused_tokens} cached"
        self.query_one("#pg-stats", StatsPanel).show(
            [
                ("tokens", f"{s.new_tokens} in {s.forward_passes} forwards: {s.tokens_per_forward:.2f} per forward"),
                ("time", f"{s.wall_s * 1e3:.0f} ms on {message.engine} (prefill {s.prefill_s * 1e3:.0f} ms, {prompt})"),
                ("accepted", f"per draft position {acceptance}; {lines}, stopped by {c.stop_reason}"),
            ]
        )

    def on_playground_screen_failed(self, message: Failed) -> None:
        self.query_one("#pg-stats", StatsPanel).show([("error", message.error)])
        self.notify(message.error, title="completion", severity="error", timeout=8)

    def action_accept(self) -> None:
        editor = self.query_one(TextArea)
        if editor.suggestion:
            editor.insert(editor.suggestion)
            editor.focus()
