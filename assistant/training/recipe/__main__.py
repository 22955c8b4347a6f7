"""`python -m assistant.training.recipe gather|train|ship|card ...` (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from assistant.training import recipe
from assistant.training.recipe.card import rerender
from assistant.training.recipe.model_card import CardError
from assistant.training.recipe.ship import ship
from assistant.training.recipe.sources import gather
from assistant.training.recipe.stages import STAGES, stage_dir, train_stages
from models import SHIPPED_MODEL_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m assistant.training.recipe",
                                     description=recipe.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gather", help="download and lay out the training and held-out code")
    g.add_argument("data_dir", type=Path)
    t = sub.add_parser("train", help="run (or resume) every training stage: RUNS/stage-1, RUNS/stage-2, ...")
    t.add_argument("data_dir", type=Path)
    t.add_argument("runs_root", type=Path)
    t.add_argument("--seconds", type=float, help="time-box a fresh stage: as many steps as fit in this many seconds")
    sh = sub.add_parser("ship", help="copy the last stage's model to models/default and measure its card")
    sh.add_argument("runs_root", type=Path)
    sh.add_argument("data_dir", type=Path)
    sh.add_argument("--dest", type=Path, default=SHIPPED_MODEL_DIR)
    sh.add_argument("--humaneval-limit", type=int)
    sh.add_argument("--bench-limit", type=int, default=40)
    sh.add_argument("--next-line-cases", type=int, default=200)
    c = sub.add_parser("card", help="re-render CARD.md from card.json")
    c.add_argument("model_dir", type=Path, nargs="?", default=SHIPPED_MODEL_DIR)
    c.add_argument("--examples", action="store_true",
                   help="first recompute the ten examples (after a change to the completion rules)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "gather":
            sources = gather(args.data_dir)
            train_mb = sum(s.bytes for s in sources.train) / 1e6
            heldout_mb = sum(s.bytes for s in sources.heldout) / 1e6
            print(f"train {train_mb:.1f} MB, held-out {heldout_mb:.1f} MB -> {args.data_dir}")
        elif args.command == "ship":
            stage_dirs = [stage_dir(args.runs_root, i) for i in range(len(STAGES))]
            card = ship(stage_dirs, args.data_dir, args.dest, args.humaneval_limit, args.bench_limit,
                        args.next_line_cases)
            scores = card.to_json()
            print(json.dumps({k: scores[k] for k in ("heldout_heads", "next_line", "humaneval")}, indent=1)[:3000])
            print(card.bench_table)
        elif args.command == "card":
            rerender(args.model_dir, args.examples)
        elif args.command == "train":
            print(train_stages(args.data_dir, args.runs_root, args.seconds))
    except CardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
