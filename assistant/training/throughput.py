"""Training tokens per second of a model shape on a device: sizes a time-boxed run.

    python -m assistant.training.throughput --device cuda --dim 256 --n-layers 10 \
        --n-heads 8 --n-future 4 --vocab-size 4096 --batch-size 128 --seq-len 512 [--steps-for 420]

Runs the trainer's own optimizer step (memory-efficient MTP forward/backward, gradient
clipping, AdamW) on random tokens, whose cost does not depend on the data, and prints one
JSON line: the median step time, tokens per second, peak GPU memory and, with --steps-for
SECONDS, how many steps fit in that many seconds of training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from assistant.training.trainer import TrainConfig, _optimizer, _set_trainable, resolve_device
from models.config import ModelConfig
from models.loss import mtp_forward_backward, split_window
from models.transformer import MTPTransformer


def measure(model_config: ModelConfig, batch_size: int, seq_len: int, device: torch.device,
            warmup: int = 3, timed: int = 10, train_trunk: bool = True) -> dict:
    """train_trunk=False: a heads-only fine-tune's step (no trunk backward, heads' optimizer)."""
    torch.manual_seed(0)
    model = MTPTransformer(model_config).to(device).train()
    params = _set_trainable(model, "full" if train_trunk else "heads")
    optimizer = _optimizer(params, TrainConfig(repo=".", out_dir="."), device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    windows = torch.randint(0, model_config.vocab_size, (batch_size, seq_len + model.n_future), device=device)
    inputs, targets = split_window(windows, model.n_future)  # (B, T), (B, n, T)
    times = []
    for step in range(warmup + timed):
        t0 = time.perf_counter()
        stats = mtp_forward_backward(model, inputs, targets, autocast=autocast, train_trunk=train_trunk)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats.loss.cpu()  # the trainer reads the stats every step: the same synchronisation
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "parameters": model.num_parameters(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "step_s": step_s,
        "tokens_per_s": batch_size * seq_len / step_s,
    }
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-future", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--timed-steps", type=int, default=10)
    p.add_argument("--steps-for", type=float, default=None, metavar="SECONDS",
                   help="also print how many steps fit in this many seconds")
    args = p.parse_args(argv)
    config = ModelConfig(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_future_tokens=args.n_future,
                         vocab_size=args.vocab_size, max_seq_len=args.seq_len)
    result = measure(config, args.batch_size, args.seq_len, resolve_device(args.device), timed=args.timed_steps)
    if args.steps_for is not None:
        result["steps_for_seconds"] = int(args.steps_for / result["step_s"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
