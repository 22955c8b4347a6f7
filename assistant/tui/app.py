"""The `mtp-assistant tui` app: five screens (modes), switched with F1..F5."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from assistant.completion.settings import CompletionSettings
from assistant.store import ModelStore
from assistant.training.tune import TuneConfig
from assistant.tui import runs
from assistant.tui.screens import SCREENS
from assistant.tui.widgets.dialogs import QuitDialog
from models import SHIPPED_MODEL_DIR

PLAYGROUND_TEXT = '''def fibonacci(n):
    """The n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def factorial(n):
    '''


@dataclass
class TuiSettings:
    """What the screens start from; the CLI and the tests set them."""

    store_root: Path | None = None  # None: $MTP_ASSISTANT_HOME or the OS's data dir
    shipped_dir: Path | None = SHIPPED_MODEL_DIR  # listed as a model when present; None hides it
    repo: str = "."
    train_steps: int = 200
    train_lr: float = 1e-3
    train_seq_len: int = 256
    train_batch_size: int = 8
    train_device: str = "auto"
    # The Train screen's tune key: `mtp-assistant tune` with these settings (its recipe and
    # time box unless set; only those it has options for), on the screen's repository and base.
    tune: TuneConfig = TuneConfig()
    playground_text: str = PLAYGROUND_TEXT
    auto_complete: bool = True  # complete after a pause in typing
    complete_delay_s: float = 0.3
    # The playground's completions: the language server's own defaults unless set.
    completion: CompletionSettings = CompletionSettings()
    bench_prompts: str = "humaneval"
    bench_limit: int = 5
    bench_max_new: int = 64
    refresh_s: float = 0.5  # how often live views read their files
    start_mode: str = "models"


class MtpApp(App):
    TITLE = "mtp-assistant"
    CSS_PATH = "app.tcss"
    MODES = {entry.mode: entry.load() for entry in SCREENS}
    BINDINGS = [
        *(Binding(e.key, f"switch_mode('{e.mode}')", e.label, show=False) for e in SCREENS),  # in the NavBar
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, settings: TuiSettings | None = None):
        super().__init__()
        self.settings = settings or TuiSettings()
        self.store = ModelStore(self.settings.store_root, shipped_dir=self.settings.shipped_dir)

    @property
    def runs_dir(self) -> Path:
        return self.store.root / "runs"

    @property
    def servers_dir(self) -> Path:
        return self.store.root / "servers"

    def on_mount(self) -> None:
        self.switch_mode(self.settings.start_mode)

    async def action_quit(self) -> None:
        """Training runs go on in the background; say so, and offer to stop them."""
        running = [info for info in runs.list_runs(self.runs_dir) if info.state == runs.RUNNING]
        if not running:
            self.exit()
            return

        def answer(choice: str | None) -> None:
            if choice == "stop":
                for info in running:
                    runs.stop_run(info.path)
                self.exit(message="stopped the training runs; resume them from the Train screen")
            elif choice == "leave":
                names = ", ".join(f"{i.name} (pid {runs.recorded_pid(i.path)})" for i in running)
                self.exit(message=f"training continues in the background: {names}; `mtp-assistant tui` re-attaches")

        self.push_screen(QuitDialog([info.name for info in running]), answer)
