"""Playground: the language server's completion at the cursor, shown whole, coloured by head."""

import pytest
from textual.widgets import TextArea

from assistant.completion.positions import UTF32
from assistant.completion.service import CompletionService
from assistant.completion.settings import CompletionSettings
from assistant.engine import load_engine
from assistant.store import ModelStore
from models.checkpoint import save_model
from models.tokenizer import ByteTokenizer

from .conftest import make_app, notifications, wait_for

pytestmark = pytest.mark.asyncio

# No time cap: the text must not depend on how busy the machine is.
SETTINGS = CompletionSettings(time_cap_ms=600_000)


def editor_rows(editor) -> list[str]:
    """The editor's rows as drawn, without the line-number gutter."""
    return [editor.render_line(y).text[editor.gutter_width :].rstrip() for y in range(editor.size.height)]


async def complete_here(pilot, text: str, location: tuple[int, int]) -> str:
    screen = pilot.app.screen
    editor = screen.query_one(TextArea)
    editor.load_text(text)
    editor.move_cursor(location)
    await pilot.pause()
    await pilot.press("ctrl+g")
    await wait_for(pilot, lambda: screen.shown_version == screen._version, timeout=60, what="a completion")
    return editor.suggestion


async def test_the_playground_shows_what_the_completion_service_returns(home, tmp_path, trained_model):
    loaded, body = trained_model
    entry = ModelStore(home).add(save_model(tmp_path / "trained", loaded.model, loaded.tokenizer), make_default=True)
    body = body[: body.index("def add_2(")]  # short enough that the editor shows all of it
    opener = body.index("class Point1:") + len("class Point1:")
    cases = [
        ("", (0, 0)),  # an empty buffer
        (body[: body.index("def add_1(x, y):\n") + len("def add_1(x, y):\n    return ")], None),  # mid-line
        (body[:opener], None),  # after a block opener: a multi-line plan
        (body, (body[:opener].count("\n"), len("class Point1:"))),  # the same, with the rest of the file after
    ]
    reference = CompletionService(load_engine(entry.path), SETTINGS)
    app = make_app(home, start_mode="playground", completion=SETTINGS)
    async with app.run_test(size=(100, 40)) as pilot:
        editor = app.screen.query_one(TextArea)
        seen, multiline = [], []
        for text, location in cases:
            lines = text.split("\n")
            row, col = location or (len(lines) - 1, len(lines[-1]))
            shown = await complete_here(pilot, text, (row, col))
            expected = reference.complete_at(text, row, col, encoding=UTF32)
            assert shown == expected.text and shown, (text[-40:], row, col)
            assert "<|" not in shown  # no special token as text
            seen.append(shown)
            multiline.append(expected.multiline)
            # Shown whole in the editor, however long, right after the cursor.
            cursor_row = editor_rows(editor)[row]
            assert cursor_row == (lines[row][:col] + shown.split("\n")[0] + lines[row][col:]).rstrip()
            colours = app.screen.query_one("#completion").render().plain
            assert shown.replace(" ", "·").replace("\n", "⏎\n") in colours
            stats = app.screen.query_one("#pg-stats").plain
            assert ("several lines" in stats) == expected.multiline and "on torch" in stats

        assert multiline == [False, False, True, True]
        # Accepting inserts exactly the completion.
        text, (row, col) = cases[3]
        offset = len("\n".join(text.split("\n")[:row])) + 1 + col
        await pilot.press("ctrl+l")
        assert editor.text == text[:offset] + seen[3] + text[offset:]
        assert editor.suggestion == ""


async def test_moving_the_cursor_drops_the_ghost_text(home, tmp_path, trained_model):
    loaded, body = trained_model
    ModelStore(home).add(save_model(tmp_path / "trained", loaded.model, loaded.tokenizer), make_default=True)
    app = make_app(home, start_mode="playground", completion=SETTINGS)
    async with app.run_test(size=(80, 24)) as pilot:
        editor = app.screen.query_one(TextArea)
        text = body[: body.index("def add_3(x, y):\n") + len("def add_3(x, y):\n    return ")]
        shown = await complete_here(pilot, text, (text.count("\n"), len("    return ")))
        assert shown
        await pilot.press(shown[0] if shown[0] != " " else "space")  # typing what it shows keeps the rest
        assert editor.suggestion == shown[1:]
        await pilot.press("up")
        assert editor.suggestion == ""


async def test_completion_on_the_llama_cpp_engine_where_the_model_is_exported(home, tmp_path, trained_model):
    from models.gguf_export import export_model

    loaded, body = trained_model
    entry = ModelStore(home).add(save_model(tmp_path / "trained", loaded.model, loaded.tokenizer), make_default=True)
    export_model(entry.path, "q8_0")
    text = body[: body.index("def add_3(x, y):\n") + len("def add_3(x, y):\n    return ")]
    app = make_app(home, playground_text=text, start_mode="playground", completion=SETTINGS)
    async with app.run_test(size=(80, 24)) as pilot:
        screen, editor = app.screen, app.screen.query_one(TextArea)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: screen.shown_version == screen._version, timeout=60, what="a completion")
        assert "on llama.cpp q8_0" in screen.query_one("#pg-stats").plain
        row, col = editor.cursor_location
        expected = CompletionService(load_engine(entry.path), SETTINGS).complete_at(text, row, col, encoding=UTF32)
        assert expected.stats.new_tokens > 0 and editor.suggestion == expected.text


async def test_no_model_is_an_error_notification(home):
    app = make_app(home, start_mode="playground")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("no default model" in m for m in notifications(app)), what="error")
        assert app.is_running


async def test_a_corrupt_model_is_an_error_notification(home, tmp_path):
    store = ModelStore(home)
    store.add(save_model(tmp_path / "bad", *_tiny()), make_default=True)
    (store.models_dir / "bad" / "model.safetensors").write_bytes(b"not safetensors at all")
    app = make_app(home, start_mode="playground")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("safetensors" in m for m in notifications(app)), what="error")
        assert app.is_running and "safetensors" in app.screen.query_one("#pg-stats").plain


def _tiny():
    from tests.assistant.engine.helpers import random_model

    return random_model(), ByteTokenizer()
