"""JSON-RPC 2.0 framing and message checks for the language server, in place of
pygls' reader (which trusts the Content-Length header and decodes every nested JSON
object as if it were a message).

A frame is header lines (`Name: value\\r\\n`; a bare `\\n` is accepted) ending with a
blank line, then a body of exactly Content-Length bytes of UTF-8 JSON. A frame that
cannot be served is answered with an error whose id is null (JSON-RPC 2.0 section 5:
the id could not be read) and the server reads on:

- Content-Length up to MAX_FRAME_BYTES: the body is read and decoded.
- Content-Length up to MAX_SKIP_BYTES: the body is read in chunks and thrown away, so
  the stream stays in step; the answer is -32600 (too large).
- Content-Length missing, negative, not a decimal number, or above MAX_SKIP_BYTES: the
  frame's end is unknown. The answer is -32700 and the reader resynchronises on the
  next line that carries a valid Content-Length header (found anywhere in the line, so
  a body without a trailing newline that runs into the next header does not hide it).

A body that is not JSON is answered -32700; JSON that is not a request, notification
or response object (an array, a number, no method, a bad id) is answered -32600, with
the request's id where it could be read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("lsp.rpc")

MAX_FRAME_BYTES = 64 << 20  # the largest body decoded: a 10 MB document opens well under it
MAX_SKIP_BYTES = 1 << 30  # a larger body is not read through to find the next frame
MAX_HEADER_LINE = 8 << 10  # a longer header line is read (and ignored) in pieces
READ_CHUNK = 256 << 10

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
SERVER_NOT_INITIALIZED = -32002  # LSP: a request before `initialize`
UNAUTHORIZED = -32001  # a TCP connection without the right token (a server-defined code)

_CONTENT_LENGTH = re.compile(rb"content-length:[ \t]*([^\s]*)[ \t]*\r?\n?$", re.IGNORECASE)


@dataclass(frozen=True)
class RpcError:
    code: int
    message: str
    id: str | int | None = None

    def response(self) -> dict:
        return {"jsonrpc": "2.0", "id": self.id, "error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Frame:
    """One frame off the stream: its body, or why it cannot be served."""

    body: bytes | None = None
    error: RpcError | None = None


def encode_frame(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


# --- byte sources: the same buffered reads over a pipe (stdio) or a socket (TCP) ---


class _BufferedSource:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False

    async def _read_chunk(self) -> bytes:
        raise NotImplementedError

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self._read_chunk()
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def readline(self, limit: int = MAX_HEADER_LINE) -> bytes:
        """A line with its newline, or its first `limit` bytes; b"" at the end of input."""
        searched = 0
        while True:
            end = self._buf.find(b"\n", searched, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buf) >= limit:
                return self._take(limit)
            searched = len(self._buf)
            if not await self._fill():
                return self._take(len(self._buf))

    async def read(self, n: int) -> bytes:
        """Exactly n bytes, fewer only at the end of input (n is at most MAX_FRAME_BYTES)."""
        while len(self._buf) < n and await self._fill():
            pass
        return self._take(n)

    async def skip(self, n: int) -> bool:
        """Throw n bytes away without holding them; False if the input ended first."""
        while n > 0:
            if not self._buf and not await self._fill():
                return False
            k = min(n, len(self._buf))
            del self._buf[:k]
            n -= k
        return True


class StreamSource(_BufferedSource):
    """An asyncio stream (a TCP connection)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__()
        self._reader = reader

    async def _read_chunk(self) -> bytes:
        try:
            return await self._reader.read(READ_CHUNK)
        except (ConnectionError, OSError):
            return b""


