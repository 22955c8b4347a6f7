"""The pygls language server: handlers of a few lines over assistant.completion.

Requests: textDocument/inlineCompletion (LSP 3.18), textDocument/completion (the
fallback), mtp/stats (the server's stats). Notifications: mtp/shown and mtp/accepted
(telemetry from the editor); an inline item's command `mtp.accepted` counts too.

The model loads in the background after `initialized`, reporting $/progress;
completion requests that arrive before it is ready get an empty answer at once (the
editor asks again on the next keystroke).

Frames are read by lsp.rpc, not pygls' reader: oversized, malformed and non-JSON-RPC
input is answered with its JSON-RPC error and the server serves on. The lifecycle
follows LSP 3.18: requests before `initialize` get -32002, a second `initialize` and
any request after `shutdown` get -32600, `exit` ends the process with 0 after
`shutdown` and 1 without. Out-of-band errors go to the log; the editor sees at most one
window/showMessage per kind of problem.

Documents the editor did not open are read from disk only when their real path
(symlinks resolved) lies inside a workspace folder or the root.

TCP (`start_tcp`): a connection's first frame must be `initialize` with the server's
token in initializationOptions {"token": "..."}; anything else is answered with error
-32001 and the connection closed. One client is served; the server stops when it leaves.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import FeatureNotificationError, FeatureRequestError, JsonRpcException
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument, Workspace

from assistant.completion.context import ContextCollector, WorkspaceIndex, uri_to_path
from assistant.completion.positions import offset_at, unit_length
from assistant.completion.service import Completion, CompletionService
from assistant.completion.settings import CompletionSettings, load_settings
from assistant.completion.stats import ServerStats, StatsFileWriter
from assistant.store import ModelStore
from lsp.rpc import (
    INVALID_REQUEST, SERVER_NOT_INITIALIZED, UNAUTHORIZED, FdSource, Frame, RpcError, StreamSource,
    decode_message, encode_frame, is_response, read_frame,
)

log = logging.getLogger("lsp")

ACCEPTED_COMMAND = "mtp.accepted"
STATS_REQUEST = "mtp/stats"
SHOWN_NOTIFICATION = "mtp/shown"
ACCEPTED_NOTIFICATION = "mtp/accepted"
MAX_UNOPENED_FILE = 32 << 20  # bytes read from disk for a document the editor never opened
AUTH_TIMEOUT_S = 10  # a TCP connection must present its token this soon


class _Protocol(LanguageServerProtocol):
    """Takes whole frame bodies from lsp.rpc: checks the message and the lifecycle,
    answers what pygls would drop or mis-decode, and hands the rest to pygls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initialize_received = False

    def send_error(self, error: RpcError) -> None:
        self._send_data(error.response())

    def receive(self, body: bytes) -> None:
        data, error = decode_message(body)
        if error is not None:
            self.send_error(error)
            return
        if is_response(data):
            if data["id"] in self._result_types:  # the answer to one of the server's requests
                self._dispatch(data, reply=False)
            else:  # a stray one must not complete a future of the client's own request
                log.warning("response to no request of the server's (id %r): ignored", data["id"])
            return
        method, is_request = data["method"], "id" in data
        if method == types.EXIT:
            self._server.exit_requested()
            return
        refusal = self.lifecycle_refusal(method)
        if refusal is None:
            self._dispatch(data, reply=is_request)
        elif is_request:
            self.send_error(RpcError(*refusal, data["id"]))
        else:
            log.debug("notification %s dropped: %s", method, refusal[1])

    def lifecycle_refusal(self, method: str) -> tuple[int, str] | None:
        """Why a message may not be served now (LSP 3.18 lifecycle), or None."""
        if self._shutdown:
            return INVALID_REQUEST, "the server is shutting down: only exit may follow shutdown"
        if method == types.INITIALIZE:
            return (INVALID_REQUEST, "initialize may be sent only once") if self.initialize_received else None
        if not self.initialize_received:
            return SERVER_NOT_INITIALIZED, "the server is not initialized yet"
        return None

    def _dispatch(self, data: dict[str, Any], reply: bool) -> None:
        """pygls structures the top-level message only (its reader's object_hook would
        also turn any nested object with jsonrpc/id/method into a message)."""
        try:
            message = self.structure_message(data)
        except JsonRpcException as exc:
            if reply:
                self._send_response(data["id"], error=exc.to_response_error())
            else:
                self._server.report_server_error(exc, FeatureNotificationError)
            return
        if data.get("method") == types.INITIALIZE:
            self.initialize_received = True
        try:
            self.handle_message(message)
        except BrokenPipeError:
            raise
        except Exception as exc:  # pygls answers requests itself; this is a response or a bug
            log.exception("cannot handle a %s message", data.get("method", "response"))
            self._server.report_server_error(exc, FeatureNotificationError)


