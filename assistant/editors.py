"""Editor set-ups for the language server, with the command's real path filled in.

Editors start the server themselves, from their own PATH; `.venv/bin` is usually not on it,
so each snippet names the executable by its absolute path. `mtp-assistant doctor` prints
the one for the user's editor; README.md shows them with a placeholder path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

EDITORS = ("neovim", "vscode", "helix", "emacs")


def server_command() -> Path:
    """The `mtp-assistant` executable of this installation (next to its Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("mtp-assistant")
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("mtp-assistant")
    return Path(found).absolute() if found else beside.absolute()


def snippet(editor: str, command: Path) -> str:
    """The configuration an editor needs to start `command lsp`."""
    exe = str(command)
    if editor == "neovim":
        return f"""-- Neovim 0.11+ (init.lua); 0.12 adds inline completion (ghost text)
vim.lsp.config('mtp_assistant', {{
  cmd = {{ {json.dumps(exe)}, 'lsp' }},
  filetypes = {{ 'python', 'lua', 'javascript', 'typescript', 'go', 'rust', 'c', 'cpp' }},
  root_markers = {{ '.git' }},
  init_options = {{ maxTokens = 48, multiline = 'auto' }},
}})
vim.lsp.enable('mtp_assistant')
if vim.lsp.inline_completion then  -- 0.12+
  vim.lsp.inline_completion.enable()
  vim.keymap.set('i', '<Tab>', function()
    if not vim.lsp.inline_completion.get() then return '<Tab>' end
  end, {{ expr = true, desc = 'Accept the inline completion' }})
end"""
    if editor == "vscode":
        settings = {
            "glspc.serverCommand": exe,
            "glspc.serverCommandArguments": ["lsp"],
            "glspc.languageId": "python",
            "glspc.initializationOptions": {"maxTokens": 48},
        }
        return "// settings.json, with the \"Generic LSP Client\" extension (llllvvuu.llllvvuu-glspc)\n" + json.dumps(
            settings, indent=2
        )
    if editor == "helix":
        return f"""# ~/.config/helix/languages.toml
[language-server.mtp-assistant]
command = {json.dumps(exe)}
args = ["lsp"]
config = {{ maxTokens = 32, multiline = "never" }}

[[language]]
name = "python"
language-servers = ["pylsp", "mtp-assistant"]"""
    if editor == "emacs":
        return f""";; init.el, eglot (Emacs 29+)
(with-eval-after-load 'eglot
  (add-to-list 'eglot-server-programs
               '((python-mode python-ts-mode)
                 . ({json.dumps(exe)} "lsp" :initializationOptions (:maxTokens 32)))))"""
    raise ValueError(f"unknown editor {editor!r}; choose from {', '.join(EDITORS)}")
