"""Models: what is in the store and which repositories each serves; import, add heads to a
plain base, export/quantize, set default, unbind a repository, remove."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Static

from assistant.errors import UserError
from assistant.store import ModelStore, StoreError
from assistant.training.corpus import CorpusError
from assistant.tui.jobs import JobResult, run_cli
from assistant.tui.models_info import (
    ModelInfo,
    human_count,
    human_size,
    list_models,
    scores,
)
from assistant.tui.screens.base import TuiScreen
from assistant.tui.widgets.dialogs import ChoiceDialog, ConfirmDialog, FormDialog, FormField, InputDialog
from assistant.tui.widgets.nav import NavBar
from assistant.tui.widgets.operation import OperationBar
from models.checkpoint import ModelFileError

if TYPE_CHECKING:  # imported when used: torch and the importers load only for add-heads
    from assistant.training.heads import HeadsConfig

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
        Binding("h", "add_heads", "Add heads"),
        Binding("u", "unbind", "Unbind"),
        Binding("r", "refresh", "Refresh"),
        Binding("escape", "cancel_operation", "Cancel", show=False),
    ]

    class Listed(Message):
        def __init__(self, models: list[ModelInfo]):
            super().__init__()
            self.models = models

    class OperationProgress(Message):
        def __init__(self, text: str, completed: float | None = None):
            super().__init__()
            self.text, self.completed = text, completed

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
        table.add_columns("", "name", "params", "size", "heads", "tokens", "quantized", "serves")

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
                table.add_row(
                    "!", m.name, "?", human_size(m.size_bytes), "?", "?", m.error[:20], serves_cell(m), key=str(m.path)
                )
            else:
                table.add_row(
                    "*" if m.is_default else "",
                    m.name,
                    human_count(m.parameters),
                    human_size(m.size_bytes),
                    str(m.n_future),
                    f"{m.tokenizer} {m.vocab_size}",
                    quant,
                    serves_cell(m),
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
            detail.update(f"[b]{m.name}[/b]: cannot be read: {m.error}\n{serves_line(m)}".rstrip())
            return
        lines = [
            f"[b]{m.name}[/b]{' (default)' if m.is_default else ''}: dim {m.dim}, {m.n_layers} blocks, {m.n_future} heads"
        ]
        if serves_line(m):
            lines.append(serves_line(m))
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

    def _start(self, label: str, total: float | None = None) -> bool:
        if self._busy:
            self.notify("another operation is running (Esc cancels it)", severity="warning")
            return False
        self._busy = True
        self._cancel = threading.Event()
        self.query_one(OperationBar).begin(label, total)
        return True

    def action_cancel_operation(self) -> None:
        if self._busy:
            self._cancel.set()

    def on_unmount(self) -> None:
        # Quitting stops an add-heads run at its next step (with a checkpoint): its thread
        # would otherwise keep the process alive until the time box ran out.
        self._cancel.set()

    def on_models_screen_operation_progress(self, message: OperationProgress) -> None:
        self.query_one(OperationBar).advance(message.text, message.completed)

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

    # --- repositories ---

    def action_unbind(self) -> None:
        """`mtp-assistant models unbind REPO` for one of the selected model's repositories."""
        m = self.selected()
        if m is None or not m.serves:
            self.notify("the selected model serves no repository of its own (tune binds one)", severity="warning")
            return

        def unbind(root: str | None) -> None:
            if root is None:
                return

            def confirmed(yes: bool | None) -> None:
                if not yes:
                    return
                try:
                    name = self.store.unbind(root)
                except StoreError as e:
                    self.notify(str(e), severity="error")
                else:
                    self.notify(f"{root} no longer uses {name}: the default model serves it")
                self.action_refresh()

            self.app.push_screen(
                ConfirmDialog(f"Serve {root} with the default model instead of {m.name}?", yes="Unbind"), confirmed
            )

        if len(m.serves) == 1:
            unbind(m.serves[0])
        else:
            self.app.push_screen(
                ChoiceDialog(f"Which repository should stop using {m.name}?", [(r, r) for r in m.serves]), unbind
            )

    # --- add heads ---

    def action_add_heads(self) -> None:
        """`mtp-assistant models add-heads`: a plain base becomes an MTP model in the store."""
        from assistant.training.heads import HeadsConfig

        defaults = {f.name: f.default for f in dataclasses.fields(HeadsConfig)}
        fields = [
            FormField("base", "base", placeholder="a .gguf file or a Hugging Face directory"),
            FormField("corpus", "corpus", placeholder="repos or code folders, comma-separated"),
            FormField("minutes", "minutes", f"{defaults['minutes']:g}"),
            FormField("heads", "heads", str(defaults["new_heads"])),
            FormField("name", "name", placeholder="(the base's name + -mtp)"),
        ]
        question = "Add heads to a plain llama/qwen base (a run stopped early resumes with the same settings):"
        self.app.push_screen(FormDialog(question, fields), self._add_heads_answered)

    def _add_heads_answered(self, answer: dict[str, str] | None) -> None:
        if answer is None:
            return
        try:
            config, name = self._heads_request(answer)
        except ValueError as e:
            self.notify(str(e), title="add-heads", severity="error", timeout=10)
            return
        if self._start("add-heads: reading the base and the corpus", total=1.0):
            self._add_heads(config, name, self._cancel)

    def _heads_request(self, answer: dict[str, str]) -> tuple[HeadsConfig, str]:
        """The HeadsConfig and store name the form's answer asks for (the CLI's defaults)."""
        from assistant.training.heads import HeadsConfig, HeadsError
        from assistant.training.heads_store import check_name, default_name, run_dir_for

        if not answer["base"] or not answer["corpus"]:
            raise ValueError("add-heads needs a base (a .gguf file or a Hugging Face directory) and a corpus")
        # Absolute paths: a run's settings must read the same to resume it, wherever the UI started.
        base = str(Path(answer["base"]).expanduser().resolve())
        corpus = tuple(str(Path(path.strip()).expanduser().resolve()) for path in answer["corpus"].split(",")
                       if path.strip())
        try:
            minutes, heads = float(answer["minutes"]), int(answer["heads"])
        except ValueError:
            raise ValueError(f"minutes must be a number and heads a whole number, got {answer['minutes']!r}, "
                             f"{answer['heads']!r}") from None
        name = answer["name"] or default_name(base)
        try:
            check_name(self.store, name)
            config = HeadsConfig(base=base, corpus=corpus, run_dir=str(run_dir_for(self.store, name)), new_heads=heads,
                                 minutes=minutes, device=self.app.settings.train_device)
        except HeadsError as e:
            raise ValueError(str(e)) from None
        return config, name

    @work(thread=True, exit_on_error=False, group="operation")
    def _add_heads(self, config: HeadsConfig, name: str, cancel: threading.Event) -> None:
        from assistant.training.heads import HeadsError, HeadsStopped
        from assistant.training.heads_store import add_heads_to_store

        budget, last_post = config.minutes * 60, 0.0

        def on_step(step: int, record: dict) -> None:
            nonlocal last_post
            seconds = float(record["seconds"])
            if seconds >= budget:
                self.post_message(self.OperationProgress("add-heads: evaluating, writing the model", 1.0))
            elif time.monotonic() - last_post >= 0.25:  # a tiny base makes many steps a second
                last_post = time.monotonic()
                left = budget - seconds
                self.post_message(self.OperationProgress(
                    f"add-heads: step {step}, {int(left // 60)}:{int(left % 60):02d} left", seconds / budget))

        try:
            entry, result = add_heads_to_store(self.store, config, name, show_progress=False, on_step=on_step,
                                               stop=cancel)
        except HeadsStopped as e:
            self.post_message(self.OperationDone("add-heads stopped", True, str(e)))
        except (HeadsError, ModelFileError, StoreError, CorpusError, UserError) as e:
            self.post_message(self.OperationDone("add-heads", False, str(e)))
        except Exception as e:  # the operation must end (and say why) whatever happens
            self.post_message(self.OperationDone("add-heads", False, f"{type(e).__name__}: {e}"))
        else:
            after = " ".join(f"{a:.2f}" for a in result.final_eval["agreement_per_head"])
            note = result.corpus_note()
            self.post_message(self.OperationDone(
                "add-heads", True, f"added {entry.name}: {result.steps} steps, agreement per new head {after}"
                + (f"; {note}" if note else "")))


def serves_cell(m: ModelInfo) -> str:
    """The table's "serves" column: the bound repositories' folder names, shortened."""
    if not m.serves:
        return "-"
    first = Path(m.serves[0]).name or m.serves[0]
    return first[:14] + (f" +{len(m.serves) - 1}" if len(m.serves) > 1 else "")


def serves_line(m: ModelInfo) -> str:
    if m.serves:
        return f"serves: {escape(', '.join(m.serves))} ([b]u[/b] unbinds)"
    if m.is_default:
        return "serves: every repository without a model of its own"
    return ""
