"""Server: the running language servers' stats, refreshed live from their stats files."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Static

from assistant.tui.screens.base import TuiScreen
from assistant.tui.servers import fmt, read_servers
from assistant.tui.widgets.nav import NavBar
from assistant.tui.widgets.stats_panel import StatsPanel


def home_relative(path: Path) -> str:
    """The path as a user would type it: under the home directory as ~/..."""
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


class ServerScreen(TuiScreen):
    class Read(Message):
        def __init__(self, servers: list[dict]):
            super().__init__()
            self.servers = servers

    def __init__(self):
        super().__init__()
        self.servers: list[dict] = []

    def compose(self) -> ComposeResult:
        yield NavBar("server", id="nav")
        with Vertical(id="server-body"):
            yield DataTable(id="server-table", cursor_type="row")
            yield StatsPanel("", id="server-detail")
            yield Static("", id="server-hint")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = "Language servers"
        self.query_one(DataTable).add_columns(
            "pid", "model", "engine", "requests", "p50 ms", "p95 ms", "tok/fwd", "accepted"
        )
        where = escape(home_relative(self.app.servers_dir / "*.json"))
        self.query_one("#server-hint", Static).update(f"[dim]read from {where}, refreshed every few seconds[/]")
        self._read()
        self.set_interval(self.app.settings.refresh_s * 2, self._read)

    @work(thread=True, exit_on_error=False, exclusive=True, group="servers")
    def _read(self) -> None:
        self.post_message(self.Read(read_servers(self.app.servers_dir)))

    def on_server_screen_read(self, message: Read) -> None:
        self.servers = message.servers
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for s in self.servers:
            latency = s.get("latency_ms") or {}
            table.add_row(
                str(s["pid"]) + (" (stale)" if s.get("stale") else ""),
                str(s.get("model", "?"))[-20:],
                str(s.get("engine", "?")),
                str(s.get("requests", 0)),
                fmt(latency.get("p50"), ".1f"),
                fmt(latency.get("p95"), ".1f"),
                fmt(s.get("tokens_per_forward")),
                fmt(s.get("acceptance_rate"), ".0%"),
            )
        if self.servers:
            table.move_cursor(row=min(max(row, 0), len(self.servers) - 1))
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        panel = self.query_one("#server-detail", StatsPanel)
        table = self.query_one(DataTable)
        if not self.servers:
            panel.show([("servers", "none running (start one with your editor's mtp-assistant language server)")])
            return
        s = self.servers[min(max(table.cursor_row, 0), len(self.servers) - 1)]
        latency = s.get("latency_ms") or {}
        positions = " ".join(f"{i + 1}: {a:.2f}" for i, a in enumerate(s.get("acceptance_per_position") or []) if a is not None)
        panel.show(
            [
                ("model", str(s.get("model", "?"))),
                (
                    "requests",
                    f"{s.get('requests', 0)}: {s.get('completions', 0)} completions, "
                    f"{s.get('cancelled', 0)} cancelled, {s.get('errors', 0)} errors",
                ),
                (
                    "latency",
                    f"p50 {fmt(latency.get('p50'), '.1f')} ms, p95 {fmt(latency.get('p95'), '.1f')} ms, "
                    f"p99 {fmt(latency.get('p99'), '.1f')} ms",
                ),
                ("decoding", f"{fmt(s.get('tokens_per_forward'))} tokens per forward; accepted per draft position {positions or '-'}"),
                ("cache", f"{s.get('cache_hits', 0)} hits ({fmt(s.get('cache_hit_rate'), '.0%')})"),
                (
                    "suggestions",
                    f"{s.get('shown', 0)} shown, {s.get('accepted', 0)} accepted ({fmt(s.get('acceptance_rate'), '.0%')})",
                ),
            ]
        )