class _Document(TextDocument):
    """pygls re-splits the whole document into lines on every incremental change
    (250 ms per keystroke in a 10 MB file); splice the text at two offsets instead."""

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        source, encoding = self.source, str(self.position_codec.encoding)
        start = offset_at(source, change.range.start.line, change.range.start.character, encoding)
        end = offset_at(source, change.range.end.line, change.range.end.character, encoding)
        self._source = source[:start] + change.text + source[max(start, end):]


class _Workspace(Workspace):
    def _create_text_document(self, doc_uri, source=None, version=None, language_id=None) -> TextDocument:
        return _Document(doc_uri, source=source, version=version, language_id=language_id,
                         sync_kind=self._sync_kind, position_codec=self.position_codec)


def _engine_settings(settings: CompletionSettings) -> tuple:
    """The settings the loaded engine was made with: a change of any of them reloads it."""
    return settings.model, settings.engine, settings.threads, settings.batch_threads


class MtpServer(LanguageServer):
    def __init__(self, settings: CompletionSettings = CompletionSettings()):
        super().__init__("mtp-assistant", "0.1.0", protocol_cls=_Protocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.base_settings = settings  # from the command line; editor settings apply over it
        self.settings = settings
        self.stats = ServerStats()
        self.service: CompletionService | None = None
        self.model_error: str | None = None
        self.index: WorkspaceIndex | None = None
        self.root: Path | None = None
        self.context = ContextCollector(self.open_texts, readable=self.may_read)
        self.stats_file: StatsFileWriter | None = None
        self._load_lock = asyncio.Lock()
        self.started = False  # `initialized` was handled: the background work runs once
        self.exit_code: int | None = None  # set by `exit`
        self._shown: set[str] = set()  # kinds of problem already shown to the user

    # --- transports: lsp.rpc reads the frames, for stdio and TCP alike ---

    def exit_requested(self) -> None:
        self.exit_code = 0 if self.protocol._shutdown else 1

    async def serve(self, source) -> None:
        """Serve frames until `exit` or the end of the input."""
        while self.exit_code is None:
            frame = await read_frame(source)
            if frame is None:
                return
            if frame.error is not None:
                self.protocol.send_error(frame.error)
            else:
                self.protocol.receive(frame.body)
            await asyncio.sleep(0)  # let handlers run between frames already buffered

    def start_io(self, stdin=None, stdout=None) -> None:
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            asyncio.run(self.serve(FdSource((stdin or sys.stdin.buffer).fileno())))
        except BrokenPipeError:
            log.error("the editor closed the connection")
        finally:
            self.shutdown()

    def start_tcp(self, host: str, port: int, token: str | None = None) -> None:
        """Serve one client on host:port; it must present `token` (see the module docstring)."""
        if not token:
            raise ValueError("a TCP server needs a token")
        try:
            asyncio.run(self._serve_tcp(host, port, token))
        finally:
            self.shutdown()

    async def _serve_tcp(self, host: str, port: int, token: str) -> None:
        finished = asyncio.Event()
        busy = False

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal busy
            source = StreamSource(reader)
            try:
                first = await asyncio.wait_for(read_frame(source), AUTH_TIMEOUT_S)
            except asyncio.TimeoutError:
                first = None
            refusal = check_token(first, token)
            if refusal is None and busy:
                refusal = RpcError(INVALID_REQUEST, "another client is connected", refusal_id(first))
            if refusal is not None:
                log.warning("TCP connection refused: %s", refusal.message)
                writer.write(encode_frame(refusal.response()))
                await _close(writer)
                return
            busy = True
            self.protocol.set_writer(writer)
            try:
                self.protocol.receive(first.body)
                await self.serve(source)
            finally:
                await _close(writer)
                finished.set()

        tcp = await asyncio.start_server(connection, host, port)
        async with tcp:
            await finished.wait()

    # --- plumbing the handlers share ---

    def open_texts(self) -> dict[str, str]:
        return {uri: doc.source for uri, doc in list(self.workspace.text_documents.items())}

    def workspace_roots(self) -> list[Path]:
        """The workspace folders and the root, symlinks resolved."""
        uris = [folder.uri for folder in self.workspace.folders.values()]
        uris += [self.workspace.root_uri] if self.workspace.root_uri else []
        return [p.resolve() for p in (uri_to_path(u) for u in uris) if p is not None]

    def may_read(self, path: Path) -> bool:
        return inside(path, self.workspace_roots())

    def text_of(self, uri: str) -> str | None:
        """The document's text: the editor's copy, or, for a document it never opened,
        the file on disk if it is inside the workspace (None when there is none, it is
        elsewhere, or it is too large)."""
        doc = self.workspace.text_documents.get(uri)
        if doc is not None:
            return doc.source
        path = uri_to_path(uri)
        return read_inside(path, self.workspace_roots()) if path is not None else None

    @property
    def encoding(self) -> str:
        """The position encoding agreed at initialize: UTF-16 unless the client prefers another."""
        return str(getattr(self.workspace.position_encoding, "value", self.workspace.position_encoding) or "utf-16")

    def show_once(self, kind: str, level: types.MessageType, message: str) -> None:
        """A window/showMessage, the first time only for each kind of problem: hostile
        or broken input must not bury the editor in pop-ups (the log has them all)."""
        if kind in self._shown:
            return
        self._shown.add(kind)
        self.window_show_message(types.ShowMessageParams(level, f"mtp-assistant: {message}"))

    def warn(self, message: str, kind: str | None = None) -> None:
        log.warning(message)
        self.show_once(kind or message, types.MessageType.Warning, message)

    def report_server_error(self, error: Exception, source) -> None:
        """pygls reports here what it cannot answer in a response (a notification's bad
        params, a handler's exception): log it, show each kind once."""
        log.error("%s: %s: %s", getattr(source, "__name__", source), type(error).__name__, error)
        if source is FeatureRequestError:  # the request's error response says it already
            return
        kind = f"{getattr(source, '__name__', source)}:{type(error).__name__}"
        self.show_once(kind, types.MessageType.Error, f"error in the server ({error}); later ones go to the log only")

    def apply_settings(self, data: Any) -> bool:
        """Editor settings over the command line's; True when the model must (re)load."""
        settings, problems = load_settings(data, self.base_settings)
        for problem in problems:
            self.warn(f"setting ignored: {problem}", kind=f"setting:{problem.split()[0]}")
        reload = _engine_settings(settings) != _engine_settings(self.settings)
        self.settings = settings
        if self.service is not None:
            self.service.update_settings(settings)
        return reload

    async def load_model(self) -> None:
        """Load the engine in a thread, reporting $/progress; the server answers meanwhile."""
        async with self._load_lock:
            settings = self.settings
            token = str(uuid.uuid4())
            progress = bool(getattr(getattr(self.client_capabilities, "window", None), "work_done_progress", False))
            if progress:
                try:
                    await asyncio.wait_for(self.work_done_progress.create_async(token), 10)
                except Exception:  # a client that does not answer must not block loading
                    progress = False
            if progress:
                self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="mtp-assistant", message="loading model"))
            try:
                # An explicit model wins; else the one bound to the workspace's repository.
                store = ModelStore()
                model_dir = store.resolve(settings.model) if settings.model else store.model_for(self.root)
                from assistant.engine import load_engine

                engine = await asyncio.to_thread(load_engine, model_dir, settings.engine, threads=settings.threads,
                                                 batch_threads=settings.batch_threads)
                self.service = CompletionService(engine, self.settings, self.context, self.stats)
                engine_name = engine.label
                self.stats.model, self.stats.engine = str(model_dir), engine_name
                self.stats.threads = engine.threads
                self.stats.warnings = list(engine.warnings)
                self.model_error = None
                log.info("model %s loaded (%s engine, threads %d / %d for batches)", model_dir, engine_name, *engine.threads)
                message = f"model {model_dir.name} ready"
                for warning in engine.warnings:  # e.g. engine "auto" fell back to torch, and why
                    self.warn(warning)
            except Exception as e:  # bad model files, unknown names: say so, keep serving
                self.model_error = str(e)
                message = f"cannot load the model: {e}"
                log.error(message)
                self.show_once("model", types.MessageType.Error, message)
            if progress:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))

    async def complete(self, uri: str, position: types.Position) -> Completion | None:
        """The completion at a position, cancellable: a cancelled asyncio task (the
        client's $/cancelRequest) or a newer request for the same document sets the
        engine's cancel event, which it checks between forward passes."""
        self.stats.request()
        service = self.service
        if service is None:
            return None
        text = self.text_of(uri)
        if text is None:
            return None
        cancel = service.begin(uri)
        try:
            return await asyncio.to_thread(
                service.complete_at, text, position.line, position.character, uri, cancel, self.encoding
            )
        except asyncio.CancelledError:
            cancel.set()
            raise
        except Exception:
            self.stats.error()
            raise
        finally:
            service.end(uri, cancel)


