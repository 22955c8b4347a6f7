"""A real editor drives the server: headless Neovim's own LSP client over stdio.

Neovim starts `python -m lsp` itself, waits for the model, asks for an inline completion and
a completion at a cursor after non-ASCII text (Neovim converts its byte columns to UTF-16
itself), sends a malformed request and then a good one, and applies the completion's text
edit the way Neovim does. The Lua script writes what it saw to a JSON file this test reads.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from assistant.completion.positions import utf16_length
from tests.lsp.conftest import OPTIONS
from tests.lsp.test_server import CHAR, LINE, TEXT, expected

NVIM = shutil.which("nvim")
pytestmark = pytest.mark.skipif(NVIM is None, reason="Neovim is not installed (apt-get install neovim; `make test` installs it as root)")

SCRIPT = r"""
local out = {}
local function finish()
  vim.fn.writefile({vim.fn.json_encode(out)}, vim.env.NVIM_RESULT)
  vim.cmd('qall!')
end
local function fail(message)
  out.error = message
  finish()
end

local ok, err = pcall(function()
  vim.cmd('edit ' .. vim.fn.fnameescape(vim.env.NVIM_FILE))
  local buf = vim.api.nvim_get_current_buf()
  local client_id = vim.lsp.start_client({
    name = 'mtp-assistant',
    cmd = vim.fn.json_decode(vim.env.NVIM_SERVER_CMD),
    root_dir = vim.env.NVIM_WORKSPACE,
    init_options = vim.fn.json_decode(vim.env.NVIM_OPTIONS),
  })
  if not client_id then return fail('the client did not start') end
  vim.lsp.buf_attach_client(buf, client_id)
  local client = vim.lsp.get_client_by_id(client_id)
  if not vim.wait(60000, function() return client.initialized end, 50) then return fail('not initialized') end
  out.inline_capability = client.server_capabilities.inlineCompletionProvider ~= nil

  -- JSON null arrives as nil or vim.NIL, depending on the Neovim version.
  local function given(value) return value ~= nil and value ~= vim.NIL end
  local ready = vim.wait(120000, function()
    local r = client.request_sync('mtp/stats', {}, 5000, buf)
    return r ~= nil and r.result ~= nil and (r.result.ready == true or given(r.result.model_error))
  end, 100)
  if not ready then return fail('the model never became ready') end
  local loaded = client.request_sync('mtp/stats', {}, 5000, buf).result
  if given(loaded.model_error) then return fail('the model did not load: ' .. loaded.model_error) end

  -- The cursor after the last character of the line, in Neovim's own UTF-16 count.
  local row = tonumber(vim.env.NVIM_LINE)
  local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, true)[1]
  local _, character = vim.str_utfindex(line, #line)
  local position = {line = row, character = character}
  out.character = character
  local doc = {uri = vim.uri_from_bufnr(buf)}

  local inline = client.request_sync('textDocument/inlineCompletion',
    {textDocument = doc, position = position, context = {triggerKind = 2}}, 60000, buf)
  out.inline = inline and inline.result
  local listed = client.request_sync('textDocument/completion', {textDocument = doc, position = position}, 60000, buf)
  out.completion = listed and listed.result

  local bad = client.request_sync('textDocument/completion', {textDocument = {uri = 5}, position = 'here'}, 10000, buf)
  out.malformed = bad and {error = bad.err} or 'no answer'
  local again = client.request_sync('textDocument/inlineCompletion',
    {textDocument = doc, position = position, context = {triggerKind = 2}}, 60000, buf)
  out.after_malformed = again and again.result
  -- Last: the edit changes the document the requests above were about.
  if out.completion and out.completion.items[1] then
    vim.lsp.util.apply_text_edits({out.completion.items[1].textEdit}, buf, 'utf-16')
    out.line_after_edit = vim.api.nvim_buf_get_lines(buf, row, row + 1, true)[1]
  end
  client.stop()
  vim.wait(10000, function() return client.is_stopped() end, 50)
end)
if not ok then out.error = tostring(err) end
finish()
"""


def test_neovim_drives_the_server(tiny_model_dir, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    source = workspace / "cursor.py"
    source.write_text(TEXT, encoding="utf-8")
    (tmp_path / "script.lua").write_text(SCRIPT)
    result_file = tmp_path / "result.json"
    env = {
        **os.environ,
        "MTP_ASSISTANT_HOME": str(tmp_path / "home"),
        "OMP_NUM_THREADS": "1",
        "NVIM_FILE": str(source),
        "NVIM_WORKSPACE": str(workspace),
        "NVIM_LINE": str(LINE),
        "NVIM_RESULT": str(result_file),
        "NVIM_OPTIONS": json.dumps(OPTIONS),
        "NVIM_SERVER_CMD": json.dumps([sys.executable, "-m", "lsp", "--model", str(tiny_model_dir)]),
        "XDG_STATE_HOME": str(tmp_path / "state"),  # Neovim's LSP log goes here, not into ~
    }
    proc = subprocess.run(
        [NVIM, "--headless", "--clean", "-n", "-c", f"luafile {tmp_path / 'script.lua'}"],
        env=env, cwd=workspace, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
    )
    assert result_file.exists(), f"Neovim wrote no result (exit {proc.returncode}): {proc.stderr[-2000:]}"
    seen = json.loads(result_file.read_text())
    assert "error" not in seen, seen.get("error")
    assert seen["inline_capability"]

    # Neovim counted the cursor column as the server does: UTF-16 units (the emoji is two).
    assert seen["character"] == CHAR == utf16_length(TEXT.split("\n")[LINE])
    want = expected(tiny_model_dir, TEXT, LINE, CHAR)
    assert want
    cursor = {"line": LINE, "character": CHAR}
    (item,) = seen["inline"]["items"]
    assert item["insertText"] == want
    assert item["range"] == {"start": cursor, "end": cursor}

    # The completion item replaces the word before the cursor; applied by Neovim, the line
    # reads as the old line followed by the completion.
    edit = seen["completion"]["items"][0]["textEdit"]
    assert edit["range"]["end"] == cursor
    assert seen["line_after_edit"] == TEXT.split("\n")[LINE] + want.split("\n")[0]

    # A malformed request gets an error answer, and the server goes on serving.
    assert isinstance(seen["malformed"], dict) and seen["malformed"]["error"]["code"] < 0
    assert seen["after_malformed"]["items"][0]["insertText"] == want
