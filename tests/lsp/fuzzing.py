"""A deterministic generator of hostile traffic for the language server, and the
bookkeeping to check the answers: which ids must be answered exactly once, how many
frames earn an error with id null, which ids (nested in params) must never be answered."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.lsp.raw import frame_bytes

REQUESTS = [
    "textDocument/inlineCompletion", "textDocument/completion", "mtp/stats", "workspace/executeCommand",
    "textDocument/hover", "initialize", "mtp/unknown", "workspace/symbol", "$/unknown", "",
]
NOTIFICATIONS = [
    "textDocument/didOpen", "textDocument/didChange", "textDocument/didClose", "mtp/shown", "mtp/accepted",
    "$/cancelRequest", "initialized", "workspace/didChangeConfiguration", "$/setTrace", "mtp/unknown",
    "workspace/didChangeWorkspaceFolders", "window/workDoneProgress/cancel",
]
KEYS = ["textDocument", "uri", "position", "line", "character", "settings", "id", "jsonrpc", "method",
        "params", "contentChanges", "range", "text", "context", "triggerKind", "command", "arguments", "maxTokens"]
UNUSABLE_LENGTHS = [b"-1", b"abc", b"", b"1e3", b"0x10", b"1000000000000000", b"1180591620717411303424", b"+5", b"5 5"]


class Fuzzer:
    def __init__(self, seed: int, workspace: Path):
        self.rng = random.Random(seed)
        self.workspace = workspace
        self.expected: list[Any] = []  # request ids, each to be answered exactly once
        self.null_errors = 0  # frames to be answered with id null
        self.nested: set[str] = set()  # ids inside params: never to be answered
        self.opened: list[str] = []
        self.sent = 0
        self._n = 0

    # --- values ---

    def junk(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return r.choice([0, -1, 1, 2**31, 2**53 + 1, -(2**63), 10**30, r.randrange(-5, 100)])
        if kind == 1:
            return r.choice([0.5, -1e308, 1e-300, 3.0])
        if kind == 2:
            return self.text(r.randrange(0, 20))
        if kind == 3:
            return r.choice([True, False, None])
        if kind == 4:
            return r.choice(["file:///", self.uri(), "file:///etc/passwd", "untitled:x", "file:///%00", "::"])
        if kind == 5:
            return {}
        if kind == 6:
            return [self.junk(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(KEYS) if r.random() < 0.7 else self.text(5): self.junk(depth + 1) for _ in range(r.randrange(5))}

    def text(self, n: int) -> str:
        alphabet = "ab_ (){}:\n\t.é😀\x00\u2028" + "\ud800"  # a lone surrogate too
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def uri(self) -> str:
        r = self.rng
        if self.opened and r.random() < 0.6:
            return r.choice(self.opened)
        return r.choice([
            (self.workspace / f"f{r.randrange(5)}.py").as_uri(), self.workspace.as_uri() + "/../../etc/passwd",
            "file:///nonexistent/x.py", "https://example.com/a.py", "file://host/share/a.py", "",
        ])

    def position(self) -> dict:
        r = self.rng
        big = [0, 1, 3, 10, 2**31 - 1, 2**32]
        return {"line": r.choice(big + [r.randrange(5)]), "character": r.choice(big + [r.randrange(20)])}

    def next_id(self) -> Any:
        self._n += 1
        return self._n if self.rng.random() < 0.3 else f"f{self._n}"

    # --- messages: each returns the bytes of one frame (or a broken one) ---

    def frame(self, message: Any) -> bytes:
        return frame_bytes(json.dumps(message).encode())

    def request(self, method: str, params: Any, with_params: bool = True) -> bytes:
        msg_id = self.next_id()
        self.expected.append(msg_id)
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if with_params:
            message["params"] = params
        return self.frame(message)

    def notification(self, method: str, params: Any) -> bytes:
        if params is not None and not isinstance(params, (dict, list)):
            self.null_errors += 1  # an invalid notification is answered (JSON-RPC 2.0 section 5)
        return self.frame({"jsonrpc": "2.0", "method": method, "params": params})

    def junk_request(self) -> bytes:
        params = self.junk() if self.rng.random() < 0.5 else {k: self.junk(1) for k in self.rng.sample(KEYS, 3)}
        if not isinstance(params, (dict, list)) and params is not None:
            params = [params]
        return self.request(self.rng.choice(REQUESTS), params, with_params=self.rng.random() < 0.9)

    def completion(self) -> bytes:
        method = self.rng.choice(["textDocument/inlineCompletion", "textDocument/completion"])
        params = {"textDocument": {"uri": self.uri()}, "position": self.position()}
        if method == "textDocument/inlineCompletion":
            params["context"] = {"triggerKind": self.rng.choice([1, 2])}
        return self.request(method, params)

    def open_document(self) -> bytes:
        uri = (self.workspace / f"doc{self._n}.py").as_uri()
        self._n += 1
        self.opened.append(uri)
        return self.notification("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": "def f(x):\n    return x" + self.text(40)}})

    def edit(self) -> bytes:
        start, end = self.position(), self.position()
        change = {"range": {"start": start, "end": end}, "text": self.text(8)}
        if self.rng.random() < 0.2:
            change = {"text": self.text(30)}
        return self.notification("textDocument/didChange", {
            "textDocument": {"uri": self.uri(), "version": self.rng.randrange(100)}, "contentChanges": [change]})

    def junk_notification(self) -> bytes:
        return self.notification(self.rng.choice(NOTIFICATIONS), self.junk())

    def nested_request(self) -> bytes:
        inner = f"nested-{self._n}"
        self._n += 1
        self.nested.add(inner)
        wrapped = {"jsonrpc": "2.0", "id": inner, "method": self.rng.choice(REQUESTS + ["shutdown"]), "params": {"x": 1}}
        params = {"a": wrapped, "b": [wrapped]}
        if self.rng.random() < 0.5:
            return self.notification("mtp/shown", params)
        return self.request(self.rng.choice(["mtp/stats", "mtp/unknown", "textDocument/inlineCompletion"]), params)

    def response(self) -> bytes:
        """A response to a request the server never sent, sometimes with the id of one
        of ours in flight: it must not stand in for the server's answer."""
        msg_id = self.rng.choice(self.expected[-5:]) if self.expected and self.rng.random() < 0.5 else "unknown-request"
        body = {"result": self.junk()} if self.rng.random() < 0.5 else {"error": {"code": 1, "message": "x"}}
        return self.frame({"jsonrpc": "2.0", "id": msg_id, **body})

    def broken(self) -> bytes:
        """Bodies and frames that earn exactly one error with id null each."""
        self.null_errors += 1
        r = self.rng
        kind = r.randrange(8)
        if kind == 0:  # not JSON
            good = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "mtp/stats"}).encode()
            return frame_bytes(r.choice([good[: r.randrange(1, len(good))], b"\xff\xfe", b"[" * 5000, b"{'a': 1}", b" "]))
        if kind == 1:  # JSON, not an object
            return self.frame(r.choice([[], [1, 2], 42, "s", None, True, [{"jsonrpc": "2.0", "id": "batch", "method": "mtp/stats"}]]))
        if kind == 2:  # an id that is no id
            return self.frame({"jsonrpc": "2.0", "id": r.choice([1.5, True, None, [], {}]), "method": "mtp/stats"})
        if kind == 3:  # neither request nor response, no id
            return self.frame(r.choice([{"jsonrpc": "2.0"}, {"jsonrpc": "2.0", "params": {}}, {"method": "mtp/stats"}]))
        if kind == 4:  # a notification whose method is no string
            return self.frame({"jsonrpc": "2.0", "method": r.choice([1, None, [], {}])})
        if kind == 5:  # a length that cannot be used, nothing after it
            return b"Content-Length: " + r.choice(UNUSABLE_LENGTHS) + b"\r\n\r\n"
        if kind == 6:  # no Content-Length at all
            return b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"
        return self.frame({"jsonrpc": r.choice(["1.0", 2, None]), "method": "mtp/stats"})

    def invalid_with_id(self) -> bytes:
        """Not a valid request, but its id can be read: answered with that id."""
        msg_id = self.next_id()
        self.expected.append(msg_id)
        return self.frame(self.rng.choice([
            {"jsonrpc": "2.0", "id": msg_id},
            {"jsonrpc": "2.0", "id": msg_id, "method": 5},
            {"jsonrpc": "2.0", "id": msg_id, "method": "mtp/stats", "params": "scalar"},
            {"jsonrpc": "1.0", "id": msg_id, "method": "mtp/stats"},
        ]))

    KINDS = [  # (weight, method)
        (20, "junk_request"), (8, "completion"), (4, "open_document"), (10, "edit"), (20, "junk_notification"),
        (5, "nested_request"), (4, "response"), (20, "broken"), (6, "invalid_with_id"),
    ]

    def messages(self, count: int):
        weights = [w for w, _ in self.KINDS]
        names = [n for _, n in self.KINDS]
        yield self.open_document()
        for _ in range(count - 1):
            self.sent += 1
            yield getattr(self, self.rng.choices(names, weights)[0])()
        self.sent += 1
