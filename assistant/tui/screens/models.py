"""Models: what is in the store; import, export/quantize, set default, remove."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Static

from assistant.store import ModelStore, StoreError
from assistant.tui.jobs import JobResult, run_cli
from assistant.tui.models_info import (
    ModelInfo,
    human_count,
    human_size,
    list_models,
    scores,
)
from assistant.tui.screens.base import TuiScreen
from assistant.tui.widgets.dialogs import ChoiceDialog, ConfirmDialog, InputDialog
from assistant.tui.widgets.nav import NavBar
from assistant.tui.widgets.operation import OperationBar

QUANTIZATIONS = [
    ("Q8_0 (8-bit)", "q8_0"),
    ("Q4_K_M (4-bit)", "q4_k_m"),
    ("F16 (half precision)", "f16"),
    ("F32 (full precision)", "f32"),
]


class ModelsScreen(TuiScreen):
    BINDINGS = [
        Binding("i", "import_model", "Import"),
        Binding("e", "export_model", "Export"),
        Binding("d", "set_default", "Default"),
        Binding("x,delete", "remove_model", "Remove"),
        Binding("r", "refresh", "Refresh"),
        Binding("escape", "cancel_operation", "Cancel", show=False),
    ]

    class Listed(Message):
        def __init__(self, models: list[ModelInfo]):
            super().__init__()
            self.models = models

    class OperationProgress(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class OperationDone(Message):
        def __init__(self, what: str, ok: bool, detail: str):
            super().__init__()
            self.what, self.ok, self.detail = what, ok, detail

    def __init__(self):
        super().__init__()
        self.models: list[ModelInfo] = []
        self._cancel = threading.Event()
        self._busy = False

    def compose(self) -> ComposeResult:
        yield NavBar("models", id="nav")
        with Vertical(id="models-body"):
            yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="model-detail")
            yield OperationBar(id="models-op")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = "Models"
        table = self.query_one(DataTable)
        table.add_columns("", "name", "params", "size", "heads", "tokens", "quantized")

    def on_screen_resume(self) -> None:
        self.action_refresh()  # models may have come from the Train screen or the CLI meanwhile

    @property
    def store(self) -> ModelStore:
        return self.app.store

    # --- listing ---

    def action_refresh(self) -> None:
        self._list()

    @work(thread=True, exit_on_error=False, exclusive=True, group="list")
    def _list(self) -> None:
        self.post_message(self.Listed(list_models(self.store)))

    def on_models_screen_listed(self, message: Listed) -> None:
        if message.models == self.models and self.models:
            return  # unchanged: keep the table (and its cursor) as it is
        self.models = message.models
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for m in self.models:
            quant = ",".join(m.quantizations) or "-"
            if m.error:
                table.add_row("!", m.name, "?", human_size(m.size_bytes), "?", "?", m.error[:20], key=str(m.path))
            else:
                table.add_row(
                    "*" if m.is_default else "",
                    m.name,
                    human_count(m.parameters),
                    human_size(m.size_bytes),
                    str(m.n_future),
                    f"{m.tokenizer} {m.vocab_size}",
                    quant,
                    key=str(m.path),
                )
        if self.models:
            table.move_cursor(row=min(row, len(self.models) - 1))
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def selected(self) -> ModelInfo | None:
        table = self.query_one(DataTable)
        if not self.models or not 0 <= table.cursor_row < len(self.models):
            return None
        return self.models[table.cursor_row]

    def _show_detail(self) -> None:
        m = self.selected()
        detail = self.query_one("#model-detail", Static)
        if m is None:
            detail.update("No models yet. Press [b]i[/b] to import one, or train one on the Train screen (F2).")
            return
        if m.error:
            detail.update(f"[b]{m.name}[/b]: cannot be read: {m.error}")
            return
        lines = [
            f"[b]{m.name}[/b]{' (default)' if m.is_default else ''}: dim {m.dim}, {m.n_layers} blocks, {m.n_future} heads"
        ]
        p = m.provenance
        made = p.get("trained_by") or p.get("source") or p.get("imported_from")
        if made:
            lines.append(
                f"made by: {made}"
                + (
                    f", fine-tuned ({p['finetune']}) from {Path(str(p['base_model'])).name}"
                    if p.get("base_model")
                    else ""
                )
            )
        if p.get("steps"):
            lines.append(f"steps: {p['steps']}, tokens seen: {human_count(p.get('tokens_seen'))}")
        corpus = p.get("corpus")
        if isinstance(corpus, dict) and isinstance(corpus.get("train"), dict):
            lines.append(
                f"corpus: {Path(str(corpus.get('root', '?'))).name}, {corpus['train'].get('files')} train files, "
                f"{(corpus.get('val') or {}).get('files', 0)} validation files"
            )
        for key, value in scores(p).items():
            lines.append(f"{key}: {json.dumps(value)[:70]}")
        if m.quantizations:
            lines.append(f"GGUF exports: {', '.join(m.quantizations)} ({len(m.gguf_files)} files)")
        detail.update("\n".join(lines))

    # --- actions ---

    def _start(self, label: str) -> bool:
        if self._busy:
            self.notify("another operation is running (Esc cancels it)", severity="warning")
            return False
        self._busy = True
        self._cancel = threading.Event()
        self.query_one(OperationBar).begin(label)
        return True

    def action_cancel_operation(self) -> None:
        if self._busy:
            self._cancel.set()

    def on_models_screen_operation_progress(self, message: OperationProgress) -> None:
        self.query_one(OperationBar).advance(message.text)

    def on_models_screen_operation_done(self, message: OperationDone) -> None:
        self._busy = False
        self.query_one(OperationBar).end()
        if message.ok:
            self.notify(message.detail, title=message.what)
        else:
            self.notify(message.detail, title=f"{message.what} failed", severity="error", timeout=10)
        self.action_refresh()

    def action_import_model(self) -> None:
        def chosen(path: str | None) -> None:
            if path and self._start(f"importing {path}"):
                self._import(Path(path).expanduser(), self._cancel)

        self.app.push_screen(
            InputDialog(
                "Import a model directory (ours, or Meta's release with params.json):", placeholder="/path/to/model"
            ),
            chosen,
        )

    @work(thread=True, exit_on_error=False, group="operation")
    def _import(self, path: Path, cancel: threading.Event) -> None:
        try:
            self._import_steps(path, cancel)
        except Exception as e:  # the operation must end (and say why) whatever happens
            self.post_message(self.OperationDone("import", False, f"{type(e).__name__}: {e}"))

    def _import_steps(self, path: Path, cancel: threading.Event) -> None:
        if (path / "config.json").is_file() or not (path / "params.json").is_file():
            # One of ours (or neither: ModelStore.add says what is missing).
            try:
                entry = self.store.add(path)
            except StoreError as e:
                self.post_message(self.OperationDone("import", False, str(e)))
            else:
                self.post_message(self.OperationDone("import", True, f"added {entry.name}"))
            return
        # Meta's release layout: the CLI's importer converts it.
        self._post_job(
            "import", run_cli(["models", "import", str(path)], cancel, self._progress), f"imported {path.name}"
        )

    def action_export_model(self) -> None:
        m = self.selected()
        if m is None or m.error:
            self.notify("select a readable model first", severity="warning")
            return

        def chosen(quant: str | None) -> None:
            if quant and self._start(f"exporting {m.name} ({quant})"):
                self._export(str(m.path), quant, self._cancel)

        self.app.push_screen(ChoiceDialog(f"Export {m.name} to GGUF with quantization:", QUANTIZATIONS), chosen)

    @work(thread=True, exit_on_error=False, group="operation")
    def _export(self, model: str, quant: str, cancel: threading.Event) -> None:
        try:
            result = run_cli(["models", "export", model, "--quant", quant], cancel, self._progress)
        except OSError as e:
            self.post_message(self.OperationDone("export", False, str(e)))
            return
        self._post_job("export", result, f"exported {Path(model).name} ({quant})")

    def _progress(self, line: str) -> None:
        self.post_message(self.OperationProgress(line))

    def _post_job(self, what: str, result: JobResult, success: str) -> None:
        if result.returncode is None:
            self.post_message(self.OperationDone(what, False, "cancelled"))
        elif result.ok:
            self.post_message(self.OperationDone(what, True, success))
        else:
            self.post_message(self.OperationDone(what, False, result.error_line()))

    def action_set_default(self) -> None:
        m = self.selected()
        if m is None or m.error:
            self.notify("select a model that loads", severity="warning")
            return
        try:
            self.store.set_default(m.name)
        except StoreError as e:
            self.notify(str(e), severity="error")
            return
        self.notify(f"default model: {m.name}")
        self.action_refresh()

    def action_remove_model(self) -> None:
        m = self.selected()
        if m is None or m.shipped:
            self.notify("select a model in the store (the shipped model cannot be removed)", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.store.remove(m.name)
            except (StoreError, OSError) as e:
                self.notify(str(e), severity="error")
            else:
                self.notify(f"removed {m.name}")
            self.action_refresh()

        self.app.push_screen(ConfirmDialog(f"Remove {m.name} and delete its files?", yes="Remove"), confirmed)
