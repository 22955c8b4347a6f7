"""JSON-RPC 2.0 / LSP 3.18 conformance against hostile input: the real server over stdio,
fed raw bytes by tests/lsp/raw.py."""

import asyncio
import os
import time

import pytest

from lsp.rpc import MAX_FRAME_BYTES, MAX_HEADER_LINE, StreamSource, read_frame
from tests.lsp.raw import StdioServer, frame_bytes

TEXT = "def add(a, b):\n    return a + b\n\nx = add(1, "
END = (3, len("x = add(1, "))
OPTIONS = {"maxTokens": 4, "timeCapMs": 600_000}


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """One initialized server with the tiny model, for the tests that leave it running."""
    tmp = tmp_path_factory.mktemp("protocol")
    (tmp / "ws").mkdir()
    server = StdioServer(tiny_model_dir, tmp / "home")
    server.workspace = tmp / "ws"
    server.client.initialize(server.workspace, OPTIONS)
    ready(server.client)
    yield server
    server.stop()


def ready(client, timeout: float = 60) -> None:
    for n in range(600):
        result = client.request(f"ready-{n}", "mtp/stats", {}, timeout)["result"]
        if result["ready"] or result["model_error"]:
            return
        time.sleep(0.1)
    raise TimeoutError("no model")


def sync(client, tag: str) -> dict:
    """A request whose answer means everything sent before it has been read."""
    return client.request(f"sync-{tag}", "mtp/stats", {})


def null_errors(client) -> list[dict]:
    return [m for m in client.responses(None) if "error" in m]


def inline(client, msg_id, uri: str, line: int, character: int) -> dict:
    return client.request(msg_id, "textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
        "context": {"triggerKind": 2},
    })


def read_all(data: bytes) -> list:
    """lsp.rpc's frames from these bytes: each body, or the error code it is answered with."""
    async def frames():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        source, found = StreamSource(reader), []
        while (frame := await read_frame(source)) is not None:
            found.append(frame.error.code if frame.error else frame.body)
        return found
    return asyncio.run(frames())


def test_the_reader_resynchronises_on_the_next_header():
    body = b'{"jsonrpc": "2.0", "method": "x"}'
    good = frame_bytes(body)
    # A body of unknown length runs into the next header line, with no newline between.
    assert read_all(b"Content-Length: -3\r\n\r\njunk without a newline" + good + b"\r\n\n" + good) == [-32700, body, body]
    long_line = b"X-Junk: " + b"y" * (3 * MAX_HEADER_LINE) + b"\r\n"
    assert read_all(long_line + good) == [body]  # read in pieces, ignored
    assert read_all(b"content-length:  %d \n\n" % len(body) + body) == [body]  # any case, bare newlines
    assert read_all(good[:-3]) == []  # cut short: the end of input


def test_frames_with_unusable_lengths_are_answered_and_the_server_serves_on(served):
    client = served.client
    before = len(null_errors(client))
    bad = [
        b"Content-Length: 1000000000000000\r\n\r\n",  # pygls: MemoryError, the process ended
        b"Content-Length: 1180591620717411303424\r\n\r\n",  # pygls: OverflowError
        b"Content-Length: -5\r\n\r\n",
        b"Content-Length: twelve\r\n\r\n",
        b"Content-Type: application/json\r\n\r\n",  # no length at all
    ]
    for data in bad:
        client.send_bytes(data)
    assert sync(client, "lengths")["result"]["pid"] == served.proc.pid
    errors = null_errors(client)[before:]
    assert [e["error"]["code"] for e in errors] == [-32700] * len(bad)
    assert "Content-Length" in errors[0]["error"]["message"]


def test_a_frame_over_the_limit_is_skipped_whole(served):
    client = served.client
    before, peak = len(null_errors(client)), served.proc_status("VmHWM")
    body = b'{"jsonrpc": "2.0", "id": "huge", "method": "mtp/stats", "params": {"pad": "' + b"x" * MAX_FRAME_BYTES + b'"}}'
    client.send_bytes(frame_bytes(body))
    sync(client, "huge")  # the stream is still in step: the next frame is read as one
    errors = null_errors(client)[before:]
    assert [e["error"]["code"] for e in errors] == [-32600] and "limit" in errors[0]["error"]["message"]
    assert client.responses("huge") == []
    assert served.proc_status("VmHWM") - peak < MAX_FRAME_BYTES // 2 // 1024  # skipped in chunks, never held


def test_parse_errors_and_invalid_requests(served):
    client = served.client
    before = len(null_errors(client))
    for body in (b'{"jsonrpc": "2.0", "id": 1, "method": ', b"\xff\xfe{}", b"[" * 100_000, b'{"a": NaN}'):
        client.send_bytes(frame_bytes(body))
    for value in ([{"jsonrpc": "2.0", "id": "in-batch", "method": "mtp/stats"}], 42, "text", None,
                  {"jsonrpc": "2.0", "id": 1.5, "method": "mtp/stats"}):
        client.send(value)
    client.send({"jsonrpc": "2.0", "id": "no-method", "params": {}})
    client.send({"jsonrpc": "2.0", "id": "int-method", "method": 7})
    client.send({"jsonrpc": "1.0", "id": "old", "method": "mtp/stats"})
    client.send({"jsonrpc": "2.0", "id": "scalar-params", "method": "mtp/stats", "params": 3})
    sync(client, "invalid")
    codes = [e["error"]["code"] for e in null_errors(client)[before:]]
    assert codes == [-32700] * 4 + [-32600] * 5
    for msg_id in ("no-method", "int-method", "old", "scalar-params"):
        [reply] = client.responses(msg_id)
        assert reply["error"]["code"] == -32600
    assert client.responses("in-batch") == []


