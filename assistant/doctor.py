"""`mtp-assistant doctor`: check the set-up an editor will use, then print its snippet.

It runs what the editor runs: the installation's own `mtp-assistant lsp` as a child over
stdio, with the model and engine the editor would get, and makes one completion round trip
through it (initialize, wait for the model, open a document, an inline completion at a
cursor, shutdown, exit). Each check prints one line; the first that fails ends the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

from assistant.editors import server_command, snippet

SAMPLE = "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return "
SAMPLE_CURSOR = (5, len("        return "))


class DoctorError(Exception):
    """A check that failed; the message says which and why."""


@dataclass(frozen=True)
class DoctorSettings:
    model: str | None = None  # None: the model the editor gets in `repo` (its bound one, else the default)
    repo: Path = Path(".")
    engine: str = "auto"
    editor: str = "neovim"
    timeout_s: float = 120.0  # for the model to load and the first completion


class _StdioClient:
    """Just enough JSON-RPC over a child's stdin/stdout to talk to the server."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.messages: Queue = Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._next_id = 0

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while (line := out.readline()) not in (b"\r\n", b"\n"):
                if not line:
                    self.messages.put(None)
                    return
                name, _, value = line.decode("ascii", "replace").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            self.messages.put(json.loads(out.read(length or 0)))

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace").rstrip())

    def send(self, method: str, params, request: bool = True) -> int | None:
        message = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            self._next_id += 1
            message["id"] = self._next_id
        body = json.dumps(message).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()
        return message.get("id")

    def request(self, method: str, params, timeout_s: float):
        """The result of a request; server-to-client requests are answered with null."""
        wanted = self.send(method, params)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                raise DoctorError(f"no answer to {method} within {timeout_s:.0f} s") from None
            if message is None:
                tail = "; ".join(self.stderr[-3:]) or "no output on stderr"
                raise DoctorError(f"the server exited (code {self.proc.wait()}): {tail}")
            if "method" in message and "id" in message:  # e.g. window/workDoneProgress/create
                body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": None}).encode()
                self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                self.proc.stdin.flush()
            elif message.get("id") == wanted:
                if "error" in message:
                    raise DoctorError(f"{method} failed: {message['error'].get('message')}")
                return message.get("result")

    def close(self) -> int:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.wait()


def run_doctor(settings: DoctorSettings, say=print) -> int:
    """Run every check, printing a line each, then the editor snippet; 0 when all passed."""
    command = server_command()
    if not command.is_file():
        raise DoctorError(f"no mtp-assistant executable at {command} (run `make setup`, or `pip install -e .`)")
    say(f"ok  command: {command}")
    on_path = any(Path(p, "mtp-assistant").resolve() == command.resolve() for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    if not on_path:
        say("    (not on PATH: editors need the absolute path, as in the snippet below)")

    from assistant.store import ModelStore

    store = ModelStore()
    # What the editor gets in this repository: its bound model (`tune`), else the default.
    bound = store.binding_for(settings.repo) if settings.model is None else None
    model_dir = store.resolve(settings.model) if settings.model else store.model_for(settings.repo)
    say(f"ok  model: {model_dir}" + (f" (bound to {bound[0]})" if bound else ""))

    args = [str(command), "lsp", "--model", str(model_dir), "--engine", settings.engine]
    with tempfile.TemporaryDirectory(prefix="mtp-doctor-") as workspace:
        client = _StdioClient(args, dict(os.environ), Path(workspace))
        try:
            latency_ms, engine, text, warnings = _round_trip(client, Path(workspace), settings.timeout_s)
        finally:
            if client.proc.poll() is None:
                client.proc.kill()
            client.close()
    say(f"ok  engine: {engine}")
    for warning in warnings:
        say(f"    warning: {warning}")
    say(f"ok  completion round trip: {latency_ms:.0f} ms at the cursor of `{SAMPLE.splitlines()[-1].strip()}` -> {text!r}")
    say("")
    say(f"Editor set-up ({settings.editor}; others: mtp-assistant doctor --editor NAME):")
    say(snippet(settings.editor, command))
    return 0


def _round_trip(client: _StdioClient, workspace: Path, timeout_s: float) -> tuple[float, str, str, list[str]]:
    """(latency in ms, engine name, completion text, the engine's warnings) of one completion."""
    client.request("initialize", {"processId": os.getpid(), "rootUri": workspace.as_uri(), "capabilities": {}}, 30)
    client.send("initialized", {}, request=False)
    deadline = time.monotonic() + timeout_s
    while True:
        stats = client.request("mtp/stats", {}, 30)
        if stats.get("model_error"):
            raise DoctorError(f"the server cannot load the model: {stats['model_error']}")
        if stats.get("ready"):
            break
        if time.monotonic() > deadline:
            raise DoctorError(f"the model did not load within {timeout_s:.0f} s")
        time.sleep(0.1)
    uri = (workspace / "sample.py").as_uri()
    client.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                          "text": SAMPLE}}, request=False)
    line, character = SAMPLE_CURSOR
    started = time.perf_counter()
    result = client.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
        "context": {"triggerKind": 2},
    }, timeout_s)
    latency_ms = (time.perf_counter() - started) * 1e3
    items = (result or {}).get("items") or []
    text = items[0].get("insertText", "") if items else ""
    stats = client.request("mtp/stats", {}, 30)
    client.request("shutdown", None, 30)
    client.send("exit", None, request=False)
    if client.close() != 0:
        raise DoctorError("the server did not exit cleanly after shutdown")
    engine = stats.get("engine") or "?"
    if stats.get("threads"):  # how fast a step can be: the first thing to check when completions are slow
        step, batch = stats["threads"]
        engine += f", {step} thread{'s' if step > 1 else ''} a step, {batch} for prompts and drafts"
    return latency_ms, engine, text, list(stats.get("warnings") or [])
