"""`mtp-assistant bench`: plain vs self-speculative decoding speed, as a table (and JSON)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from assistant.cli.common import EXIT_ERROR, add_device_arguments
from assistant.store import ModelStore


def register(sub) -> None:
    p = sub.add_parser("bench", help="decoding speed: plain vs self-speculative with k = 1..n heads")
    p.add_argument("--model", default="default", help="model directory or store name")
    p.add_argument("--engine", default="torch", choices=("torch", "llama"))
    p.add_argument("--quant", help="llama engine: GGUF exports to compare side by side, comma-separated (e.g. f16,q8_0,q4_k_m)")
    p.add_argument("--with-torch", action="store_true", help="llama engine: also run the torch engine on the same prompts")
    p.add_argument("--peers", action="store_true",
                   help="llama engine: also run llama-cpp-python's own Llama on the same main GGUF, plain and with "
                        "LlamaPromptLookupDecoding(num_pred_tokens=10); the last column compares against its plain decoding")
    p.add_argument("--exact", action="store_true",
                   help="llama engine: exact mode (f32 KV cache, no flash attention, padded 1-token steps), in which "
                        "speculative output must equal plain output; default: llama.cpp's fast defaults, where runs "
                        "that part from plain decoding at near-ties are counted")
    p.add_argument("--drafter", default="heads",
                   help="comma-separated drafters to compare: heads (rows per k), lookup (context n-grams), "
                        "heads+lookup (the heads' tokens, then the lookup continuation after them), both (per step the "
                        "one of those expected to commit more), auto (cost-aware, all three); every one but heads adds "
                        "a row per engine of ours")
    p.add_argument("--draft-len", type=int, default=8,
                   help="the most tokens a lookup or heads+lookup draft proposes (the drafters' rows)")
    p.add_argument("--prompts", default="humaneval", help="'humaneval' (the 164 problems) or a directory of held-out code")
    p.add_argument("--limit", type=int, help="use the first N prompts")
    p.add_argument("--max-new", type=int, default=128, help="tokens to generate per prompt")
    p.add_argument("--k", help="comma-separated head counts to compare (default: 1..n)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each prompt by every decoder, interleaved; the fastest of each counts (on a shared "
                        "machine: the one least disturbed)")
    p.add_argument("--threads", type=int, help="CPU threads (torch and llama.cpp)")
    p.add_argument("--batch-threads", type=int,
                   help="llama.cpp's threads for forwards of several rows, ours and llama-cpp-python's (default: "
                        "every logical core, llama.cpp's default)")
    p.add_argument("--out", help="also write the results as JSON here")
    add_device_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import platform

    import torch

    from assistant.bench import BenchConfig, BenchEngines, bench_engines, directory_prompts, humaneval_prompts, run_bench

    if args.draft_len < 1:
        print(f"error: --draft-len must be >= 1, got {args.draft_len}", file=sys.stderr)
        return EXIT_ERROR
    model_dir = ModelStore().resolve(args.model)
    spec = BenchEngines(
        engine=args.engine, quants=tuple(q.strip() for q in (args.quant or "").split(",") if q.strip()) or (None,),
        device=args.device, dtype=args.dtype, threads=args.threads, batch_threads=args.batch_threads, exact=args.exact,
        with_torch=args.with_torch, peers=args.peers,
        drafters=tuple(d.strip() for d in args.drafter.split(",") if d.strip()),
    )
    setup = bench_engines(model_dir, spec)
    engines = setup.engines
    prompts = humaneval_prompts() if args.prompts == "humaneval" else directory_prompts(args.prompts)
    ks = tuple(int(k) for k in args.k.split(",")) if args.k else None
    config = BenchConfig(max_new_tokens=args.max_new, ks=ks, limit=args.limit, draft_len=args.draft_len,
                         repeats=args.repeats)
    result = run_bench(
        engines, setup.first.tokenizer, prompts, config,
        progress=lambda i, n: print(f"\rprompt {i}/{n}", end="", file=sys.stderr, flush=True),
        scorer=setup.scorer, baseline=setup.baseline,
    )
    print(file=sys.stderr)
    result.meta = {
        "model": str(model_dir), "engine": ", ".join(engines), "threads": args.threads,
        "batch_threads": args.batch_threads, "prompts": args.prompts, "max_new": args.max_new,
        "draft_len": args.draft_len, "repeats": args.repeats,
        "device": args.device, "dtype": args.dtype,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, {args.batch_threads or os.cpu_count()} llama.cpp batch threads",
    }
    print(f"model {model_dir}, engines {', '.join(engines)} ({args.device}, {args.dtype}), {result.prompts} prompts "
          f"({args.prompts}), {args.max_new} new tokens each, greedy; {result.meta['machine']}")
    print(f"head top-1 accuracy on the plain continuation: {' '.join(f'{a:.2f}' for a in result.head_accuracy)}")
    print(result.table())
    failed = False
    for line, is_error in result.mismatch_report():
        print(line, file=sys.stderr if is_error else sys.stdout)
        failed |= is_error
    if args.out:
        Path(args.out).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return EXIT_ERROR if failed else 0  # an exact engine's speculative output differed: a bug
