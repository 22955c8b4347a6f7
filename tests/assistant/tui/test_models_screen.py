"""Models screen: list, import (ours and Meta's layout), remove with confirmation, errors."""

import json

import pytest
from textual.widgets import DataTable, Input, Select, Static

from assistant.store import ModelStore

from .conftest import make_app, notifications, save_tiny, wait_for

pytestmark = pytest.mark.asyncio


def table_names(app) -> list[str]:
    return [m.name for m in app.screen.models]


def stored(home) -> list[str]:
    """The store's own models (the shipped one is listed too, but is not in the store)."""
    return [e.name for e in ModelStore(home).list() if not e.shipped]


async def test_import_and_remove_a_model(home, tmp_path):
    source = save_tiny(tmp_path / "src" / "tiny-a", provenance={"trained_by": "test", "val_loss": 5.5})
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(
            pilot, lambda: app.screen.query_one("#model-detail", Static).render().plain != "", what="listing"
        )
        assert table_names(app) == []
        await pilot.press("i")
        await wait_for(pilot, lambda: app.screen.query(Input), what="import dialog")
        app.screen.query_one(Input).value = str(source)
        await pilot.press("enter")
        await wait_for(pilot, lambda: table_names(app) == ["tiny-a"], what="imported model in the table")
        assert stored(home) == ["tiny-a"]
        row = app.screen.models[0]
        assert row.n_future == 4 and row.tokenizer == "byte" and not row.is_default  # adding never changes the default
        assert "val_loss: 5.5" in app.screen.query_one("#model-detail", Static).render().plain
        assert app.screen.query_one(DataTable).row_count == 1

        await pilot.press("x")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: table_names(app) == [], what="removal")
        assert stored(home) == []
        assert any("removed tiny-a" in m for m in notifications(app))


async def test_remove_asks_first_and_cancel_keeps_the_model(home, tmp_path):
    ModelStore(home).add(save_tiny(tmp_path / "tiny-a"))
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table_names(app) == ["tiny-a"], what="listing")
        await pilot.press("x")
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert stored(home) == ["tiny-a"]


async def test_errors_are_notifications_and_the_app_keeps_running(home, tmp_path):
    store = ModelStore(home)
    store.add(save_tiny(tmp_path / "good"))
    bad = store.models_dir / "corrupt"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    meta = tmp_path / "meta-release"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 2, "n_heads": 4, "n_future_tokens": 2}))
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(app.screen.models) == 2, what="listing")
        corrupt = next(m for m in app.screen.models if m.name == "corrupt")
        assert corrupt.error and "not valid JSON" in corrupt.error

        # A directory that is not a model: the store's one-line error.
        await pilot.press("i")
        await wait_for(pilot, lambda: app.screen.query(Input), what="import dialog")
        app.screen.query_one(Input).value = str(tmp_path / "nothing-here")
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("does not exist" in m for m in notifications(app)), what="import error")

        # Meta's layout goes through `mtp-assistant models import` (a subprocess): whatever
        # it says on failure becomes the notification.
        await pilot.press("i")
        await wait_for(pilot, lambda: app.screen.query(Input), what="import dialog")
        app.screen.query_one(Input).value = str(meta)
        await pilot.press("enter")
        failed = lambda: [n for n in app._notifications if n.title == "import failed"]  # noqa: E731
        await wait_for(pilot, lambda: len(failed()) == 2 and not app.screen._busy, timeout=60, what="subprocess import")
        assert failed()[1].severity == "error" and failed()[1].message.strip()
        assert len(stored(home)) == 2  # nothing half-imported
        assert app.is_running
        # Exporting the unreadable model is refused up front.
        app.screen.query_one(DataTable).move_cursor(row=table_names(app).index("corrupt"))
        await pilot.press("e")
        await wait_for(pilot, lambda: any("readable model" in m for m in notifications(app)), what="export refusal")


