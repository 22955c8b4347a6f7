"""`python -m lsp` / `mtp-assistant lsp` / `mtp-assistant-lsp`: start the language server.

    mtp-assistant lsp                      stdio (what editors start)
    mtp-assistant lsp --tcp 2087           TCP on 127.0.0.1 only, with a token
    mtp-assistant lsp --log-file FILE      logs to FILE instead of stderr

stdout carries the protocol and nothing else: logs go to stderr or the file, and any
stray print is sent to stderr too.

TCP: any local user can connect to 127.0.0.1, so the server makes a random token at
start and writes it to a file only its user can read (mode 0600): --token-file, or
lsp-<port>.token in the store's home. The file's path goes to stderr, the token
nowhere else. A client's first message must be `initialize` with
initializationOptions {"token": "<the file's contents, stripped>"}; a connection that
sends anything else first is answered with error -32001 and closed. The file is
removed when the server exits.

Exit status: 0 after `shutdown` then `exit`, or when the input ends; 1 for `exit`
without `shutdown` (LSP 3.18).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtp-assistant lsp", description="language server for MTP code completion")
    p.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of stdio")
    p.add_argument("--token-file", help="with --tcp: write the token here (default: lsp-PORT.token in the store's home)")
    p.add_argument("--log-file", help="write logs here instead of stderr")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--model", help="model directory or store name (default: the store's default)")
    p.add_argument("--engine", default="auto", help="auto (llama.cpp where the model has a GGUF export, else torch), torch, llama")
    p.add_argument("--threads", type=int, help="CPU threads for decoding (default: half the logical cores)")
    p.add_argument("--batch-threads", type=int,
                   help="llama.cpp's threads for forwards of several rows (prompts, drafts; default: every logical core)")
    return p


def write_token_file(path: Path, token: str) -> None:
    """The token in a new file only this user can read (an old file or link is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=args.log_level, handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pygls logs every message it sends at INFO: far too much for a log file.
    logging.getLogger("pygls").setLevel(max(logging.WARNING, logging.getLogger().level))

    from assistant.completion.settings import CompletionSettings
    from assistant.errors import UserError
    from assistant.store import ModelStore
    from lsp.server import server

    try:
        settings = CompletionSettings(model=args.model, engine=args.engine, threads=args.threads,
                                      batch_threads=args.batch_threads)
    except UserError as e:
        print(f"mtp-assistant lsp: {e}", file=sys.stderr)
        return 2
    server.base_settings = server.settings = settings
    token_file = None
    try:
        if args.tcp is not None:
            token = secrets.token_urlsafe(32)
            token_file = Path(args.token_file) if args.token_file else ModelStore().root / f"lsp-{args.tcp}.token"
            write_token_file(token_file, token)
            print(f"mtp-assistant lsp: token in {token_file}", file=sys.stderr, flush=True)
            logging.getLogger("lsp").info("listening on 127.0.0.1:%d", args.tcp)
            server.start_tcp("127.0.0.1", args.tcp, token=token)
        else:
            stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
            sys.stdout = sys.stderr  # nothing but the protocol on stdout
            server.start_io(stdin, stdout)
    finally:
        if server.stats_file is not None:  # also when the editor went away without `shutdown`
            server.stats_file.stop()
        if token_file is not None:
            token_file.unlink(missing_ok=True)
    return server.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
