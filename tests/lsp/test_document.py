"""The server's documents apply incremental edits exactly as pygls's own do, faster."""

import random

import pytest
from lsprotocol import types
from pygls.workspace import PositionCodec, TextDocument

from assistant.completion.positions import position_at
from lsp.server import _Document


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-32"])
def test_edits_match_pygls(encoding):
    rng = random.Random(0)
    text = "def f(é):\n    return '😀' + x\n\nclass A:\n\tpass\n"
    ours = _Document("file:///a.py", text, position_codec=PositionCodec(encoding))
    theirs = TextDocument("file:///a.py", text, position_codec=PositionCodec(encoding))
    pieces = ["x", "😀", "é", "\n", "", "ab\ncd", "  "]
    for _ in range(300):
        source = ours.source
        a, b = sorted(rng.randrange(len(source) + 1) for _ in range(2))
        if rng.random() < 0.5:
            b = a  # an insertion, as typing makes
        start, end = (types.Position(*position_at(source, i, encoding)) for i in (a, b))
        change = types.TextDocumentContentChangePartial(types.Range(start, end), rng.choice(pieces))
        ours.apply_change(change)
        theirs.apply_change(change)
        assert ours.source == theirs.source
