"""The language server end to end: `python -m lsp` over stdio, a tiny real model."""

import asyncio
import json
import os
import shutil
import time

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from assistant.completion.positions import utf16_length
from assistant.completion.service import CompletionService
from assistant.completion.settings import CompletionSettings, load_settings
from assistant.engine import load_engine
from tests.lsp.conftest import OPTIONS, running_server, send_raw, stats

pytestmark = pytest.mark.asyncio(loop_scope="module")

EMOJI = "😀"
TEXT = f"def add(a, b):\n    return a + b\n\nname = 'é{EMOJI}'; x = add(1, "
LINE = 3
NO_CAP = {"timeCapMs": 600_000}  # a time cap would make the text depend on the machine's load
CHAR = utf16_length(TEXT.split("\n")[3])  # the end, in UTF-16 units: the emoji counts twice


def expected(model_dir, text, line, character, options=OPTIONS) -> str:
    """What the same model and settings give in this process (no snippets: one document)."""
    settings, problems = load_settings(options, CompletionSettings(model=str(model_dir)))
    assert not problems
    svc = CompletionService(load_engine(model_dir, "torch"), settings)
    return svc.complete_at(text, line, character).text


def open_doc(client, name: str, text: str, language: str = "python") -> str:
    uri = (client.workspace_dir / name).as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, language, 1, text)))
    return uri


def inline_params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic),
        text_document=types.TextDocumentIdentifier(uri),
        position=types.Position(line, character),
    )


async def inline(client, uri: str, line: int, character: int) -> types.InlineCompletionList:
    return await client.text_document_inline_completion_async(inline_params(uri, line, character))


async def test_initialize_advertises_inline_completion(client):
    caps = client.initialize_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert "mtp.accepted" in caps.execute_command_provider.commands
    # The model loaded after initialize, reporting $/progress from begin to end.
    reports = [r for token in client.progress_reports.values() for r in token]
    assert [r.kind for r in reports] == ["begin", "end"] and "ready" in reports[-1].message


async def test_completion_comes_back_at_the_cursor(client, tiny_model_dir):
    uri = open_doc(client, "cursor.py", TEXT)
    result = await inline(client, uri, LINE, CHAR)
    assert len(result.items) == 1
    item = result.items[0]
    assert item.insert_text and item.insert_text == expected(tiny_model_dir, TEXT, LINE, CHAR)
    assert item.range == types.Range(types.Position(LINE, CHAR), types.Position(LINE, CHAR))
    assert item.command.command == "mtp.accepted"
    # The completion fallback: one item that replaces the word before the cursor.
    listed = await client.text_document_completion_async(
        types.CompletionParams(types.TextDocumentIdentifier(uri), types.Position(LINE, CHAR))
    )
    assert listed.is_incomplete and listed.items[0].text_edit.new_text.endswith(item.insert_text)
    assert listed.items[0].text_edit.range.end == types.Position(LINE, CHAR)


async def test_incremental_edits_in_utf16(client, tiny_model_dir):
    uri = open_doc(client, "incremental.py", TEXT)
    # Insert "2, " after the emoji's closing quote: positions count the emoji as two units.
    at = types.Position(LINE, utf16_length(f"name = 'é{EMOJI}'"))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        types.VersionedTextDocumentIdentifier(version=2, uri=uri),
        [types.TextDocumentContentChangePartial(types.Range(at, at), "  # ok")],
    ))
    edited = TEXT.replace(f"'é{EMOJI}'", f"'é{EMOJI}'  # ok")
    end = utf16_length(edited.split("\n")[3])
    result = await inline(client, uri, LINE, end)
    assert result.items[0].insert_text == expected(tiny_model_dir, edited, LINE, end)


LONG_TEXT = "def add(a, b):\n    return a + b\n\n" * 100 + "x = add(1, "
LONG_LINE = 300