def inside(path: Path, roots: list[Path]) -> bool:
    """Whether path's real location (symlinks and `..` resolved) is under one of roots."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return any(real.is_relative_to(root) for root in roots)


def read_inside(path: Path, roots: list[Path]) -> str | None:
    """A file's text if it lies inside one of roots and is at most MAX_UNOPENED_FILE bytes."""
    if not inside(path, roots):
        log.info("not reading %s: outside the workspace", path)
        return None
    try:
        real = path.resolve()  # read the checked path, not the link again
        if real.is_file() and real.stat().st_size <= MAX_UNOPENED_FILE:
            with real.open("rb") as f:
                return f.read(MAX_UNOPENED_FILE).decode("utf-8", errors="replace")
    except (OSError, RuntimeError):
        pass
    return None


def check_token(first: Frame | None, token: str) -> RpcError | None:
    """Why a TCP connection's first frame does not authorize it, or None when it does:
    it must be `initialize` with initializationOptions {"token": <the server's token>}."""
    data = decode_message(first.body)[0] if first is not None and first.body is not None else None
    params = data.get("params") if data else None
    options = params.get("initializationOptions") if isinstance(params, dict) else None
    presented = options.get("token") if isinstance(options, dict) else None
    if (
        data is not None and data.get("method") == types.INITIALIZE and "id" in data
        and isinstance(presented, str) and hmac.compare_digest(presented.encode(), token.encode())
    ):
        return None
    return RpcError(UNAUTHORIZED, "unauthorized: send initialize with initializationOptions.token "
                    "set to the contents of the server's token file", refusal_id(first))


