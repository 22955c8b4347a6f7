"""What every screen shares: a worker that fails unexpectedly becomes an error
notification, never a traceback that ends the app (the workers catch the errors they
expect and say them better)."""

from __future__ import annotations

from textual.screen import Screen
from textual.worker import Worker, WorkerState


class TuiScreen(Screen):
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            self.notify(f"{type(error).__name__}: {error}", title="unexpected error", severity="error", timeout=10)
