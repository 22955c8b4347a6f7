"""Benchmark screen: a real (tiny) run fills the table and the chart."""

import pytest
from textual.widgets import DataTable, Input

from assistant.store import ModelStore

from .conftest import make_app, notifications, save_tiny, wait_for

pytestmark = pytest.mark.asyncio


async def test_bench_runs_in_a_worker_and_shows_every_k(home, tmp_path, code_repo):
    ModelStore(home).add(save_tiny(tmp_path / "tiny-a"), make_default=True)
    app = make_app(home, start_mode="bench", bench_prompts=str(code_repo), bench_limit=2, bench_max_new=12)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+b")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 4, timeout=60, what=f"the results {notifications(app)}")
        assert [table.get_row_at(i)[0] for i in range(4)] == ["1", "2", "3", "4"]
        assert table.get_row_at(0)[4] == "1.00x"  # k = 1 against itself
        summary = app.screen.query_one("#bench-summary").render().plain
        assert "all equal plain greedy" in summary and "on torch" in summary and "head accuracy 1.00 " in summary
        assert app.screen.query_one("#bench-engine").render().plain == "torch"
        assert [k for k, _ in app.screen.query_one("#bench-chart")._bars] == [1, 2, 3, 4]


async def test_bench_runs_on_llama_cpp_where_completions_do(home, tmp_path, code_repo):
    from models.gguf_export import export_model

    entry = ModelStore(home).add(save_tiny(tmp_path / "tiny-a"), make_default=True)
    export_model(entry.path, "q8_0")
    app = make_app(home, start_mode="bench", bench_prompts=str(code_repo), bench_limit=1, bench_max_new=8)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+b")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 4, timeout=60, what=f"the results {notifications(app)}")
        assert app.screen.query_one("#bench-engine").render().plain == "llama.cpp q8_0"
        summary = app.screen.query_one("#bench-summary").render().plain
        # Head accuracy is scored on the llama.cpp engine's own (quantized) heads.
        assert "on llama.cpp q8_0" in summary and "head accuracy 1.00" in summary
        assert table.get_row_at(1)[2] != "-"  # the tokens per forward that accuracy implies


async def test_bench_errors_are_notifications(home):
    app = make_app(home, start_mode="bench")
    async with app.run_test(size=(80, 24)) as pilot:
        app.screen.query_one("#bench-limit", Input).value = "x"
        await pilot.press("ctrl+b")
        await pilot.pause(0.2)
        app.screen.query_one("#bench-limit", Input).value = "1"
        await pilot.press("ctrl+b")  # no model in the store
        await wait_for(pilot, lambda: any("no default model" in m for m in notifications(app)), what="error")
        assert any("invalid literal" in m for m in notifications(app))
        assert app.is_running