def refusal_id(first: Frame | None):
    data = decode_message(first.body)[0] if first is not None and first.body is not None else None
    return data.get("id") if data and not is_response(data) else None


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


server = MtpServer()


@server.feature(types.INITIALIZE)
def initialize(ls: MtpServer, params: types.InitializeParams) -> None:
    # The same workspace pygls just made, with documents that take edits in place.
    pygls_workspace = ls.workspace
    ls.protocol._workspace = _Workspace(
        pygls_workspace.root_uri, types.TextDocumentSyncKind.Incremental, params.workspace_folders or [],
        pygls_workspace.position_encoding,
    )
    ls.apply_settings(without_token(params.initialization_options))
    folders = params.workspace_folders or []
    root_uri = folders[0].uri if folders else pygls_workspace.root_uri
    ls.root = uri_to_path(root_uri) if root_uri else None
    ls.context.root = ls.root.resolve() if ls.root else None


def without_token(options: Any) -> Any:
    """initializationOptions less the TCP token, which is no setting."""
    return {k: v for k, v in options.items() if k != "token"} if isinstance(options, dict) else options


@server.feature(types.INITIALIZED)
async def initialized(ls: MtpServer, params: types.InitializedParams) -> None:
    if ls.started:  # a repeated notification must not start the threads again
        log.warning("initialized received again: ignored")
        return
    ls.started = True
    ls.stats_file = StatsFileWriter(ls.stats, ModelStore().root).start()
    if ls.root is not None and ls.root.is_dir() and ls.settings.workspace_index:
        threading.Thread(target=_build_index, args=(ls,), name="workspace-index", daemon=True).start()
    await ls.load_model()


