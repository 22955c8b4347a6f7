"""A completion with each token coloured by the head that drafted it."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

# Head 1's own tokens in the plain text colour; drafts that head 1 accepted in the
# colour of the head that proposed them; 0: not known (plain).
HEAD_STYLES = {0: "", 1: "bold", 2: "bold green", 3: "bold cyan", 4: "bold magenta", 5: "bold yellow", 6: "bold red"}


def head_style(head: int) -> str:
    return HEAD_STYLES.get(head, "bold blue")


def legend(n_future: int) -> Text:
    text = Text("head 1 (verifier) ", style=head_style(1))
    for head in range(2, n_future + 1):
        text.append(f"head {head} ", style=head_style(head))
    text.append("(drafts head 1 accepted)", style="dim")
    return text


def coloured(pieces: list[tuple[str, int]]) -> Text:
    """(token text, head) pairs as one Text; whitespace made visible (it has a colour too)."""
    text = Text()
    for piece, head in pieces:
        shown = piece.replace(" ", "·").replace("\n", "⏎\n").replace("\t", "→   ")
        text.append(shown, style=head_style(head))
    return text


class CompletionView(Static):
    def show(self, pieces: list[tuple[str, int]] | None, n_future: int, text: str = "") -> None:
        """pieces: the completion's tokens with their heads; None where they are not known
        (a completion from the cache): then `text` is shown without colours."""
        if pieces:
            body = coloured(pieces)
        elif pieces is None and text:
            body = Text.assemble(coloured([(text, 0)]), ("  (from the cache: no heads)", "dim"))
        else:
            body = Text("(empty completion)", style="dim")
        self.update(Text.assemble(body, "\n", legend(n_future)))