async def test_import_a_meta_release_through_the_cli(home, tmp_path):
    from tests.models.meta_release import (
        PARAMS,
        meta_state_dict,
        train_sentencepiece,
        write_release,
    )

    release = write_release(tmp_path / "meta" / "7B_tiny", PARAMS, meta_state_dict(PARAMS), train_sentencepiece(), True)
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("i")
        await wait_for(pilot, lambda: app.screen.query(Input), what="import dialog")
        app.screen.query_one(Input).value = str(release)
        await pilot.press("enter")
        await wait_for(pilot, lambda: table_names(app) == ["7B_tiny"], timeout=90, what=f"import {notifications(app)}")
        model = app.screen.models[0]
        assert model.n_future == 3 and model.tokenizer == "sentencepiece" and model.provenance["source"] == "meta-release"
        assert "imported 7B_tiny" in notifications(app)
        assert "made by: meta-release" in app.screen.query_one("#model-detail", Static).render().plain


async def test_export_runs_the_cli_and_lists_the_quantization(home, tmp_path):
    from models.checkpoint import save_model
    from models.tokenizer import ByteTokenizer
    from tests.assistant.engine.helpers import random_model

    ModelStore(home).add(save_model(tmp_path / "m64", random_model(dim=64, n_layers=4), ByteTokenizer()))
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table_names(app) == ["m64"], what="listing")
        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.query("#choice"), what="quantization dialog")
        await pilot.click("#ok")  # the first choice: q8_0
        await wait_for(pilot, lambda: not app.screen._busy and app.screen.models[0].quantizations, timeout=120,
                       what=f"export {notifications(app)}")
        assert app.screen.models[0].quantizations == ("q8_0",)
        assert "exported m64 (q8_0)" in notifications(app)


async def test_bound_repositories_show_and_unbind_asks_first(home, tmp_path):
    store = ModelStore(home)
    store.add(save_tiny(tmp_path / "tiny-a"))
    store.add(save_tiny(tmp_path / "tiny-b", seed=1), make_default=True)
    one, two = tmp_path / "alpha", tmp_path / "beta"
    one.mkdir(), two.mkdir()
    store.bind(one, "tiny-a")
    store.bind(two, "tiny-a")
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table_names(app) == ["tiny-a", "tiny-b"], what="listing")
        table = app.screen.query_one(DataTable)
        assert table.get_row_at(0)[-1] == "alpha +1" and table.get_row_at(1)[-1] == "-"
        detail = lambda: app.screen.query_one("#model-detail", Static).render().plain  # noqa: E731
        assert f"serves: {one.resolve()}, {two.resolve()}" in detail()

        # Two repositories: which one first, then a confirmation; Esc there keeps the binding.
        await pilot.press("u")
        await wait_for(pilot, lambda: app.screen.query("#choice"), what="repository choice")
        app.screen.query_one("#choice", Select).value = str(two.resolve())
        await pilot.click("#ok")
        await wait_for(pilot, lambda: app.screen.query("#yes"), what="confirmation")
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert store.bindings() == {str(one.resolve()): "tiny-a", str(two.resolve()): "tiny-a"}

        await pilot.press("u")
        await wait_for(pilot, lambda: app.screen.query("#choice"), what="repository choice")
        app.screen.query_one("#choice", Select).value = str(two.resolve())
        await pilot.click("#ok")
        await wait_for(pilot, lambda: app.screen.query("#yes"), what="confirmation")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: app.screen.models[0].serves == (str(one.resolve()),), what="unbound")
        assert store.bindings() == {str(one.resolve()): "tiny-a"}
        assert store.model_for(two) == store.models_dir / "tiny-b"  # the default serves it now
        assert f"{two.resolve()} no longer uses tiny-a: the default model serves it" in notifications(app)
        assert table.get_row_at(0)[-1] == "alpha"

        # One repository: straight to the confirmation.
        await pilot.press("u")
        await wait_for(pilot, lambda: app.screen.query("#yes"), what="confirmation")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: app.screen.models[0].serves == (), what="unbound")
        assert store.bindings() == {}

        # The default model serves every other repository; it has none to unbind.
        table.move_cursor(row=1)
        await pilot.pause(0.1)
        assert "serves: every repository without a model of its own" in detail()
        await pilot.press("u")
        await wait_for(pilot, lambda: any("serves no repository" in m for m in notifications(app)), what="refusal")