def _build_index(ls: MtpServer) -> None:
    try:
        index = WorkspaceIndex(ls.root).build().watch()
    except Exception:  # no index is a worse prompt, not a broken server
        log.exception("cannot index the workspace %s", ls.root)
        return
    ls.index = ls.context.index = index
    log.info("workspace index: %d files, %d bytes", len(index), index.bytes)


@server.feature(types.SHUTDOWN)
def shutdown(ls: MtpServer, params: None) -> None:
    if ls.index is not None:
        ls.index.stop()
    if ls.stats_file is not None:
        ls.stats_file.stop()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(ls: MtpServer, params: types.DidChangeConfigurationParams) -> None:
    if ls.apply_settings(params.settings):
        await ls.load_model()


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: MtpServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.context.edited(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: MtpServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.context.forget(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: MtpServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
    result = await ls.complete(params.text_document.uri, params.position)
    if result is None or not result.text:
        return types.InlineCompletionList(items=[])
    here = types.Range(params.position, params.position)
    accepted = types.Command("accepted", ACCEPTED_COMMAND, arguments=[{"uri": params.text_document.uri}])
    return types.InlineCompletionList(items=[types.InlineCompletionItem(result.text, range=here, command=accepted)])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
async def completion(ls: MtpServer, params: types.CompletionParams) -> types.CompletionList:
    result = await ls.complete(params.text_document.uri, params.position)
    if result is None or not result.text.strip():
        return types.CompletionList(is_incomplete=True, items=[])
    # Editors filter items by the word before the cursor: the item replaces that word.
    text = ls.text_of(params.text_document.uri) or ""
    offset = offset_at(text, params.position.line, params.position.character, ls.encoding)
    word_start = offset
    while word_start > 0 and (text[word_start - 1].isalnum() or text[word_start - 1] == "_") and offset - word_start < 100:
        word_start -= 1
    word = text[word_start:offset]
    start = types.Position(params.position.line, params.position.character - unit_length(word, ls.encoding))
    label = (word + result.text).strip().split("\n")[0][:80]
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Snippet,
        detail="mtp-assistant",
        filter_text=word + result.text,
        text_edit=types.TextEdit(types.Range(start, params.position), word + result.text),
        insert_text_format=types.InsertTextFormat.PlainText,
        command=types.Command("accepted", ACCEPTED_COMMAND, arguments=[{"uri": params.text_document.uri}]),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


@server.command(ACCEPTED_COMMAND)
def accepted_command(ls: MtpServer, *args) -> None:
    ls.stats.suggestion_accepted()


@server.feature(ACCEPTED_NOTIFICATION)
def accepted_notification(ls: MtpServer, params: Any) -> None:
    ls.stats.suggestion_accepted()


@server.feature(SHOWN_NOTIFICATION)
def shown_notification(ls: MtpServer, params: Any) -> None:
    ls.stats.suggestion_shown()


@server.feature(STATS_REQUEST)
def stats_request(ls: MtpServer, params: Any) -> dict:
    return ls.stats.snapshot() | {"ready": ls.service is not None, "model_error": ls.model_error}
