"""The pygls language server: handlers of a few lines over assistant.completion.

Requests: textDocument/inlineCompletion (LSP 3.18), textDocument/completion (the
fallback), mtp/stats (the server's stats). Notifications: mtp/shown and mtp/accepted
(telemetry from the editor); an inline item's command `mtp.accepted` counts too.

The model loads in the background after `initialized`, reporting $/progress;
completion requests that arrive before it is ready get an empty answer at once (the
editor asks again on the next keystroke).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument, Workspace

from assistant.completion.context import ContextCollector, WorkspaceIndex, uri_to_path
from assistant.completion.positions import offset_at, unit_length
from assistant.completion.service import Completion, CompletionService
from assistant.completion.settings import CompletionSettings, load_settings
from assistant.completion.stats import ServerStats, StatsFileWriter
from assistant.store import ModelStore

log = logging.getLogger("lsp")

ACCEPTED_COMMAND = "mtp.accepted"
STATS_REQUEST = "mtp/stats"
SHOWN_NOTIFICATION = "mtp/shown"
ACCEPTED_NOTIFICATION = "mtp/accepted"
MAX_UNOPENED_FILE = 32 << 20  # bytes read from disk for a document the editor never opened

_ANSWERED = object()


class _Protocol(LanguageServerProtocol):
    """pygls logs a request whose params do not parse and never answers it; answer it
    with the JSON-RPC error instead, so the editor is not left waiting."""

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "jsonrpc" in data and "id" in data and "method" in data:
                self._send_response(data["id"], error=exc.to_response_error())
                return _ANSWERED
            raise

    def handle_message(self, message):
        if message is not _ANSWERED:
            super().handle_message(message)


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
        self.context = ContextCollector(self.open_texts)
        self.stats_file: StatsFileWriter | None = None
        self._load_lock = asyncio.Lock()

    # --- plumbing the handlers share ---

    def open_texts(self) -> dict[str, str]:
        return {uri: doc.source for uri, doc in list(self.workspace.text_documents.items())}

    def text_of(self, uri: str) -> str | None:
        """The document's text: the editor's copy, or the file on disk for a document
        it never opened (None when there is none or it is too large)."""
        doc = self.workspace.text_documents.get(uri)
        if doc is not None:
            return doc.source
        path = uri_to_path(uri)
        try:
            if path is not None and path.is_file() and path.stat().st_size <= MAX_UNOPENED_FILE:
                return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
        return None

    @property
    def encoding(self) -> str:
        """The position encoding agreed at initialize: UTF-16 unless the client prefers another."""
        return str(getattr(self.workspace.position_encoding, "value", self.workspace.position_encoding) or "utf-16")

    def warn(self, message: str) -> None:
        log.warning(message)
        self.window_show_message(types.ShowMessageParams(types.MessageType.Warning, f"mtp-assistant: {message}"))

    def apply_settings(self, data: Any) -> bool:
        """Editor settings over the command line's; True when the model must (re)load."""
        settings, problems = load_settings(data, self.base_settings)
        for problem in problems:
            self.warn(f"setting ignored: {problem}")
        reload = (settings.model, settings.engine) != (self.settings.model, self.settings.engine)
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
                model_dir = ModelStore().resolve(settings.model or "default")
                from assistant.engine import load_engine

                engine = await asyncio.to_thread(load_engine, model_dir, settings.engine)
                self.service = CompletionService(engine, self.settings, self.context, self.stats)
                quant = getattr(engine, "quant", None)  # the llama.cpp engine's weights: Q8_0, ...
                engine_name = f"llama.cpp {quant}" if quant else "torch"
                self.stats.model, self.stats.engine = str(model_dir), engine_name
                self.model_error = None
                log.info("model %s loaded (%s engine)", model_dir, engine_name)
                message = f"model {model_dir.name} ready"
            except Exception as e:  # bad model files, unknown names: say so, keep serving
                self.model_error = str(e)
                message = f"cannot load the model: {e}"
                self.window_show_message(types.ShowMessageParams(types.MessageType.Error, f"mtp-assistant: {message}"))
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


server = MtpServer()


@server.feature(types.INITIALIZE)
def initialize(ls: MtpServer, params: types.InitializeParams) -> None:
    # The same workspace pygls just made, with documents that take edits in place.
    pygls_workspace = ls.workspace
    ls.protocol._workspace = _Workspace(
        params.root_uri, types.TextDocumentSyncKind.Incremental, params.workspace_folders or [],
        pygls_workspace.position_encoding,
    )
    ls.apply_settings(params.initialization_options)
    folders = params.workspace_folders or []
    root_uri = folders[0].uri if folders else params.root_uri
    ls.root = uri_to_path(root_uri) if root_uri else None
    ls.context.root = ls.root.resolve() if ls.root else None


@server.feature(types.INITIALIZED)
async def initialized(ls: MtpServer, params: types.InitializedParams) -> None:
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
