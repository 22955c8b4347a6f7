"""A raw-bytes client for the real server: it sends any bytes at all (the pytest-lsp
client refuses malformed messages) and parses everything the server writes strictly,
so a stray byte on stdout fails the test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

PROJECT = Path(__file__).resolve().parents[2]


def frame(message: Any) -> bytes:
    return frame_bytes(json.dumps(message).encode())


def frame_bytes(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawClient:
    """Reads frames off `stream` in a thread; `violations` lists anything that is not
    a well-formed frame of a JSON-RPC 2.0 object."""

    def __init__(self, stream: BinaryIO, write: Callable[[bytes], None]):
        self._stream, self._write = stream, write
        self.messages: list[dict] = []
        self.violations: list[str] = []
        self._new = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    # --- reading ---

    def _read(self) -> None:
        try:
            while True:
                message = self._read_frame()
                if message is None:
                    break
                with self._new:
                    self.messages.append(message)
                    self._new.notify_all()
        except Exception as e:  # a malformed frame: record it, stop reading
            self.violations.append(f"{type(e).__name__}: {e}")
        finally:
            with self._new:
                self._closed = True
                self._new.notify_all()

    def _read_frame(self) -> dict | None:
        length = None
        while True:
            line = self._stream.readline()
            if not line:
                return None
            if line == b"\r\n":
                break
            name, sep, value = line.decode("ascii").partition(":")
            if not sep or not line.endswith(b"\r\n"):
                raise ValueError(f"not a header line: {line[:80]!r}")
            if name.lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError("frame without Content-Length")
        body = self._stream.read(length)
        if len(body) != length:
            raise ValueError("stream ended inside a frame")
        message = json.loads(body.decode("utf-8"))
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise ValueError(f"not a JSON-RPC 2.0 object: {body[:80]!r}")
        return message

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise TimeoutError(f"no such message (closed: {self._closed}); violations: {self.violations}")
                self._new.wait(left)

    def wait_closed(self, timeout: float = 30) -> bool:
        self._thread.join(timeout)
        return self._closed

    def responses(self, msg_id: Any) -> list[dict]:
        with self._new:
            return [m for m in self.messages if "method" not in m and m.get("id") == msg_id]

    def notifications(self, method: str) -> list[dict]:
        with self._new:
            return [m for m in self.messages if m.get("method") == method]

    # --- writing ---

    def send_bytes(self, data: bytes) -> None:
        self._write(data)

    def send(self, message: Any) -> None:
        self._write(frame(message))

    def request(self, msg_id: Any, method: str, params: Any = None, timeout: float = 30) -> dict:
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self.wait_for(lambda m: "method" not in m and m.get("id") == msg_id, timeout)

    def notify(self, method: str, params: Any = None) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def initialize(self, workspace: Path, options: dict | None = None) -> dict:
        reply = self.request("init", "initialize", {
            "processId": None, "rootUri": workspace.as_uri(), "capabilities": {},
            **({"initializationOptions": options} if options is not None else {}),
        })
        self.notify("initialized", {})
        return reply


def server_env(home: Path) -> dict:
    return {**os.environ, "MTP_ASSISTANT_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}


class StdioServer:
    """`python -m lsp` with pipes; its log goes to a file (a pipe nobody reads would fill)."""

    def __init__(self, model_dir: Path, home: Path, *extra: str):
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsp", "--model", str(model_dir), "--log-file", str(self.log_path), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=server_env(home), cwd=PROJECT,
        )
        self.client = RawClient(self.proc.stdout, self._write)

    def _write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_input(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        if not self.proc.stdin.closed:
            self.close_input()

    def proc_status(self, field: str) -> int:
        """A number from /proc/PID/status (Threads, VmRSS in kB, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


def connect(port: int, timeout: float = 60, proc: subprocess.Popen | None = None) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise
            time.sleep(0.1)


def socket_client(sock: socket.socket) -> RawClient:
    return RawClient(sock.makefile("rb"), sock.sendall)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