class FdSource(_BufferedSource):
    """A file descriptor (stdin), read by a daemon thread with os.read: a pipe need not
    support non-blocking reads, and unlike sys.stdin.buffer there is no buffered
    reader's lock for interpreter shutdown to wait on while the thread blocks."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._wanted: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            future = self._wanted.get()
            try:
                data = os.read(self._fd, READ_CHUNK)
            except OSError:
                data = b""
            try:
                loop.call_soon_threadsafe(_resolve, future, data)
            except RuntimeError:  # the loop has closed: the server is exiting
                return
            if not data:
                return

    async def _read_chunk(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(loop,), name="stdin-reader", daemon=True)
            self._thread.start()
        future = loop.create_future()
        self._wanted.put(future)
        return await future


def _resolve(future: asyncio.Future, data: bytes) -> None:
    if not future.done():
        future.set_result(data)


# --- frames ---


def parse_length(value: bytes | None) -> int | None:
    """A Content-Length value: decimal digits only (no sign, no spaces inside)."""
    if value is None or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


async def read_header(source: _BufferedSource) -> tuple[bool, bytes | None]:
    """Reads header lines to the blank line: (False, _) at the end of input, else
    (True, the Content-Length value or None). Blank lines before any header are skipped."""
    length: bytes | None = None
    seen_header = False
    while True:
        line = await source.readline(MAX_HEADER_LINE)
        if not line:
            return False, None
        if line.endswith(b"\n") and not line.strip():
            if seen_header:
                return True, length
            continue
        seen_header = True
        match = _CONTENT_LENGTH.search(line)
        if match:
            length = match.group(1)


async def read_frame(source: _BufferedSource) -> Frame | None:
    """The next frame, or None at the end of input."""
    more, value = await read_header(source)
    if not more:
        return None
    length = parse_length(value)
    if length is None or length > MAX_SKIP_BYTES:
        shown = "missing" if value is None else repr(value[:40].decode("ascii", "replace"))
        log.warning("frame with an unusable Content-Length (%s): looking for the next header", shown)
        return Frame(error=RpcError(PARSE_ERROR, f"unusable Content-Length header ({shown})"))
    if length > MAX_FRAME_BYTES:
        log.warning("frame of %d bytes is over the %d-byte limit: skipped", length, MAX_FRAME_BYTES)
        if not await source.skip(length):
            return None
        return Frame(error=RpcError(INVALID_REQUEST, f"message of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit"))
    body = await source.read(length)
    if len(body) < length:
        log.warning("input ended inside a frame (%d of %d bytes)", len(body), length)
        return None
    return Frame(body=body)


# --- messages ---


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The body's JSON value; ValueError for anything that is not strict UTF-8 JSON."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError as e:  # nesting deeper than the interpreter's stack
        raise ValueError("JSON nested too deeply") from e


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def check_message(data: Any) -> RpcError | None:
    """Why a decoded value is not a JSON-RPC 2.0 message (None when it is one)."""
    if not isinstance(data, dict):
        kind = "a batch (LSP does not use them)" if isinstance(data, list) else type(data).__name__
        return RpcError(INVALID_REQUEST, f"a message must be a JSON object, got {kind}")
    has_id = "id" in data
    msg_id = data.get("id")
    reply_id = msg_id if has_id and _valid_id(msg_id) else None
    if data.get("jsonrpc") != "2.0":
        return RpcError(INVALID_REQUEST, 'a message must have "jsonrpc": "2.0"', reply_id)
    if "method" in data:
        if not isinstance(data["method"], str):
            return RpcError(INVALID_REQUEST, "method must be a string", reply_id)
        if has_id and not _valid_id(msg_id):
            return RpcError(INVALID_REQUEST, "id must be a string or an integer")
        if data.get("params") is not None and not isinstance(data["params"], (dict, list)):
            return RpcError(INVALID_REQUEST, "params must be an object or an array", reply_id)
        return None
    if has_id and ("result" in data or "error" in data):
        return None  # a response to one of the server's requests
    return RpcError(INVALID_REQUEST, "a message needs a method (or, for a response, an id and a result or error)", reply_id)


def decode_message(body: bytes) -> tuple[dict | None, RpcError | None]:
    """A frame's body as a checked message, or the error to answer it with."""
    try:
        data = parse_json(body)
    except ValueError as e:  # UnicodeDecodeError and json's errors are ValueErrors
        return None, RpcError(PARSE_ERROR, f"parse error: {str(e)[:200]}")
    problem = check_message(data)
    return (None, problem) if problem else (data, None)


def is_response(data: dict) -> bool:
    return "method" not in data