async def test_cancel_request_stops_generation(slow_client):
    client = slow_client
    before = (await stats(client))["cancelled"]
    uri = open_doc(client, "cancel.py", LONG_TEXT)
    future = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, LONG_LINE, 11), msg_id="long-1")
    await asyncio.sleep(0.1)  # in the prefill now (it takes seconds), however fast the machine
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long-1"))
    with pytest.raises(JsonRpcException, match="cancel"):
        await asyncio.wait_for(asyncio.wrap_future(future), 30)
    # The generation itself stopped (between forward passes), and the server serves on.
    for _ in range(50):
        if (await stats(client))["cancelled"] == before + 1:
            break
        await asyncio.sleep(0.1)
    assert (await stats(client))["cancelled"] == before + 1
    assert (await inline(client, uri, 0, 0)) is not None


async def test_a_new_request_supersedes_the_one_in_flight(slow_client):
    client = slow_client
    before = (await stats(client))["cancelled"]
    uri = open_doc(client, "supersede.py", LONG_TEXT)
    first = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, LONG_LINE, 11))
    await asyncio.sleep(0.1)
    second = await inline(client, uri, 1, 4)
    first_result = await asyncio.wait_for(asyncio.wrap_future(first), 30)
    assert len(first_result.items) == 0 and (await stats(client))["cancelled"] == before + 1
    assert second is not None


async def test_malformed_request_gets_an_error_and_the_next_is_served(client, tiny_model_dir):
    uri = open_doc(client, "malformed.py", TEXT)
    bad = {"textDocument": {"uri": 5}, "position": {"line": "x"}}
    with pytest.raises(JsonRpcException, match="[Ii]nvalid"):
        await asyncio.wait_for(send_raw(client, types.TEXT_DOCUMENT_INLINE_COMPLETION, bad), 10)
    with pytest.raises(JsonRpcException):
        await asyncio.wait_for(send_raw(client, "mtp/no-such-method", {}), 10)
    result = await inline(client, uri, LINE, CHAR)
    assert result.items[0].insert_text == expected(tiny_model_dir, TEXT, LINE, CHAR)


async def test_large_empty_binary_and_unseen_documents(client):
    big = ("# padding line\n" * 700_000) + TEXT  # about 10 MB
    uri = open_doc(client, "big.py", big)
    result = await asyncio.wait_for(inline(client, uri, LINE + 700_000, CHAR), 30)
    assert result.items and result.items[0].insert_text
    empty = open_doc(client, "empty.py", "")
    assert isinstance(await inline(client, empty, 0, 0), types.InlineCompletionList)
    binary = open_doc(client, "data.bin", "\x00\x01\x02PNG\x00" * 1000, "plaintext")
    assert len((await inline(client, binary, 0, 5)).items) == 0
    # Never opened: read from disk if it is there, nothing if not.
    on_disk = client.workspace_dir / "disk.py"
    on_disk.write_text(TEXT)
    assert (await inline(client, on_disk.as_uri(), LINE, CHAR)).items
    missing = (client.workspace_dir / "missing.py").as_uri()
    assert len((await inline(client, missing, 3, 3)).items) == 0
    assert (await stats(client))["errors"] == 0


