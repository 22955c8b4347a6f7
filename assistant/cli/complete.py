"""`mtp-assistant complete`: the completion at a cursor in a file, the language server's path."""

from __future__ import annotations

import sys
from pathlib import Path

from assistant.cli.common import CliError, add_device_arguments, add_llama_arguments
from assistant.store import ModelStore


def register(sub) -> None:
    p = sub.add_parser("complete", help="print the completion at a cursor in a file, and its stats on stderr")
    p.add_argument("file")
    p.add_argument("--line", type=int, required=True, help="1-based line of the cursor")
    p.add_argument("--col", type=int, required=True, help="1-based column of the cursor, in characters")
    p.add_argument("--model", help="model directory or store name (default: the model bound to the file's "
                                   "repository, else the default)")
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "llama"),
                   help="auto: llama.cpp where the model has a GGUF export, else torch")
    p.add_argument("--k", type=int, help="heads used for drafting (1 = plain decoding; default: all)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--multiline", action="store_true", help="always several lines (default: decided at the cursor)")
    p.add_argument("--max-lines", type=int, default=8, help="lines in a multi-line completion")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--time-cap", type=float, help="seconds")
    add_device_arguments(p)
    add_llama_arguments(p)
    p.set_defaults(func=cmd_complete)


def cmd_complete(args) -> int:
    from assistant.completion.prompt import split_at
    from assistant.completion.service import CompletionService
    from assistant.completion.settings import CompletionSettings
    from assistant.engine import load_engine

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"{args.file}: cannot read ({e})") from None
    prefix, suffix = split_at(text, args.line - 1, args.col - 1)
    settings = CompletionSettings(
        max_tokens=args.max_tokens,
        multiline="always" if args.multiline else "auto",
        max_lines=args.max_lines,
        time_cap_ms=round(args.time_cap * 1000) if args.time_cap else 600_000,
        context_tokens=1024,
        snippet_share=0.0,
        heads=args.k,
        temperature=args.temperature,
    )
    store = ModelStore()
    model_dir = store.resolve(args.model) if args.model else store.model_for(Path(args.file))
    engine = load_engine(model_dir, args.engine, args.device, args.dtype, args.quant, args.threads,
                         batch_threads=args.batch_threads)
    # The same path as the language server's: prompt, stop rules, post-processing.
    result = CompletionService(engine, settings).complete(prefix, suffix, uri=Path(args.file).resolve().as_uri())
    print(result.text)
    s = result.stats
    if s is None:
        print(f"no model call ({result.stop_reason})", file=sys.stderr)
        return 0
    acceptance = " ".join(f"{a:.2f}" for a in s.acceptance) or "-"
    print(
        f"{s.new_tokens} tokens in {s.forward_passes} forwards ({s.tokens_per_forward:.2f} per forward), "
        f"prefill {s.prefill_s * 1e3:.1f} ms ({s.prompt_tokens} prompt tokens), decode {s.decode_s * 1e3:.1f} ms, "
        f"acceptance per draft position {acceptance}, stopped by {result.stop_reason}; engine {engine.label}, "
        f"model {model_dir}",
        file=sys.stderr,
    )
    return 0
