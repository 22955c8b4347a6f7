"""Benchmark: peak memory and step time of the memory-efficient MTP backward.

    python -m assistant.training.bench_backward [--vocab 32000 --batch 8 --seq 1024 ...]

Each (method, n) runs in a fresh Python process so that its peak resident set size
(ru_maxrss) is its own. The model keeps the same number of blocks for every n (heads
are taken from the trunk, as in the paper), so parameter counts match. Reports the
median step time over --steps steps after one warm-up step, and the peak RSS minus the
RSS just before the first step (the memory the step itself needs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(args) -> None:
    # A naive run that would exhaust the machine fails with MemoryError instead of
    # waking the OOM killer (address space, so the cap sits above the resident peak).
    cap = int(args.mem_limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    from models.config import ModelConfig
    from models.loss import mtp_forward_backward, mtp_loss, split_window
    from models.transformer import MTPTransformer

    torch.manual_seed(0)
    config = ModelConfig(
        dim=args.dim, n_layers=args.layers, n_heads=args.dim // 64, vocab_size=args.vocab,
        n_future_tokens=args.n, max_seq_len=args.seq,
    )
    model = MTPTransformer(config)
    window = torch.randint(0, args.vocab, (args.batch, args.seq + args.n))
    inputs, targets = split_window(window, args.n)
    before = _rss_mib()
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        if args.method == "naive":
            loss, _ = mtp_loss(model, inputs, targets)
            loss.backward()
            del loss
        else:
            mtp_forward_backward(model, inputs, targets)
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({
        "method": args.method, "n": args.n, "params": model.num_parameters(),
        "step_s": statistics.median(times[1:]), "peak_mib": peak, "before_mib": before,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--heads", default="1,2,4,8")
    parser.add_argument("--mem-limit-gib", type=float, default=20.0, help="address-space cap per run")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="efficient", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results = []
    for n in (int(x) for x in args.heads.split(",")):
        for method in ("naive", "efficient"):
            cmd = [sys.executable, "-m", "assistant.training.bench_backward", "--child", "--method", method, "--n", str(n)]
            for flag in ("vocab", "batch", "seq", "dim", "layers", "steps", "mem_limit_gib"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                results.append({"method": method, "n": n, "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]})
            else:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)

    # The baseline is plain next-token training: n = 1 with one ordinary backward.
    base = next((r for r in results if r.get("n") == 1 and r.get("method") == "naive" and "peak_mib" in r), None)
    print(f"vocab {args.vocab}, batch x seq {args.batch}x{args.seq}, dim {args.dim}, {args.layers} blocks, median of {args.steps} steps")
    print("| n | method | params | step s | peak RSS MiB | step memory MiB | memory vs n=1 | time vs naive |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['n']} | {r['method']} | | failed: {r['error']} | | | | |")
            continue
        naive = next((x for x in results if x["n"] == r["n"] and x["method"] == "naive" and "step_s" in x), None)
        mem_ratio = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base else ""
        time_ratio = f"{r['step_s'] / naive['step_s']:.2f}x" if naive else ""
        print(
            f"| {r['n']} | {r['method']} | {r['params'] / 1e6:.1f}M | {r['step_s']:.2f} | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] - r['before_mib']:.0f} | {mem_ratio} | {time_ratio} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
