"""A bounded, seeded fuzz run against the real server over stdio: malformed frames and
bodies, junk params, nested request-like objects, stray responses, among valid traffic."""

import time
from collections import Counter

from tests.lsp.fuzzing import Fuzzer
from tests.lsp.raw import RawClient, StdioServer

SEED = 20240601
MESSAGES = 3000
OPTIONS = {"maxTokens": 4, "timeCapMs": 600_000}
TEXT = "def add(a, b):\n    return a + b\n\nx = add(1, "


def fuzz(client: RawClient, fuzzer: Fuzzer, count: int, timeout: float = 120) -> dict:
    """Sends `count` fuzz frames, then waits for every answer; the figures of the run."""
    start = time.monotonic()
    for data in fuzzer.messages(count):
        client.send_bytes(data)
    client.request("after-fuzz", "mtp/stats", {}, timeout)  # everything sent before it has been read
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and unanswered(client, fuzzer):
        time.sleep(0.1)
    return {"messages": fuzzer.sent, "seconds": round(time.monotonic() - start, 1),
            "unanswered": len(unanswered(client, fuzzer))}


def unanswered(client: RawClient, fuzzer: Fuzzer) -> list:
    answered = Counter(m.get("id") for m in list(client.messages) if "method" not in m)
    return [i for i in fuzzer.expected if answered[i] == 0]


def check_answers(client: RawClient, fuzzer: Fuzzer) -> None:
    assert not client.violations  # stdout carried only well-formed frames
    answered = Counter(m.get("id") for m in list(client.messages) if "method" not in m)
    assert [i for i in fuzzer.expected if answered[i] != 1] == []  # each exactly once
    assert [i for i in fuzzer.nested if answered[i]] == []  # nested objects are no requests
    assert answered[None] == fuzzer.null_errors
    shown = [m["params"]["message"] for m in client.notifications("window/showMessage")]
    assert len(shown) == len(set(shown)) and len(shown) <= 12, shown  # one per kind of problem


def check_served(client: RawClient, uri: str) -> None:
    """A valid request after the fuzz is served as it would be before."""
    reply = client.request("after-check", "textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": 3, "character": 11}, "context": {"triggerKind": 2}})
    assert reply["result"]["items"] and reply["result"]["items"][0]["insertText"]


def ready(client: RawClient) -> None:
    for n in range(600):
        if client.request(f"ready-{n}", "mtp/stats", {})["result"]["ready"]:
            return
        time.sleep(0.1)
    raise TimeoutError("the model did not load")


def test_fuzz_over_stdio(tiny_model_dir, tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    server = StdioServer(tiny_model_dir, tmp_path / "home")
    try:
        client = server.client
        client.initialize(ws, OPTIONS)
        ready(client)
        uri = (ws / "check.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": TEXT}})
        check_served(client, uri)
        threads, rss = server.proc_status("Threads"), server.proc_status("VmRSS")
        fuzzer = Fuzzer(SEED, ws)
        figures = fuzz(client, fuzzer, MESSAGES)
        assert server.proc.poll() is None  # alive
        assert figures["unanswered"] == 0  # no hang
        check_answers(client, fuzzer)
        check_served(client, uri)
        figures |= {"threads": (threads, server.proc_status("Threads")),
                    "rss_growth_mb": round((server.proc_status("VmRSS") - rss) / 1024, 1),
                    "requests": len(fuzzer.expected), "null_id_errors": fuzzer.null_errors}
        # Only lazily started worker threads (asyncio's executor) may come; nothing per message.
        assert figures["threads"][1] <= figures["threads"][0] + 8
        assert client.request("bye", "shutdown")["result"] is None
        client.notify("exit")
        assert server.wait() == 0
        with capsys.disabled():
            print(f"\nfuzz over stdio: {figures}")
    finally:
        server.stop()
