"""Server screen: the stats files of live language servers, refreshed."""

import json
import os
import subprocess
import sys

import pytest
from textual.widgets import DataTable

from assistant.tui.servers import read_servers

from .conftest import make_app, wait_for

pytestmark = pytest.mark.asyncio


def stats(pid: int, **changes) -> dict:
    data = {
        "pid": pid,
        "started": 1.0,
        "updated": 2.0,
        "model": "tiny-a",
        "engine": "torch",
        "requests": 12,
        "completions": 10,
        "cancelled": 2,
        "errors": 0,
        "latency_ms": {"p50": 21.5, "p95": 48.25, "p99": 60.0},
        "tokens_per_forward": 2.37,
        "acceptance_per_position": [0.8, 0.55, None],
        "cache_hits": 3,
        "cache_hit_rate": 0.25,
        "shown": 9,
        "accepted": 4,
        "acceptance_rate": 0.444,
    }
    return data | changes


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_server_stats_are_shown_and_refreshed(home):
    servers = home / "servers"
    servers.mkdir()
    live = servers / f"{os.getpid()}.json"
    live.write_text(json.dumps(stats(os.getpid())))
    (servers / "1.json").write_text("{torn")  # fails to parse: ignored
    gone = dead_pid()
    (servers / f"{gone}.json").write_text(json.dumps(stats(gone)))  # its server is gone: ignored
    assert [s["pid"] for s in read_servers(servers)] == [os.getpid()]

    app = make_app(home, start_mode="server")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, what="the server row")
        row = table.get_row_at(0)
        assert row[0].startswith(str(os.getpid())) and row[3] == "12" and row[4] == "21.5" and row[6] == "2.37"
        detail = app.screen.query_one("#server-detail").plain
        assert "p95 48.2" in detail and "accepted per draft position 1: 0.80 2: 0.55" in detail and "3:" not in detail and "3 hits (25%)" in detail

        # Replaced atomically, as the server does: a plain rewrite can be read half-written by
        # the screen's reader thread, which then skips the file and shows no row for a moment.
        update = live.with_suffix(".tmp")
        update.write_text(json.dumps(stats(os.getpid(), requests=13, latency_ms={"p50": 19.0, "p95": None, "p99": None})))
        os.replace(update, live)
        await wait_for(pilot, lambda: table.get_row_at(0)[3] == "13", what="the refresh")
        assert table.get_row_at(0)[5] == "-"

        live.unlink()  # a clean exit deletes the file
        await wait_for(pilot, lambda: table.row_count == 0, what="the server to go")


async def test_the_hint_names_the_real_stats_directory(home):
    app = make_app(home, start_mode="server")
    async with app.run_test(size=(120, 24)) as pilot:
        await pilot.pause(0.1)
        hint = app.screen.query_one("#server-hint").render().plain
        assert "<" not in hint and str(home / "servers" / "*.json") in hint