def test_objects_nested_in_params_are_never_taken_for_requests(served):
    client = served.client
    uri = (served.workspace / "nested.py").as_uri()
    nested = {"jsonrpc": "2.0", "id": "inner", "method": "textDocument/inlineCompletion", "params": {"bad": 1}}
    outer = client.request("outer", "mtp/stats", {"wrapped": nested, "list": [dict(nested, id="inner-2")]})
    assert "result" in outer
    client.notify("mtp/shown", {"uri": uri, "x": dict(nested, id="inner-3", method="shutdown")})
    client.request("unknown", "mtp/nothing", {"x": dict(nested, id="inner-4")})
    sync(client, "nested")
    assert [client.responses(f"inner{s}") for s in ("", "-2", "-3", "-4")] == [[]] * 4
    assert "result" in sync(client, "nested-after")  # no nested shutdown was obeyed


def test_malformed_notifications_show_one_message_per_kind(served):
    client = served.client
    shown_before = len(client.notifications("window/showMessage"))
    for n in range(30):
        client.notify("textDocument/didChange", {"textDocument": {"uri": n}, "contentChanges": "x"})
        client.notify("workspace/didChangeConfiguration", {"settings": {"maxTokens": f"many-{n}"}})
        client.notify("$/cancelRequest", {"id": [n]})
    sync(client, "flood")
    shown = [m["params"]["message"] for m in client.notifications("window/showMessage")[shown_before:]]
    # Three kinds: bad didChange params, a bad setting, a cancel pygls cannot take.
    assert len(shown) <= 3 and len(set(shown)) == len(shown)
    assert sum("max_tokens" in s for s in shown) == 1
    log = served.log_path.read_text()
    assert log.count("many-29") >= 1  # every problem is in the log


def test_repeated_initialized_and_initialize(served):
    client = served.client
    sync(client, "threads-before")
    before = served.proc_status("Threads")
    for _ in range(20):
        client.notify("initialized", {})
    sync(client, "threads-after")
    assert served.proc_status("Threads") == before
    again = client.request("init-2", "initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    assert again["error"]["code"] == -32600


def test_unopened_files_are_read_only_inside_the_workspace(served, tmp_path):
    client = served.client
    ws = served.workspace
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "inside.py").write_text(TEXT)
    (outside / "secret.py").write_text(TEXT)
    (ws / "link.py").symlink_to(outside / "secret.py")
    (ws / "linked-dir").symlink_to(outside)
    (ws / "loop.py").symlink_to(ws / "loop.py")
    assert inline(client, "in", (ws / "inside.py").as_uri(), *END)["result"]["items"]
    for n, uri in enumerate([
        (outside / "secret.py").as_uri(),
        ws.as_uri() + "/../" + os.path.relpath(outside / "secret.py", ws.parent),
        (ws / "link.py").as_uri(),
        (ws / "linked-dir" / "secret.py").as_uri(),
        (ws / "loop.py").as_uri(),
    ]):
        assert inline(client, f"out-{n}", uri, *END)["result"]["items"] == [], uri
        listed = client.request(f"list-{n}", "textDocument/completion", {
            "textDocument": {"uri": uri}, "position": {"line": END[0], "character": END[1]},
        })
        assert listed["result"]["items"] == [], uri
    # Opened by the editor, the same file serves: the check is for disk reads only.
    secret_uri = (outside / "secret.py").as_uri()
    client.notify("textDocument/didOpen", {"textDocument": {"uri": secret_uri, "languageId": "python", "version": 1, "text": TEXT}})
    assert inline(client, "opened", secret_uri, *END)["result"]["items"]


# --- the lifecycle: each test its own server ---


@pytest.fixture
def fresh(tmp_path):
    """A server without a model: it starts fast, and the lifecycle does not need one."""
    (tmp_path / "ws").mkdir()
    server = StdioServer(tmp_path / "no-model", tmp_path / "home")
    server.workspace = tmp_path / "ws"
    yield server
    server.stop()


def test_requests_before_initialize_and_after_shutdown(fresh):
    client = fresh.client
    assert client.request("early", "mtp/stats", {})["error"]["code"] == -32002
    client.notify("mtp/shown", {})  # dropped, not answered
    assert "result" in client.initialize(fresh.workspace)
    assert client.request("shutdown", "shutdown")["result"] is None
    for msg_id, method in (("late", "mtp/stats"), ("late-init", "initialize"), ("late-shutdown", "shutdown")):
        assert client.request(msg_id, method, {})["error"]["code"] == -32600
    client.notify("exit")
    assert fresh.wait() == 0
    assert client.wait_closed() and not client.violations
    assert [m for m in client.messages if "method" not in m and m.get("id") is None] == []


def test_exit_without_shutdown_exits_with_1(fresh):
    fresh.client.initialize(fresh.workspace)
    fresh.client.notify("exit")
    assert fresh.wait() == 1



def test_an_engine_fallback_is_shown_and_in_the_stats(tiny_model_dir, tmp_path):
    """engine "auto" on a model whose GGUF export is broken serves with torch, and says why."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "gguf" / "q8_0").mkdir(parents=True)
    (model / "gguf" / "q8_0" / "main.gguf").write_bytes(b"GGUF not really")
    (tmp_path / "ws").mkdir()
    server = StdioServer(model, tmp_path / "home")
    try:
        server.client.initialize(tmp_path / "ws", OPTIONS)
        ready(server.client)
        stats = sync(server.client, "fallback")["result"]
        assert stats["engine"] == "torch" and stats["model_error"] is None
        assert any("main.gguf" in w for w in stats["warnings"]), stats["warnings"]
        shown = server.client.wait_for(lambda m: m.get("method") == "window/showMessage")
        assert "main.gguf" in shown["params"]["message"]
    finally:
        server.stop()
