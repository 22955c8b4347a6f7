"""Apps on a store in a temporary home, with tiny real models."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from assistant.tui import runs
from assistant.tui.app import MtpApp, TuiSettings
from models.checkpoint import save_model
from models.tokenizer import ByteTokenizer
from tests.assistant.engine.helpers import random_model


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The store's home; subprocesses (the CLI) see it through the environment too.
    Training processes a test started and left running are ended afterwards."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("MTP_ASSISTANT_HOME", str(path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield path
    for info in runs.list_runs(path / "runs"):
        if runs.is_running(info.path):
            os.kill(runs.recorded_pid(info.path), signal.SIGTERM)


def save_tiny(path: Path, n_future: int = 4, seed: int = 0, provenance: dict | None = None) -> Path:
    return save_model(path, random_model(n_future=n_future, seed=seed), ByteTokenizer(), provenance or {})


def make_app(home: Path, **settings) -> MtpApp:
    settings = {"store_root": home, "shipped_dir": None, "auto_complete": False, "refresh_s": 0.1} | settings
    return MtpApp(TuiSettings(**settings))


async def wait_for(pilot, condition, timeout: float = 30.0, what: str = "condition"):
    """Let the app run until condition() holds (workers post their messages meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)
        await asyncio.sleep(0.05)


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


async def settle(pilot):
    """Wait until every DataTable has laid out its rows (it does so when the app is idle,
    which under load can lag behind the data) and the screen has redrawn. Cursors stop
    blinking: a snapshot must not depend on when the blink timer last fired."""
    from textual.widgets import DataTable, Input, TextArea

    app = pilot.app
    for widget in [*app.screen.query(Input), *app.screen.query(TextArea)]:
        widget.cursor_blink = False
    await wait_for(pilot, lambda: not any(t._require_update_dimensions for t in app.screen.query(DataTable)), what="layout")
    await pilot.pause(0.2)
