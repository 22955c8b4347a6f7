"""`mtp-assistant lsp`: the language server, started by module name."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    # Its own options are lsp/__main__.py's (`mtp-assistant lsp --help` shows them).
    p = sub.add_parser("lsp", help="start the language server (stdio; --tcp PORT for 127.0.0.1)", add_help=False)
    p.add_argument("lsp_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lsp)


def cmd_lsp(args) -> int:
    import runpy

    # Run by module name: the assistant package never imports the server (lsp -> assistant).
    sys.argv = ["mtp-assistant lsp", *args.lsp_args]
    runpy.run_module("lsp", run_name="__main__", alter_sys=True)
    return 0
