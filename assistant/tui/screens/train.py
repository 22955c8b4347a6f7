"""Train: fine-tune (or train from scratch) on a repository, as a background process,
with a live plot of the loss per head. Runs survive the UI: it re-attaches to them.

One key tunes the repository instead (`mtp-assistant tune`: its recipe and time box, the
model bound to the repository at the end): a run like the others, whose before/after
report is shown when it ends."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
)
from textual.worker import get_current_worker

from assistant.store import ModelStore, StoreError
from assistant.training.corpus import CorpusError, build_corpus
from assistant.training.config import TrainConfig
from assistant.training.tune import TuneConfig, TuneError, TunePlan, describe_changes, plan_tune, report_rows
from assistant.tui import runs
from assistant.tui.models_info import human_count
from assistant.tui.screens.base import TuiScreen
from assistant.tui.widgets.before_after import BeforeAfter
from assistant.tui.widgets.loss_plot import LossPlot
from assistant.tui.widgets.model_picker import ModelPicker
from assistant.tui.widgets.nav import NavBar
from assistant.tui.widgets.stats_panel import StatsPanel
from models.checkpoint import ModelFileError, read_config
from models.tokenizer import TokenizerError, load_tokenizer

SCRATCH = "__scratch__"
PREVIEW_DELAY_S = 0.5  # after the last keystroke in the repo field
NO_REPO = "type the path of the repository to learn"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def corpus_preview(repo: str, base_model: str | None) -> str:
    """What training on `repo` would read (raises CorpusError / ModelFileError)."""
    corpus = build_corpus(repo)
    summary = corpus.summary()
    n_bytes = summary["train"]["bytes"] + summary["val"]["bytes"]
    tokens = f"{human_count(n_bytes)} byte tokens"
    if base_model is not None:
        _, tok_config, _ = read_config(base_model)
        if tok_config.get("kind") != "byte":
            try:
                tokenizer = load_tokenizer(Path(base_model), tok_config)
            except TokenizerError as e:
                raise ModelFileError(base_model, str(e)) from None
            count = sum(len(tokenizer.encode(f.text)) for f in corpus.train + corpus.val)
            tokens = f"{human_count(count)} tokens"
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items() if n) or "nothing"
    return (
        f"{summary['train']['files']} train + {summary['val']['files']} val files, "
        f"{n_bytes / 1e3:.0f} kB, {tokens}\nskipped: {skipped}"
    )


def _model_label(path: Path, store: ModelStore) -> str:
    shipped = store.shipped_dir is not None and path.resolve() == store.shipped_dir.resolve()
    return "the shipped model" if shipped else path.name


def nothing_changed(plan: TunePlan, config: TuneConfig) -> bool:
    """Where tune would do nothing: a re-tune with no file changed and no time box asked for."""
    return (not plan.resuming and plan.changes is not None and not plan.changes["changed_files"]
            and config.minutes is None and config.steps is None)


def describe_plan(plan: TunePlan, config: TuneConfig, store: ModelStore) -> str:
    """What the tune key would do, in a line or two."""
    base = _model_label(plan.base, store)
    if plan.resuming:
        return f"resumes its interrupted tune (from {base})"
    if plan.changes is None:
        return f"first tune of {plan.repo.name}, from {base}"
    if nothing_changed(plan, config):
        return f"nothing changed since its last tune ({base}): nothing to do"
    return f"from its last tune ({base}); since then {describe_changes(plan.changes)}"


def report_outcome(report: dict[str, Any]) -> str:
    run = report["run"]
    kept = f"kept step {run['best_step']} of {run['steps']} ({run['stopped']})"
    if report.get("after") is None:
        return f"no checkpoint beat {Path(report['base']).name}: the model stays as it was"
    return f"{report['name']} now serves {Path(report['repo']).name}; {kept}"


class TrainScreen(TuiScreen):
    BINDINGS = [
        Binding("ctrl+s", "start", "Start"),
        Binding("ctrl+t", "stop", "Stop"),
        Binding("ctrl+r", "resume", "Resume"),
        Binding("ctrl+o", "preview", "Preview corpus"),
        Binding("ctrl+n", "tune", "Tune repo"),
    ]

    class Preview(Message):
        def __init__(self, text: str, ok: bool, tune: str):
            super().__init__()
            self.text, self.ok, self.tune = text, ok, tune

    class RunsListed(Message):
        def __init__(self, infos: list[runs.RunInfo]):
            super().__init__()
            self.infos = infos

    class MetricsUpdate(Message):
        def __init__(
            self, run_dir: Path, records: list[dict[str, Any]], reset: bool, info: runs.RunInfo, settings: str | None,
            report: dict[str, Any] | None = None, phase: str = "",
        ):
            super().__init__()
            self.run_dir, self.records, self.reset, self.info, self.settings = run_dir, records, reset, info, settings
            self.report, self.phase = report, phase  # a tune's: its report when it ended, its latest log line

    class StartRefused(Message):
        def __init__(self, error: str):
            super().__init__()
            self.error = error

    def __init__(self):
        super().__init__()
        self.run_infos: list[runs.RunInfo] = []
        self.attached: Path | None = None  # the run whose metrics are shown
        self.records: list[dict[str, Any]] = []
        self._procs: dict[Path, subprocess.Popen] = {}  # runs started by this UI: reaped when they end
        self._preview_timer: Timer | None = None
        self._runs_shown: tuple | None = None  # (run infos, attached run) the table shows

    def compose(self) -> ComposeResult:
        settings = self.app.settings
        yield NavBar("train", id="nav")
        with Horizontal(id="train-body"):
            with Vertical(id="train-form"):
                with Horizontal(classes="field"):
                    yield Label("repo", classes="field-label")
                    yield Input(settings.repo, id="repo", compact=True, placeholder="path of the repository to learn")
                yield Static("", id="corpus-preview")
                yield Static("", id="tune-preview")
                with Horizontal(classes="field"):
                    yield Label("base", classes="field-label")
                    yield ModelPicker(
                        extra=("from scratch (tiny)", SCRATCH), id="base",
                        tooltip="the model to fine-tune (the default model unless chosen), or a tiny one from scratch",
                    )
                with Horizontal(classes="field"):
                    yield Label("train", classes="field-label")
                    yield Select(
                        [("whole model", "full"), ("heads only", "heads")],
                        value="full",
                        allow_blank=False,
                        id="finetune",
                        compact=True,
                    )
                with Horizontal(classes="field"):
                    yield Label("steps", classes="field-label")
                    yield Input(str(settings.train_steps), id="steps", compact=True, type="integer")
                    yield Label("lr", classes="field-label-short")
                    yield Input(repr(settings.train_lr), id="lr", compact=True, type="number")
                with Horizontal(classes="field"):
                    yield Label("seq", classes="field-label")
                    yield Input(str(settings.train_seq_len), id="seq-len", compact=True, type="integer")
                    yield Label("batch", classes="field-label-short")
                    yield Input(str(settings.train_batch_size), id="batch-size", compact=True, type="integer")
                with Horizontal(id="train-buttons"):
                    yield Button("Start", id="start", variant="success", compact=True)
                    yield Button("Stop", id="stop", variant="error", compact=True)
                    yield Button("Resume", id="resume", variant="primary", compact=True)
                    yield Button("Tune", id="tune", variant="warning", compact=True,
                                 tooltip="tune this repository: tune's recipe in its time box, then serve it here")
                yield DataTable(id="runs-table", cursor_type="row")
            with Vertical(id="train-live"):
                yield LossPlot(id="loss-plot")
                yield StatsPanel(id="train-stats")
                yield BeforeAfter(id="tune-report")
                yield ProgressBar(total=1, show_eta=False, id="train-progress")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = "Train"
        self.query_one("#runs-table", DataTable).add_columns("run", "state")  # sized as rows come
        self.query_one("#train-stats", StatsPanel).show([("run", "none yet: press Start")])
        self.query_one("#tune-report", BeforeAfter).display = False
        self.action_preview()
        self._list_runs(first=True)
        self.set_interval(self.app.settings.refresh_s * 4, self._list_runs)

    def on_screen_resume(self) -> None:
        # The store may have changed on another screen.
        self.query_one("#base", ModelPicker).refresh_models()
        self._list_runs()

    # --- corpus preview ---

    def _base_model(self) -> str | None:
        """The base to train from: a model directory, None from scratch (raises StoreError
        for the default model where the store has none)."""
        picker = self.query_one("#base", ModelPicker)
        if picker.extra_chosen:
            return None
        return picker.model or str(self.app.store.resolve(None))

    def _tune_config(self) -> TuneConfig:
        """The tune the key starts: the app's tune settings on the repository typed, from the
        model chosen (else tune's choice: the repository's last tuned model or the default)."""
        repo = self.query_one("#repo", Input).value.strip()
        if not repo:
            raise ValueError(NO_REPO)
        tune = self.app.settings.tune
        device = self.app.settings.train_device if tune.device == TuneConfig.device else tune.device
        return dataclasses.replace(tune, repo=repo, base=self.query_one("#base", ModelPicker).model, device=device)

    def action_preview(self) -> None:
        repo = self.query_one("#repo", Input).value.strip()
        if not repo:
            self.query_one("#corpus-preview", Static).update(NO_REPO)
            self.query_one("#tune-preview", Static).update("")
            return
        self.query_one("#corpus-preview", Static).update("reading the repository...")
        self._preview(repo, self.query_one("#base", ModelPicker).extra_chosen, self._tune_config())

    @on(Input.Submitted, "#repo")
    def _repo_submitted(self) -> None:
        self.action_preview()

    @on(Input.Changed, "#repo")
    def _repo_changed(self) -> None:
        # The preview must not describe another repository than the one typed.
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(PREVIEW_DELAY_S, self.action_preview)

    @on(Select.Changed, "#base")
    def _base_changed(self) -> None:
        self.action_preview()  # the picker says only real changes, not a refresh of its options

    @work(thread=True, exit_on_error=False, exclusive=True, group="preview")
    def _preview(self, repo: str, scratch: bool, tune: TuneConfig) -> None:
        try:
            base = None if scratch else tune.base or str(self.app.store.resolve(None))
            text = corpus_preview(repo, base)
        except (CorpusError, ModelFileError, StoreError, OSError) as e:
            self.post_message(self.Preview(str(e), False, ""))
            return
        try:
            plan = describe_plan(plan_tune(tune, self.app.store), tune, self.app.store)
        except (TuneError, CorpusError, ModelFileError, StoreError, OSError) as e:
            plan = f"[red]{escape(str(e))}[/]"
        # tune starts from a model: "from scratch" is the train button's alone.
        scratch_note = " (tune starts from a model, not from scratch)" if scratch else ""
        self.post_message(self.Preview(text, True, f"[b]tune[/b] {plan}{scratch_note}"))

    def on_train_screen_preview(self, message: Preview) -> None:
        text = escape(message.text)
        self.query_one("#corpus-preview", Static).update(text if message.ok else f"[red]{text}[/]")
        self.query_one("#tune-preview", Static).update(message.tune)
        if not message.ok:
            self.notify(message.text, title="corpus", severity="error", timeout=8)

    # --- runs ---

    def _list_runs(self, first: bool = False) -> None:
        for path, proc in list(self._procs.items()):
            if proc.poll() is not None:  # reap it: a zombie would look alive
                del self._procs[path]
        self._list_runs_worker(first)

    @work(thread=True, exit_on_error=False, group="runs")
    def _list_runs_worker(self, first: bool) -> None:
        infos = runs.list_runs(self.app.runs_dir)
        self.post_message(self.RunsListed(infos))
        if first and infos and self.attached is None:
            running = [i for i in infos if i.state == runs.RUNNING]
            self.app.call_from_thread(self.attach, (running or infos)[0].path)

    def on_train_screen_runs_listed(self, message: RunsListed) -> None:
        shown = (message.infos, self.attached)
        if shown == self._runs_shown:
            return  # unchanged: keep the table (and its cursor) as it is
        self._runs_shown = shown
        self.run_infos = message.infos
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        rows = []
        for info in message.infos:
            mark = ">" if info.path == self.attached else " "
            done = f" {info.step / info.steps:.0%}" if info.steps and info.state in (runs.RUNNING, runs.STOPPED) else ""
            kind = "tune " if info.kind == runs.TUNE else ""
            rows.append((f"{mark}{info.name}", f"{kind}{info.state}{done}", str(info.path)))
        # Columns as wide as their widest cell, set here: DataTable's own sizing of columns
        # renders rows added after a clear() at the width they had before.
        table.clear(columns=True)
        table.add_column("run", width=max([3, *(len(r[0]) for r in rows)]))
        table.add_column("state", width=max([5, *(len(r[1]) for r in rows)]))
        for name, state, key in rows:
            table.add_row(name, state, key=key)
        if message.infos:
            table.move_cursor(row=min(max(row, 0), len(message.infos) - 1))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runs-table" and event.row_key.value:
            self.attach(Path(event.row_key.value))

    def selected_run(self) -> Path | None:
        table = self.query_one("#runs-table", DataTable)
        if self.run_infos and 0 <= table.cursor_row < len(self.run_infos):
            return self.run_infos[table.cursor_row].path
        return self.attached

    def attach(self, run_dir: Path) -> None:
        """Show this run's metrics from the start, then follow them."""
        self.attached = run_dir
        self.records = []
        self.query_one(LossPlot).show([])
        self.query_one("#tune-report", BeforeAfter).display = False
        self._tail(run_dir)
        self._list_runs()

    @work(thread=True, exit_on_error=False, exclusive=True, group="tail")
    def _tail(self, run_dir: Path) -> None:
        worker = get_current_worker()
        tail = runs.MetricsTail(runs.metrics_path(run_dir))
        settings = None

        def read() -> tuple[list[dict[str, Any]], bool]:
            nonlocal tail
            path = runs.metrics_path(run_dir)  # a tune's moves into its model at the end
            if path == tail.path:
                return tail.read_new()
            tail = runs.MetricsTail(path)
            return tail.read_new()[0], True

        while not worker.is_cancelled:
            records, reset = read()
            info = runs.describe_run(run_dir)
            settings = runs.describe_settings(run_dir) or settings  # written once the trainer starts
            tune = info.kind == runs.TUNE
            phase = runs.log_tail(run_dir, 1) if tune else ""
            if info.state != runs.RUNNING:
                more, again = read()  # whatever it wrote before it ended
                records, reset = (more, True) if again else (records + more, reset)
                report = runs.tune_report(run_dir) if tune else None
                self.post_message(self.MetricsUpdate(run_dir, records, reset, info, settings, report, phase))
                return
            self.post_message(self.MetricsUpdate(run_dir, records, reset, info, settings, None, phase))
            time.sleep(self.app.settings.refresh_s)

    def on_train_screen_metrics_update(self, message: MetricsUpdate) -> None:
        if message.run_dir != self.attached:
            return
        if message.reset:
            self.records = []
        if message.records or message.reset:
            self.records.extend(message.records)
            self.query_one(LossPlot).show(self.records)
        info = message.info
        p = runs.summarize(self.records, info.steps, since=info.started)
        kind = "tune " if info.kind == runs.TUNE else ""
        rows = [("run", f"{info.name} ({kind}{info.state})")]
        if message.report is not None:  # the table below says the rest
            rows.append(("result", report_outcome(message.report)))
            self._show_progress(rows, p, message.report)
            return
        if message.settings:
            rows.append(("settings", message.settings))
        if message.phase and info.state == runs.RUNNING:
            rows.append(("log", message.phase))  # what it is doing besides training steps
        if p.loss is not None:
            eta = _duration(p.eta_s) if info.state == runs.RUNNING else "-"
            rows.append(("step", f"{p.step}/{p.steps}   {p.tokens_per_s or 0:,.0f} tok/s   ETA {eta}"))
            val = f"   val {p.val_loss:.3f}" if p.val_loss is not None else ""
            rows.append(("loss", f"train {p.loss:.3f}{val}  (sum of heads)"))
        if p.val_accuracy:
            rows.append(("val acc", " ".join(f"h{i + 1} {a:.0%}" for i, a in enumerate(p.val_accuracy))))
        elif p.val_agreement:  # heads 2..n, against the model's own greedy tokens
            rows.append(("val agree", " ".join(f"h{i + 2} {a:.0%}" for i, a in enumerate(p.val_agreement))))
        if info.state == runs.FAILED or (kind and info.state == runs.STOPPED):
            rows.append(("log", runs.log_tail(info.path, 2) or "(empty)"))
        self._show_progress(rows, p, None)

    def _show_progress(self, rows: list[tuple[str, str]], p: runs.Progress, report: dict[str, Any] | None) -> None:
        """The stats, and a progress bar while there is no tune report to show instead."""
        self.query_one("#train-stats", StatsPanel).show(rows)
        bar = self.query_one("#train-progress", ProgressBar)
        bar.update(total=max(1, p.steps), progress=p.step)
        table = self.query_one("#tune-report", BeforeAfter)
        if report is not None:
            table.show(report_rows(report, compact=True))
        bar.display = report is None
        table.display = report is not None

    # --- start / stop / resume ---

    def _config(self) -> TrainConfig:
        def number(id: str, kind):
            text = self.query_one(f"#{id}", Input).value.strip()
            try:
                return kind(text)
            except ValueError:
                raise ValueError(f"{id}: not a number: {text!r}") from None

        repo = self.query_one("#repo", Input).value.strip()
        if not repo:
            raise ValueError(NO_REPO)
        return runs.train_config(
            runs.new_run_dir(self.app.runs_dir, repo),
            repo=repo,
            base_model=self._base_model(),
            finetune=str(self.query_one("#finetune", Select).value),
            steps=number("steps", int),
            lr=number("lr", float),
            seq_len=number("seq-len", int),
            batch_size=number("batch-size", int),
            device=self.app.settings.train_device,
        )

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        try:
            config = self._config()  # a TrainError is a ValueError: its message is the user's
            if not Path(config.repo).is_dir():
                raise ValueError(f"not a directory: {config.repo}")
        except (ValueError, StoreError) as e:
            self.notify(str(e), title="cannot start", severity="error")
            return
        self._check_and_start(config)

    @work(thread=True, exit_on_error=False, exclusive=True, group="start")
    def _check_and_start(self, config: TrainConfig) -> None:
        """Refuse a repository without code before a process is started for it (the
        trainer would only fail, after loading the base model)."""
        try:
            build_corpus(config.repo)
        except (CorpusError, OSError) as e:
            self.post_message(self.StartRefused(str(e)))
            return
        self.app.call_from_thread(self._start, config)

    def on_train_screen_start_refused(self, message: StartRefused) -> None:
        self.notify(message.error, title="cannot start", severity="error", timeout=8)

    def _start(self, config: TrainConfig) -> None:
        run_dir = Path(config.out_dir)
        try:
            proc = runs.start_run(config)
        except (ValueError, OSError, StoreError) as e:
            self.notify(str(e), title="cannot start", severity="error")
            return
        self._procs[run_dir] = proc
        self.notify(f"training in the background: {run_dir.name} (pid {proc.pid})", title="started")
        self.attach(run_dir)

    @on(Button.Pressed, "#tune")
    def action_tune(self) -> None:
        try:
            config = self._tune_config()
            runs.tune_command(config)  # a setting the command cannot take fails here, not in the process
        except ValueError as e:
            self.notify(str(e), title="cannot tune", severity="error")
            return
        self._plan_and_tune(config)

    @work(thread=True, exit_on_error=False, exclusive=True, group="start")
    def _plan_and_tune(self, config: TuneConfig) -> None:
        """What tune refuses (too little code, nothing changed), refused before a process
        is started, in tune's words."""
        store = self.app.store
        try:
            plan = plan_tune(config, store)
        except (TuneError, CorpusError, ModelFileError, StoreError, OSError) as e:
            self.post_message(self.StartRefused(str(e)))
            return
        other = runs.running_tune_of(self.app.runs_dir, plan.run_dir)
        if other is not None:
            self.post_message(self.StartRefused(f"{other.name} is tuning {plan.repo.name} already"))
        elif nothing_changed(plan, config):
            self.post_message(self.StartRefused(f"{plan.repo}: {describe_plan(plan, config, store)}"))
        else:
            self.app.call_from_thread(self._start_tune, config, plan)

    def _start_tune(self, config: TuneConfig, plan: TunePlan) -> None:
        store = self.app.store
        try:
            run_dir, proc = runs.start_tune(self.app.runs_dir, config, plan, store.models_dir / plan.name)
        except (ValueError, OSError) as e:
            self.notify(str(e), title="cannot tune", severity="error")
            return
        self._procs[run_dir] = proc
        self.notify(f"{plan.repo.name}: {describe_plan(plan, config, store)}; {run_dir.name} (pid {proc.pid})",
                    title="tuning in the background", timeout=8)
        self.attach(run_dir)

    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        run_dir = self.attached
        if run_dir is None or not runs.stop_run(run_dir):
            self.notify("no running run is shown", severity="warning")
            return
        self.notify(f"stopping {run_dir.name}: resume continues from its last checkpoint", title="stop")

    @on(Button.Pressed, "#resume")
    def action_resume(self) -> None:
        run_dir = self.selected_run()
        if run_dir is None:
            self.notify("select a stopped run to resume", severity="warning")
            return
        try:
            self._procs[run_dir] = runs.resume_run(run_dir)
        except (ValueError, OSError) as e:
            self.notify(str(e), title="cannot resume", severity="error")
            return
        self.notify(f"resuming {run_dir.name}", title="resume")
        self.attach(run_dir)

    def running_runs(self) -> list[Path]:
        return [info.path for info in runs.list_runs(self.app.runs_dir) if info.state == runs.RUNNING]
