"""The editor's ghost text: shown whole (long and multi-line), accepted whole."""

import pytest
from textual.app import App

from assistant.tui.widgets.ghost_editor import GhostTextArea

pytestmark = pytest.mark.asyncio

TEXT = "import logging\nlog = \nprint(log)"


class EditorApp(App):
    def compose(self):
        yield GhostTextArea(TEXT, show_line_numbers=True, soft_wrap=False)


def rows(editor) -> list[str]:
    return [editor.render_line(y).text[editor.gutter_width :].rstrip() for y in range(editor.size.height)]


async def test_a_long_suggestion_is_not_cut_at_the_longest_line():
    app = EditorApp()
    async with app.run_test(size=(80, 10)) as pilot:
        editor = app.query_one(GhostTextArea)
        editor.move_cursor((1, 6))
        editor.suggestion = "logging.getLogger(__name__)"
        await pilot.pause()
        assert rows(editor)[:3] == ["import logging", "log = logging.getLogger(__name__)", "print(log)"]


async def test_a_multi_line_suggestion_gets_rows_of_its_own_and_is_accepted_whole():
    app = EditorApp()
    async with app.run_test(size=(80, 10)) as pilot:
        editor = app.query_one(GhostTextArea)
        editor.move_cursor((1, 6))
        editor.suggestion = "setup()\nif log:\n    log.info('a rather long line, longer than any in the text')"
        await pilot.pause()
        assert rows(editor)[:5] == [
            "import logging",
            "log = setup()",
            "if log:",
            "    log.info('a rather long line, longer than any in the text')",
            "print(log)",  # the text below moved down
        ]
        assert editor.virtual_size.height == 5
        await pilot.press("right")  # TextArea's accept
        assert editor.text == "import logging\nlog = setup()\nif log:\n    log.info('a rather long line, longer than any in the text')\nprint(log)"
        assert editor.suggestion == "" and rows(editor)[4] == "print(log)"


async def test_a_click_below_the_ghost_rows_lands_on_the_line_drawn_there():
    app = EditorApp()
    async with app.run_test(size=(80, 10)) as pilot:
        editor = app.query_one(GhostTextArea)
        editor.move_cursor((1, 6))
        editor.suggestion = "a\nb\nc"
        await pilot.pause()
        assert rows(editor)[4] == "print(log)"
        left, top = editor.gutter.left + editor.gutter_width, editor.gutter.top  # the content's corner
        await pilot.click(GhostTextArea, offset=(left + 2, top + 3))  # on the ghost row "c"
        assert editor.cursor_location == (1, 6)
        await pilot.click(GhostTextArea, offset=(left + 2, top + 4))  # on "print(log)"
        assert editor.cursor_location == (2, 2)
