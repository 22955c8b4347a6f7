"""`mtp-assistant bench-cost`: what a llama.cpp forward of R rows costs, and the speedup perfect
heads reach (the work is assistant/step_cost.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from assistant.errors import UserError
from assistant.step_cost import DEFAULT_ROWS, StepCostSettings, format_report, run_step_cost


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{what}: none given")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in text.split(",") if v.strip())


def register(sub) -> None:
    p = sub.add_parser(
        "bench-cost", help="llama.cpp: what a forward of R rows costs, and the speedup perfect heads reach",
        description="What a llama.cpp forward of R rows costs on this machine, and the speedup perfect heads "
                    "reach against what that cost predicts.",
    )
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="model directory or store name, repeatable (default, without --random: the shipped model)")
    p.add_argument("--random", default="", metavar="SIZES",
                   help="random llama-style MTP models to build and time, comma-separated: tiny, 150m, 1b")
    p.add_argument("--quant", default="q8_0", help="GGUF exports to time, comma-separated (q8_0, q4_k_m, f16, f32)")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default: half the logical cores)")
    p.add_argument("--rows", default=",".join(map(str, DEFAULT_ROWS)), help="forward sizes R, comma-separated")
    p.add_argument("--prefix", type=int, default=256, help="tokens cached before each timed forward")
    p.add_argument("--repeats", type=int, default=5, help="timings per R (their median is reported)")
    p.add_argument("--k", help="the ceiling's head counts, comma-separated (default: 1..n)")
    p.add_argument("--new", type=int, default=96, help="tokens each ceiling run decodes after the first")
    p.add_argument("--ceiling-repeats", type=int, default=3, help="ceiling runs per k")
    p.add_argument("--no-ceiling", action="store_true", help="only the cost curve")
    p.add_argument("--work", type=Path, help="where built models are kept (default: <store home>/bench-cost)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--out", type=Path, help="also write the report as JSON to this file")
    p.set_defaults(func=run_from_args)


def settings_from_args(args: argparse.Namespace) -> StepCostSettings:
    return StepCostSettings(
        models=tuple(args.model), random=_names(args.random), quants=_names(args.quant), threads=args.threads,
        rows=_ints(args.rows, "--rows"), prefix=args.prefix, repeats=args.repeats, ceiling=not args.no_ceiling,
        ks=_ints(args.k, "--k") if args.k else None, new_tokens=args.new, ceiling_repeats=args.ceiling_repeats,
        work=args.work,
    )


def run_from_args(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report = run_step_cost(settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    text = json.dumps(report.to_json(), indent=2)
    print(text if args.json else format_report(report))
    if args.out:
        args.out.write_text(text + "\n")
    return 0
