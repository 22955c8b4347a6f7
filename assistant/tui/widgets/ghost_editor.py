"""A TextArea whose ghost text (the `suggestion`) is shown whole, on several lines too.

Textual's TextArea draws the suggestion inside the cursor's line and crops every line to
the document's widest one, so a long suggestion was cut and a multi-line one could not
be drawn. Here the suggestion's first line is drawn after the cursor, its other lines
as extra rows under the cursor's line (the text below moves down while it is shown),
and the scrollable size makes room for all of it. Accepting (→ or insert) puts in the
whole suggestion, as TextArea does.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.text import Text
from textual.geometry import Offset, Size
from textual.strip import Strip
from textual.widgets import TextArea
from textual.widgets.text_area import Location


class GhostTextArea(TextArea):
    def _ghost_rows(self) -> list[str]:
        """The suggestion's lines after its first, when they are drawn (no soft wrap)."""
        if self.soft_wrap or "\n" not in self.suggestion:
            return []
        if not self.has_focus and self.hide_suggestion_on_blur:
            return []
        return self.suggestion.split("\n")[1:]

    def watch_suggestion(self) -> None:
        self._line_cache.clear()
        self._refresh_size()
        self.refresh()

    def watch_has_focus(self, has_focus: bool) -> None:
        super().watch_has_focus(has_focus)
        self._refresh_size()  # the ghost rows come and go with the focus

    def _refresh_size(self) -> None:
        super()._refresh_size()
        if self.soft_wrap or not self.suggestion:
            return
        first, *rest = self.suggestion.split("\n")
        row, column = self.cursor_location
        cursor_line = self.document[row] if row < self.document.line_count else ""
        width = max([Text(cursor_line[:column] + first).cell_len] + [Text(line).cell_len for line in rest])
        rows = self._ghost_rows()
        size = self.virtual_size
        self.virtual_size = Size(max(size.width, width + self.gutter_width + 1), size.height + len(rows))

    def render_line(self, y: int) -> Strip:
        rows = self._ghost_rows()
        if not rows:
            return super().render_line(y)
        scroll_x, scroll_y = self.scroll_offset
        cursor_y = self._cursor_offset[1]
        absolute_y = scroll_y + y
        if absolute_y == cursor_y:
            # The cursor's line with only the suggestion's first line after the cursor.
            full = self.suggestion
            self.set_reactive(TextArea.suggestion, full.split("\n", 1)[0])
            try:
                return super().render_line(y)
            finally:
                self.set_reactive(TextArea.suggestion, full)
        if absolute_y < cursor_y:
            return super().render_line(y)
        if absolute_y <= cursor_y + len(rows):
            return self._ghost_row(rows[absolute_y - cursor_y - 1], scroll_x)
        return super().render_line(y - len(rows))  # the document's lines below, moved down

    def _ghost_row(self, text: str, scroll_x: int) -> Strip:
        theme = self._theme
        base_style = theme.base_style if theme and theme.base_style is not None else self.rich_style
        style = self.get_component_rich_style("text-area--suggestion")
        line = Text(text, style=style)
        line.expand_tabs(self.indent_width)
        width = max(self.virtual_size.width, self.region.size.width) - self.gutter_width
        strip = Strip(line.render(self.app.console), cell_length=line.cell_len).crop(scroll_x, scroll_x + width)
        strip = strip.extend_cell_length(width, theme.base_style if theme else None)
        if self.gutter_width:
            gutter_style = theme.gutter_style if theme else None
            strip = Strip.join([Strip([Segment(" " * self.gutter_width, gutter_style)], self.gutter_width), strip])
        return strip.apply_style(base_style)

    def get_target_document_location(self, event) -> Location:
        """Where a click lands: rows under the ghost rows are the document's lines above them."""
        rows = len(self._ghost_rows())
        if rows:
            cursor_y = self._cursor_offset[1]
            y = event.y + self.scroll_offset.y - self.gutter.top
            if y > cursor_y + rows:
                event = _Shifted(event, Offset(0, -rows))
            elif y > cursor_y:
                return self.cursor_location  # on the ghost text: the cursor stays
        return super().get_target_document_location(event)


class _Shifted:
    """A mouse event's position moved (what get_target_document_location reads of it)."""

    def __init__(self, event, by: Offset):
        self._event, self.x, self.y = event, event.x + by.x, event.y + by.y

    def __getattr__(self, name):
        return getattr(self._event, name)
