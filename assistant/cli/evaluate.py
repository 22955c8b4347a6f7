"""`mtp-assistant eval`: per-head loss and accuracy, next-line exact match, HumanEval."""

from __future__ import annotations

import json

from assistant.cli.common import CliError
from assistant.store import ModelStore


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="model quality: per-head loss and accuracy on a repository, next-line exact match, HumanEval"
    )
    p.add_argument("model", nargs="?", default="default", help="model directory or store name")
    p.add_argument("--repo", help="per-head validation loss and top-1 accuracy on this repository")
    p.add_argument("--split", choices=("val", "train", "all"), default="val")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-windows", type=int, default=64)
    p.add_argument("--next-line", metavar="DIR", help="exact match of the next line at cursor positions in DIR's code")
    p.add_argument("--cases", type=int, default=200, help="cursor positions for --next-line")
    p.add_argument("--humaneval", action="store_true", help="HumanEval pass@1, greedy, code run in a sandboxed subprocess")
    p.add_argument("--limit", type=int, help="first N HumanEval problems")
    p.add_argument("--engine", default="auto", help="decoding engine for --next-line and --humaneval")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    if not (args.repo or args.next_line or args.humaneval):
        raise CliError("nothing to evaluate: give --repo DIR, --next-line DIR and/or --humaneval")
    model_dir = ModelStore().resolve(args.model)
    report: dict = {}
    if args.repo:
        from assistant.training.evaluation import evaluate_on_repo

        result = evaluate_on_repo(model_dir, args.repo, args.split, args.seq_len, args.max_windows)
        report["heads"] = {
            "split": args.split,
            "files": result.files,
            "tokens": result.tokens,
            "loss_per_head": result.stats.loss.tolist(),
            "accuracy_per_head": result.stats.accuracy.tolist(),
        }
    if args.next_line or args.humaneval:
        from assistant.engine import load_engine

        engine = load_engine(model_dir, args.engine)
    if args.next_line:
        from assistant.evals.next_line import line_cases, run_next_line

        lines = run_next_line(engine, line_cases(args.next_line, args.cases))
        report["next_line"] = {"cases": lines.total, "exact_match": lines.exact_match, "examples": lines.examples}
    if args.humaneval:
        from assistant.evals.humaneval import run_humaneval

        humaneval = run_humaneval(engine, args.limit)
        report["humaneval"] = {
            "problems": len(humaneval.passed) + len(humaneval.failed),
            "pass_at_1": humaneval.pass_at_1,
            "passed": humaneval.passed,
        }
    if args.json:
        print(json.dumps(report))
        return 0
    if "heads" in report:
        heads = report["heads"]
        print(f"{args.split} split: {heads['files']} files, {heads['tokens']} scored positions")
        print(f"{'head':>4}  {'predicts':>8}  {'loss':>7}  {'top-1':>6}")
        for i, (loss, acc) in enumerate(zip(heads["loss_per_head"], heads["accuracy_per_head"])):
            print(f"{i + 1:>4}  {'t+' + str(i + 1):>8}  {loss:7.4f}  {acc:6.1%}")
    if "next_line" in report:
        print(f"next line exact match: {report['next_line']['exact_match']:.1%} of {report['next_line']['cases']} cursors")
    if "humaneval" in report:
        h = report["humaneval"]
        print(f"HumanEval pass@1 (greedy, {engine.label}, model {model_dir}): "
              f"{h['pass_at_1']:.1%} ({len(h['passed'])} of {h['problems']} problems)")
        print(f"passed: {', '.join(h['passed']) or 'none'}")
    return 0