async def test_invalid_settings_fall_back_with_a_warning(tiny_model_dir, tmp_path):
    async with running_server(tiny_model_dir, tmp_path, {"maxTokens": "lots", "bogus": True, **NO_CAP}) as client:
        warnings = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        assert any("max_tokens" in w for w in warnings) and any("bogus" in w for w in warnings)
        uri = open_doc(client, "a.py", TEXT)
        result = await inline(client, uri, LINE, CHAR)  # the defaults serve
        assert result.items[0].insert_text == expected(tiny_model_dir, TEXT, LINE, CHAR, NO_CAP)
        # A valid change applies; an invalid one warns again and changes nothing.
        seen = len(client.messages)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams({"mtpAssistant": {"maxTokens": 2, **NO_CAP}}))
        short = await inline(client, uri, LINE, CHAR)
        assert short.items[0].insert_text == expected(tiny_model_dir, TEXT, LINE, CHAR, {"maxTokens": 2, **NO_CAP})
        assert len(client.messages) == seen
        # Each change carries all settings: the bad one is refused, the rest applies.
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams({"maxTokens": 3, "multiline": 3, **NO_CAP}))
        short = await inline(client, uri, LINE, CHAR)
        assert any("multiline" in m.message for m in client.messages[seen:])
        assert short.items[0].insert_text == expected(tiny_model_dir, TEXT, LINE, CHAR, {"maxTokens": 3, **NO_CAP})
        assert list((client.home / "servers").glob("*.json"))
    assert not list((tmp_path / "home" / "servers").glob("*.json"))  # removed on a clean exit


async def test_thread_settings_reach_the_engine_and_a_change_reloads_it(tiny_model_dir, tmp_path):
    from models.gguf_export import export_model

    model = shutil.copytree(tiny_model_dir, tmp_path / "exported")
    export_model(model, "f32")
    options = {**OPTIONS, "engine": "llama", "threads": 1, "batchThreads": 1}
    async with running_server(model, tmp_path, options) as client:
        snap = await stats(client)
        assert (snap["engine"], snap["threads"]) == ("llama.cpp f32", [1, 1])
        uri = open_doc(client, "a.py", TEXT)
        assert (await inline(client, uri, LINE, CHAR)).items
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams({**options, "batchThreads": 2}))
        deadline = time.monotonic() + 120
        while (snap := await stats(client))["threads"] != [1, 2] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert snap["threads"] == [1, 2] and snap["ready"]
        assert (await inline(client, uri, LINE, CHAR)).items
        assert (await stats(client))["errors"] == 0


async def test_telemetry_and_the_stats_file(client):
    before = await stats(client)
    uri = open_doc(client, "telemetry.py", TEXT + "\n")
    await inline(client, uri, LINE, CHAR)
    client.protocol.notify("mtp/shown", {"uri": uri})
    client.protocol.notify("mtp/shown", {"uri": uri})
    await client.workspace_execute_command_async(types.ExecuteCommandParams("mtp.accepted", [{"uri": uri}]))
    snap = await stats(client)
    assert (snap["shown"] - before["shown"], snap["accepted"] - before["accepted"]) == (2, 1)
    assert snap["requests"] - before["requests"] == snap["completions"] - before["completions"] == 1
    assert snap["latency_ms"]["p50"] > 0
    assert snap["tokens_per_forward"] >= 1
    await asyncio.sleep(2.5)  # written every ~2 s
    files = list((client.home / "servers").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["pid"] == snap["pid"] != os.getpid()


async def test_a_model_that_cannot_load_is_reported_and_requests_still_answer(tmp_path):
    missing = tmp_path / "no-model"
    async with running_server(missing, tmp_path, OPTIONS) as client:
        snap = await stats(client)
        assert not snap["ready"] and "no-model" in snap["model_error"]
        assert any("cannot load the model" in m.message for m in client.messages)
        uri = open_doc(client, "a.py", TEXT)
        assert len((await inline(client, uri, LINE, CHAR)).items) == 0


async def test_a_client_that_prefers_utf8_positions_gets_them(tiny_model_dir, tmp_path):
    async with running_server(tiny_model_dir, tmp_path, OPTIONS, encodings=["utf-8", "utf-16"]) as client:
        assert client.initialize_result.capabilities.position_encoding == "utf-8"
        uri = open_doc(client, "a.py", TEXT)
        end = len(TEXT.split("\n")[3].encode("utf-8"))  # the end of the line in UTF-8 bytes
        result = await inline(client, uri, LINE, end)
        assert result.items[0].insert_text == expected(tiny_model_dir, TEXT, LINE, CHAR)
        assert result.items[0].range.start == types.Position(LINE, end)
