"""Benchmark: plain vs self-speculative decoding for a model, as a table and a bar chart,
on the engine completions use (llama.cpp where the model has a GGUF export, else torch)."""

from __future__ import annotations

import threading

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    ProgressBar,
    Static,
)

from assistant.bench import (
    BenchConfig,
    BenchResult,
    bench_engines,
    directory_prompts,
    humaneval_prompts,
    run_bench,
)
from assistant.store import StoreError
from assistant.training.corpus import CorpusError
from assistant.tui.screens.base import TuiScreen
from assistant.tui.widgets.bar_chart import SpeedupChart
from assistant.tui.widgets.model_picker import ModelPicker
from assistant.tui.widgets.nav import NavBar
from models.checkpoint import ModelFileError



class BenchCancelled(Exception):
    pass


class BenchScreen(TuiScreen):
    BINDINGS = [
        Binding("ctrl+b", "run", "Run"),
        Binding("escape", "cancel", "Cancel"),
    ]

    class Progress(Message):
        def __init__(self, done: int, total: int):
            super().__init__()
            self.done, self.total = done, total

    class Finished(Message):
        def __init__(self, result: BenchResult | None, error: str | None = None, engine: str = ""):
            super().__init__()
            self.result, self.error, self.engine = result, error, engine

    class EngineLoaded(Message):
        def __init__(self, engine: str):
            super().__init__()
            self.engine = engine

    def __init__(self):
        super().__init__()
        self._cancel = threading.Event()
        self._bench_running = False

    def compose(self) -> ComposeResult:
        settings = self.app.settings
        yield NavBar("bench", id="nav")
        with Vertical(id="bench-body"):
            with Horizontal(classes="field"):
                yield Label("model", classes="field-label")
                yield ModelPicker(id="bench-model")
            with Horizontal(classes="field"):
                yield Label("from", classes="field-label")
                yield Input(
                    settings.bench_prompts,
                    id="bench-prompts",
                    compact=True,
                    tooltip="'humaneval' or a directory of code",
                )
                yield Label("limit", classes="field-label-short")
                yield Input(str(settings.bench_limit), id="bench-limit", compact=True, type="integer")
                yield Label("new", classes="field-label-short")
                yield Input(str(settings.bench_max_new), id="bench-new", compact=True, type="integer")
                yield Button("Run", id="bench-run", variant="success", compact=True)
            with Horizontal(classes="field"):
                yield Label("engine", classes="field-label")
                yield Static("- (the one completions use: llama.cpp where exported, else torch)", id="bench-engine")
            yield ProgressBar(total=1, show_eta=False, id="bench-progress")
            yield DataTable(id="bench-table", cursor_type="none")
            yield Static("", id="bench-summary")
            yield SpeedupChart(id="bench-chart")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = "Benchmark"
        self.query_one(DataTable).add_columns("k", "tok/forward", "implied", "tok/s", "speedup", "acceptance")
        self.query_one("#bench-summary", Static).update(
            "Press ctrl+b (or Run) to decode the prompts with k = 1..n heads."
        )

    def on_screen_resume(self) -> None:
        self.query_one(ModelPicker).refresh_models()  # the store may have changed on another screen

    @on(Button.Pressed, "#bench-run")
    def action_run(self) -> None:
        if self._bench_running:
            self.notify("a benchmark is running (Esc cancels it)", severity="warning")
            return
        try:
            limit = int(self.query_one("#bench-limit", Input).value)
            max_new = int(self.query_one("#bench-new", Input).value)
            config = BenchConfig(max_new_tokens=max_new, limit=limit, warmup=min(1, limit))
            if limit < 1 or max_new < 1:
                raise ValueError("limit and new tokens must be positive")
        except ValueError as e:
            self.notify(str(e), severity="error")
            return
        model = self.query_one(ModelPicker).model
        self._bench_running = True
        self._cancel = threading.Event()
        self.query_one("#bench-summary", Static).update("loading the model...")
        self._run(model, self.query_one("#bench-prompts", Input).value.strip() or "humaneval", config, self._cancel)

    def action_cancel(self) -> None:
        self._cancel.set()

    @work(thread=True, exit_on_error=False, group="bench")
    def _run(self, model: str | None, prompts_from: str, config: BenchConfig, cancel: threading.Event) -> None:
        def progress(done: int, total: int) -> None:
            self.post_message(self.Progress(done, total))
            if cancel.is_set():
                raise BenchCancelled()  # run_bench calls back between prompts

        try:
            setup = bench_engines(self.app.store.resolve(model or "default"))  # the engine completions use
            engine = setup.first
            self.post_message(self.EngineLoaded(engine.label))
            prompts = humaneval_prompts() if prompts_from == "humaneval" else directory_prompts(prompts_from)
            self.post_message(self.Progress(0, min(config.limit or len(prompts), len(prompts))))
            result = run_bench(setup.engines, engine.tokenizer, prompts, config, progress, scorer=setup.scorer)
        except BenchCancelled:
            self.post_message(self.Finished(None, "cancelled"))
        except (StoreError, ModelFileError, CorpusError, ValueError, OSError) as e:
            self.post_message(self.Finished(None, str(e)))
        except Exception as e:  # anything else still ends the run cleanly, with its name
            self.post_message(self.Finished(None, f"{type(e).__name__}: {e}"))
        else:
            self.post_message(self.Finished(result, engine=engine.label))

    def on_bench_screen_engine_loaded(self, message: EngineLoaded) -> None:
        self.query_one("#bench-engine", Static).update(message.engine)

    def on_bench_screen_progress(self, message: Progress) -> None:
        self.query_one("#bench-progress", ProgressBar).update(total=max(1, message.total), progress=message.done)
        self.query_one("#bench-summary", Static).update(f"prompt {message.done}/{message.total}")

    def on_bench_screen_finished(self, message: Finished) -> None:
        self._bench_running = False
        if message.result is None:
            self.query_one("#bench-summary", Static).update(message.error or "")
            self.notify(
                message.error or "failed",
                title="benchmark",
                severity="warning" if message.error == "cancelled" else "error",
            )
            return
        self.show_result(message.result, message.engine)

    def show_result(self, result: BenchResult, engine: str = "torch") -> None:
        table = self.query_one(DataTable)
        table.clear()
        for r in result.rows:
            table.add_row(
                str(r.k),
                f"{r.tokens_per_forward:.2f}",
                f"{r.implied_tokens_per_forward:.2f}" if r.implied_tokens_per_forward is not None else "-",
                f"{r.tokens_per_s:.1f}",
                f"{r.speedup:.2f}x",
                " ".join(f"{a:.2f}" for a in r.acceptance) or "-",
            )
        # Head accuracy is scored with the torch model; a llama.cpp engine has none to lend.
        accuracy = " ".join(f"{a:.2f}" for a in result.head_accuracy) or f"not measured on {engine}"
        warn = (
            f"  [red]{result.mismatches} runs differ from plain decoding[/]"
            if result.mismatches
            else "  (all equal plain greedy)"
        )
        self.query_one("#bench-engine", Static).update(engine)
        self.query_one("#bench-summary", Static).update(
            f"{result.prompts} prompts on {engine}; head accuracy {accuracy}{warn}"
        )
        self.query_one(SpeedupChart).show([(r.k, r.speedup) for r in result.rows])
