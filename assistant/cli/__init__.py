"""The `mtp-assistant` command.

    mtp-assistant train REPO [--out DIR] [options]     train or fine-tune on a repository
    mtp-assistant train --config RUN.json              the same, settings from a file
    mtp-assistant train --resume DIR                   continue an interrupted run
    mtp-assistant tune [REPO] [--minutes N]            learn a repository in a time box, serve it there
    mtp-assistant eval MODEL --repo PATH               per-head validation loss and accuracy
    mtp-assistant models list|show|add|remove|default  manage the model store (unbind REPO: back to the default)
    mtp-assistant models import PATH                   convert Meta's released MTP checkpoint
    mtp-assistant models pull ORG/NAME [--file F]      download a base from the Hugging Face hub
    mtp-assistant models add-heads BASE                a llama/qwen GGUF or HF directory becomes an MTP model
    mtp-assistant complete FILE --line L --col C       the completion at a cursor, with stats
    mtp-assistant bench [--model M]                    plain vs self-speculative decoding speed
    mtp-assistant bench-cost [--random 150m,1b]        what a forward of R rows costs; the perfect-heads ceiling
    mtp-assistant tui [--repo PATH]                    the terminal UI: models, training, playground
    mtp-assistant --version
    mtp-assistant lsp [--tcp PORT] [--model M]         the language server (stdio by default)
    mtp-assistant doctor [--editor NAME]               check the editor's set-up, print its snippet

Errors the user can fix are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from assistant.cli.common import EXIT_ERROR, CliError
from assistant.errors import UserError
from assistant.evals.sandbox import SandboxUnavailable
from assistant.store import StoreError
from assistant.training.config import TrainError
from assistant.training.corpus import CorpusError
from models.checkpoint import ModelFileError

# One module of assistant.cli per command group, each with register(subparsers) adding its
# commands and their handlers; `--help` lists them in this order. Importing them is cheap:
# torch and the like are imported by the handlers that need them.
COMMANDS = ("train", "evaluate", "models", "complete", "bench", "bench_cost", "tui", "serve", "doctor")

# Errors the user can fix (bad paths, settings, model files): one line, no traceback. Any
# other exception is a bug and keeps its traceback.
USER_ERRORS = (CliError, UserError, StoreError, ModelFileError, CorpusError, TrainError, SandboxUnavailable)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtp-assistant")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-assistant", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mtp-assistant {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"assistant.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A process a shell started in the background inherits SIGINT ignored, and Python then
    # raises no KeyboardInterrupt: Ctrl+C and the TUI's Stop (a SIGINT) must still stop a
    # run cleanly at its checkpoint.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "lsp":
        args.lsp_args = unknown + args.lsp_args  # options the server's own parser reads
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"mtp-assistant: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mtp-assistant: interrupted", file=sys.stderr)
        return 130

