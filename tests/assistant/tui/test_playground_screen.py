"""Playground: a real completion at the cursor, coloured by head, equal to plain greedy."""

import pytest
from textual.widgets import TextArea

from assistant.engine.base import GenerationConfig
from assistant.engine.torch_engine import TorchEngine
from assistant.store import ModelStore
from assistant.tui.completion import complete_at, token_pieces
from models.checkpoint import save_model
from models.tokenizer import ByteTokenizer

from .conftest import make_app, notifications, wait_for

pytestmark = pytest.mark.asyncio


async def test_completion_at_the_cursor(home, tmp_path, trained_model):
    loaded, body = trained_model
    ModelStore(home).add(save_model(tmp_path / "trained", loaded.model, loaded.tokenizer), make_default=True)
    text = body[: body.index("def add_3(x, y):\n") + len("def add_3(x, y):\n    return ")]
    app = make_app(home, playground_text=text, start_mode="playground", auto_complete=True, complete_delay_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        editor = app.screen.query_one(TextArea)
        # Typing triggers a completion after a pause (the cursor is at the end of the text).
        await pilot.press("space", "backspace")
        screen = app.screen
        await wait_for(
            pilot,
            lambda: screen.shown_version == screen._version and editor.suggestion,
            timeout=60,
            what="a ghost completion",
        )
        suggestion = editor.suggestion
        # The same text that plain greedy decoding (k = 1) gives at the cursor.
        engine = TorchEngine(loaded.model, loaded.tokenizer)
        row, col = editor.cursor_location
        plain = complete_at(engine, editor.text, row, col, app.settings.max_tokens, k=1)
        assert suggestion == plain.text
        shown = app.screen.query_one("#completion").render().plain
        assert suggestion.replace(" ", "·") in shown and "head 2" in shown
        stats = app.screen.query_one("#pg-stats").plain
        assert "per forward" in stats and "ms" in stats

        # Accepting inserts it; the next completion starts on the following line.
        await pilot.press("ctrl+l")
        assert editor.text == text + suggestion


async def test_completion_on_the_llama_cpp_engine_where_the_model_is_exported(home, tmp_path, trained_model):
    from assistant.engine.llama_engine import LlamaEngine
    from models.gguf_export import export_model

    loaded, body = trained_model
    entry = ModelStore(home).add(save_model(tmp_path / "trained", loaded.model, loaded.tokenizer), make_default=True)
    export_model(entry.path, "q8_0")
    text = body[: body.index("def add_3(x, y):\n") + len("def add_3(x, y):\n    return ")]
    app = make_app(home, playground_text=text, start_mode="playground")
    async with app.run_test(size=(80, 24)) as pilot:
        screen, editor = app.screen, app.screen.query_one(TextArea)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: screen.shown_version == screen._version, timeout=60, what="a completion")
        assert "on llama q8_0" in screen.query_one("#pg-stats").plain
        row, col = editor.cursor_location
        plain = complete_at(LlamaEngine.from_dir(entry.path, "q8_0"), editor.text, row, col, app.settings.max_tokens, k=1)
        assert plain.stats.new_tokens > 0 and editor.suggestion == plain.text


async def test_token_pieces_join_to_the_text_and_carry_heads(trained_model):
    loaded, body = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    prompt = loaded.tokenizer.encode(body[:120])
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=30, k=4, stop_strings=("\n",)))
    pieces = token_pieces(loaded.tokenizer, result.tokens, result.token_heads, result.text)
    assert "".join(p for p, _ in pieces) == result.text
    assert {h for _, h in pieces} <= {1, 2, 3, 4}
    # A multi-byte character split over byte tokens comes out whole.
    tok = ByteTokenizer()
    ids = tok.encode("é+ü")
    assert token_pieces(tok, ids, [1, 2, 3, 4, 1], "é+ü") == [("é", 2), ("+", 3), ("ü", 1)]
    # Healed bytes (here "é", written again by the first tokens) are not part of the text.
    assert token_pieces(tok, ids, [1, 2, 3, 4, 1], "+ü", healed="é".encode()) == [("+", 3), ("ü", 1)]


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
