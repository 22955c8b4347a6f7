"""`mtp-assistant train` and `mtp-assistant tune`: training runs on a repository."""

from __future__ import annotations

import dataclasses
import json
import sys

from assistant.cli.common import CliError
from assistant.store import ModelStore
from assistant.training.config import FINETUNE_MODES, add_train_arguments, config_from_args, given_settings


def register(sub) -> None:
    _add_train_parser(sub)
    _add_tune_parser(sub)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train (or fine-tune) an MTP model on a code repository")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument(
        "--config", metavar="FILE",
        help="settings from a JSON object of TrainConfig fields (a run's train_config.json is one); "
        "options given override them",
    )
    add_train_arguments(p)  # one option per TrainConfig field
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from assistant.training.trainer import train

    if args.resume:
        if args.config or given_settings(args):
            raise CliError("--resume continues a run with the settings it was started with: give no others")
        final = train(resume_dir=args.resume, show_progress=not args.quiet)
    else:
        config = config_from_args(args)
        if config.base_model:  # a store name or a path
            config = dataclasses.replace(config, base_model=str(ModelStore().resolve(config.base_model)))
        final = train(config, show_progress=not args.quiet)
    print(f"model written to {final}")
    return 0


def _add_tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune", help="fine-tune a model on a repository in a time box, report before/after, serve it there"
    )
    p.add_argument("repo", nargs="?", default=".", help="repository to learn (default: the current directory)")
    p.add_argument("--minutes", type=float, help="time box for training (default 10; 3 for a re-tune)")
    p.add_argument("--base", metavar="MODEL",
                   help="start from this model (default: the repository's last tuned model, else the default model)")
    p.add_argument("--steps", type=int, help="a fixed number of steps instead of the time box")
    p.add_argument("--name", help="store name of the tuned model (default: from the repository's name)")
    p.add_argument("--finetune", choices=FINETUNE_MODES,
                   help="train every weight (default), the heads only, or heads 2..n on the model's own greedy tokens")
    p.add_argument("--fim-rate", type=float, help="fraction of windows in fill-in-the-middle form (default 0.5)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 512, at most the model's context)")
    p.add_argument("--next-line-cases", type=int, help="report: next-line cursors in the held-out files (default 100)")
    p.add_argument("--speed-prompts", type=int, help="report: held-out prompts decoded at k=4 (default 20)")
    p.add_argument("--device", help="training device: auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from assistant.training.tune import TuneConfig, describe_changes, report_table, tune

    given = {
        "minutes": args.minutes, "base": args.base, "steps": args.steps, "name": args.name, "finetune": args.finetune,
        "lr": args.lr, "batch_size": args.batch_size, "seq_len": args.seq_len, "fim_rate": args.fim_rate,
        "next_line_cases": args.next_line_cases, "speed_prompts": args.speed_prompts, "device": args.device,
    }
    config = TuneConfig(repo=args.repo, show_progress=not args.quiet, **{k: v for k, v in given.items() if v is not None})
    result = tune(config)
    if result is None:
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in result.report.items() if k != "files"}))
    else:
        print(report_table(result.report))
        if result.report.get("changes"):
            print(f"changed since the last tune: {describe_changes(result.report['changes'])}")
    if result.name is not None:
        # With --json, stdout is the report alone, so that it parses.
        print(f"model {result.name} ({result.model_dir}) now serves {result.report['repo']}; "
              f"report: {result.model_dir / 'tune_report.json'}", file=sys.stderr if args.json else sys.stdout)
    return 0
