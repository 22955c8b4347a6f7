"""`python -m lsp` / `mtp-assistant lsp` / `mtp-assistant-lsp`: start the language server.

    mtp-assistant lsp                      stdio (what editors start)
    mtp-assistant lsp --tcp 2087           TCP on 127.0.0.1 only
    mtp-assistant lsp --log-file FILE      logs to FILE instead of stderr

stdout carries the protocol and nothing else: logs go to stderr or the file, and any
stray print is sent to stderr too.
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtp-assistant lsp", description="language server for MTP code completion")
    p.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of stdio")
    p.add_argument("--log-file", help="write logs here instead of stderr")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--model", help="model directory or store name (default: the store's default)")
    p.add_argument("--engine", default="auto", help="auto (llama.cpp where the model has a GGUF export, else torch), torch, llama")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=args.log_level, handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pygls logs every message it sends at INFO: far too much for a log file.
    logging.getLogger("pygls").setLevel(max(logging.WARNING, logging.getLogger().level))

    from assistant.completion.settings import CompletionSettings
    from lsp.server import server

    server.base_settings = server.settings = CompletionSettings(model=args.model, engine=args.engine)
    try:
        if args.tcp is not None:
            logging.getLogger("lsp").info("listening on 127.0.0.1:%d", args.tcp)
            server.start_tcp("127.0.0.1", args.tcp)
        else:
            stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
            sys.stdout = sys.stderr  # nothing but the protocol on stdout
            server.start_io(stdin, stdout)
    finally:
        if server.stats_file is not None:  # also when the editor went away without `shutdown`
            server.stats_file.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
