"""What the command modules share: the exit codes, CliError and the engine options."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_ERROR = 1


class CliError(Exception):
    """A command's own one-line error: wrong combination of options, unreadable input."""


def add_llama_arguments(p) -> None:
    from models.gguf_export import QUANTS

    p.add_argument("--quant", choices=QUANTS, help="llama.cpp engine: which GGUF export (default: q8_0 if exported, ...)")
    p.add_argument("--threads", type=int, help="CPU threads (llama.cpp; torch for the torch engine)")
    p.add_argument("--batch-threads", type=int,
                   help="llama.cpp's threads for forwards of several rows (default: every logical core)")


def add_device_arguments(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
