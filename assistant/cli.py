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
    mtp-assistant tui [--repo PATH]                    the terminal UI: models, training, playground
    mtp-assistant --version
    mtp-assistant lsp [--tcp PORT] [--model M]         the language server (stdio by default)
    mtp-assistant doctor [--editor NAME]               check the editor's set-up, print its snippet

Errors the user can fix are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from assistant.errors import UserError
from assistant.evals.sandbox import SandboxUnavailable
from assistant.store import NAME_PATTERN, ModelStore, StoreError
from assistant.training.config import TrainError, add_train_arguments, config_from_args, given_settings
from assistant.training.corpus import CorpusError
from assistant.training.recipe.model_card import CardError, ModelCard
from models.checkpoint import ModelFileError, read_config

EXIT_USAGE = 2
EXIT_ERROR = 1


class CliError(Exception):
    pass


# Errors the user can fix (bad paths, settings, model files): one line, no traceback. Any
# other exception is a bug and keeps its traceback.
USER_ERRORS = (CliError, UserError, StoreError, ModelFileError, CorpusError, TrainError, SandboxUnavailable)


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
    p.add_argument("--finetune", choices=("full", "heads", "heads-distill"),
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
        print(f"model {result.name} ({result.model_dir}) now serves {result.report['repo']}; "
              f"report: {result.model_dir / 'tune_report.json'}")
    return 0


def _add_eval_parser(sub) -> None:
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


def _add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="list, show, add, remove models and set the default")
    msub = p.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="models in the store").set_defaults(func=cmd_models_list)
    show = msub.add_parser("show", help="a model's configuration, provenance and scores")
    show.add_argument("model", nargs="?", default="default")
    show.add_argument("--json", action="store_true", help="everything as one JSON object")
    show.set_defaults(func=cmd_models_show)
    add = msub.add_parser("add", help="copy a model directory into the store")
    add.add_argument("path")
    add.add_argument("--name")
    add.add_argument("--default", action="store_true", help="make it the default model")
    add.set_defaults(func=cmd_models_add)
    rm = msub.add_parser("remove", help="delete a model from the store")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_models_remove)
    default = msub.add_parser("default", help="set the default model ('shipped' goes back to the shipped one)")
    default.add_argument("name")
    default.set_defaults(func=cmd_models_default)
    unbind = msub.add_parser("unbind", help="serve a repository with the default model again (undo `tune`'s binding)")
    unbind.add_argument("repo", help="the repository's root")
    unbind.set_defaults(func=cmd_models_unbind)
    _add_models_import_parser(msub)
    _add_models_export_parser(msub)
    _add_models_add_heads_parser(msub)
    _add_models_pull_parser(msub)


def cmd_models_list(args) -> int:
    store = ModelStore()
    entries = store.list()
    for entry in entries:
        try:
            config, tokenizer, _ = read_config(entry.path)
            desc = f"{config.n_future_tokens} heads, dim {config.dim}, {config.n_layers} blocks, {tokenizer.get('kind')} tokens"
        except ModelFileError as e:
            desc = f"unreadable: {e.problem}"
        where = f" (shipped with mtp-assistant: {entry.path})" if entry.shipped else ""
        print(f"{'*' if entry.is_default else ' '} {entry.name:<24} {desc}{where}")
    bindings = sorted(store.bindings().items())
    if bindings:
        print("repositories with a model of their own:")
    for root, name in bindings:
        print(f"  {root} -> {name}" + ("" if any(e.name == name for e in entries) else " (model missing)"))
    print(f"(* the default; models you add live in {store.models_dir}; a repository's bound model serves its files)")
    return 0


def cmd_models_unbind(args) -> int:
    name = ModelStore().unbind(args.repo)
    print(f"{Path(args.repo).resolve()} no longer uses {name}: the default model serves it")
    return 0


def cmd_models_show(args) -> int:
    path = ModelStore().resolve(args.model)
    config, tokenizer, provenance = read_config(path)
    card = _read_card(path)
    if args.json:
        print(json.dumps({"path": str(path), "model": config.to_dict(), "tokenizer": tokenizer,
                          "provenance": provenance, "card": card}, indent=2))
        return 0
    from models.gguf_export import available_quants

    print(f"{path}")
    print(f"  {config.n_future_tokens} heads, dim {config.dim}, {config.n_layers} blocks, context {config.max_seq_len}, "
          f"{tokenizer.get('kind')} tokenizer (vocabulary {config.vocab_size})")
    print(f"  llama.cpp exports: {', '.join(available_quants(path)) or 'none (the torch engine serves it)'}")
    trained = provenance.get("trained_by") or provenance.get("source")
    if trained:
        print(f"  made by: {trained}")
    for label, value in _card_scores(card):
        print(f"  {label}: {value}")
    return 0


def _read_card(model_dir: Path) -> dict:
    """card.json next to the model (what its CARD.md reports), or {} when it has none."""
    try:
        data = json.loads((model_dir / "card.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _card_scores(card: dict) -> list[tuple[str, str]]:
    """The card's headline scores, as (label, value) lines."""
    if not card:
        return []
    try:
        parsed = ModelCard.from_json(card)
    except CardError as e:
        return [("card", f"unreadable: {e}")]
    lines = []
    heads = parsed.heldout_heads.accuracy_per_head
    if heads:
        lines.append(("held-out top-1 per head", " / ".join(f"{a:.1%}" for a in heads)))
    lines.append(("next-line exact match", f"{parsed.next_line.exact_match:.1%}"))
    humaneval = parsed.humaneval
    lines.append(("HumanEval pass@1", f"{humaneval.pass_at_1:.1%} of {humaneval.problems} problems"))
    return lines


def cmd_models_add(args) -> int:
    entry = ModelStore().add(args.path, args.name, args.default)
    print(f"added {entry.name} at {entry.path}" + (" (default)" if entry.is_default else ""))
    return 0


def cmd_models_remove(args) -> int:
    ModelStore().remove(args.name)
    print(f"removed {args.name}")
    return 0


def cmd_models_default(args) -> int:
    ModelStore().set_default(args.name)
    print(f"default model: {args.name}")
    return 0


def _add_models_import_parser(msub) -> None:
    p = msub.add_parser(
        "import", help="convert Meta's released MTP checkpoint (params.json, consolidated.pth, tokenizer.model)"
    )
    p.add_argument("path", help="the release directory, e.g. multi-token-prediction/7B_200B_4")
    p.add_argument("--name", help="name in the store (default: the directory's name)")
    p.add_argument("--default", action="store_true", help="make it the default model")
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                   help="weights on disk (auto: as in the checkpoint, fp16 for Meta's)")
    p.add_argument("--tokenizer", help="tokenizer.model (default: PATH/tokenizer.model, then PATH/../tokenizer.model)")
    p.add_argument("--max-seq-len", type=int, help="context length (params.json has none; default 4096)")
    p.set_defaults(func=cmd_models_import)


def cmd_models_import(args) -> int:
    from models.meta_import import MetaImportConfig, import_meta_checkpoint

    store = ModelStore()
    source = Path(args.path)
    name = args.name or source.resolve().name
    if not NAME_PATTERN.match(name):
        raise CliError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-' only (choose one with --name)")
    if (store.models_dir / name).exists():
        raise CliError(f"a model named {name!r} already exists in {store.models_dir} (choose another with --name)")
    config = MetaImportConfig(dtype=args.dtype, max_seq_len=args.max_seq_len, tokenizer_path=args.tokenizer)
    # Written inside the store's folder, then moved into place: a 7B model is not copied twice.
    staging = store.models_dir / f".{name}.import"
    store.models_dir.mkdir(parents=True, exist_ok=True)
    try:
        import_meta_checkpoint(source, staging, config)
        entry = store.add(staging, name, args.default, move=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    loaded_config, _, _ = read_config(entry.path)
    print(f"imported {source} as {entry.name} at {entry.path}" + (" (default)" if entry.is_default else ""))
    print(f"{loaded_config.n_future_tokens} heads, {loaded_config.n_layers} blocks of dim {loaded_config.dim}, "
          f"vocabulary {loaded_config.vocab_size}, context {loaded_config.max_seq_len}")
    return 0


def _add_models_add_heads_parser(msub) -> None:
    p = msub.add_parser(
        "add-heads", help="make a plain llama base (GGUF file or Hugging Face directory) an MTP model: "
                          "train new heads that agree with it, serve its GGUF unchanged")
    p.add_argument("base", help="a llama GGUF file, or a Hugging Face directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--heads", type=int, default=3, help="new heads (the model then drafts up to 1 + N tokens a forward)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time, over all resumes of the run")
    corpus = p.add_mutually_exclusive_group(required=True)
    corpus.add_argument("--repo", help="a code repository to train the heads on (the training corpus rules)")
    corpus.add_argument("--data", help="a directory of code to train the heads on (same rules)")
    p.add_argument("--name", help="name in the store (default: the base's name + '-mtp')")
    p.add_argument("--default", action="store_true", help="make it the default model")
    p.add_argument("--targets", default="base", choices=("base", "corpus"),
                   help="base: agree with the base's own greedy tokens (self-distillation); corpus: the text's")
    p.add_argument("--run-dir", help="where the resumable run lives (default: the store's runs/add-heads-NAME)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-seq-len", type=int, help="the new model's context (default: the base's, at most 4096)")
    p.add_argument("--tokenizer", help="a model directory whose tokenizer a GGUF of ours was exported with "
                                       "(found by itself beside `models export` output)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps even with time left")
    p.add_argument("--device", default="auto", help="torch device for the base pass and the heads (auto: cuda if any)")
    p.set_defaults(func=cmd_models_add_heads)


def cmd_models_add_heads(args) -> int:
    from assistant.training.heads import HeadsConfig, HeadsError, add_heads

    store = ModelStore()
    base = Path(args.base)
    name = args.name or f"{(base.stem if base.is_file() else base.resolve().name)}-mtp"
    if not NAME_PATTERN.match(name):
        raise CliError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-' only (choose one with --name)")
    if (store.models_dir / name).exists():
        raise CliError(f"a model named {name!r} already exists in {store.models_dir} (choose another with --name)")
    run_dir = Path(args.run_dir) if args.run_dir else store.root / "runs" / f"add-heads-{name}"
    try:
        config = HeadsConfig(
            base=str(base), corpus=args.repo or args.data, run_dir=str(run_dir), new_heads=args.heads,
            minutes=args.minutes, targets=args.targets, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
            max_seq_len=args.max_seq_len, tokenizer_from=args.tokenizer, max_steps=args.max_steps, device=args.device,
        )
        staging = store.models_dir / f".{name}.add-heads"
        store.models_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _, result = add_heads(config, staging)
            entry = store.add(staging, name, args.default, move=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except HeadsError as e:
        raise CliError(str(e)) from None
    before, after = result.first_eval["agreement_per_head"], result.final_eval["agreement_per_head"]
    print(f"added {args.heads} heads to {base} as {entry.name} at {entry.path}" + (" (default)" if entry.is_default else ""))
    print(f"{result.steps} steps in {result.seconds / 60:.1f} min; agreement with the base per new head "
          f"{' '.join(f'{a:.2f}' for a in before)} -> {' '.join(f'{a:.2f}' for a in after)} (run: {run_dir})")
    return 0


def _add_models_pull_parser(msub) -> None:
    p = msub.add_parser(
        "pull", help="download a llama/qwen base from the Hugging Face hub (a GGUF file or a model directory) "
                     "into the hub's cache, ready for add-heads")
    p.add_argument("repo_id", help="ORG/NAME on huggingface.co")
    p.add_argument("--file", help="one GGUF file of the repository (default: its config.json, *.safetensors, "
                                  "tokenizer.json)")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.add_argument("--name", help="the store name add-heads gives it (default: the file's or repository's name + '-mtp')")
    p.add_argument("--add-heads", action="store_true", help="then run add-heads on it (needs --repo or --data)")
    corpus = p.add_mutually_exclusive_group()
    corpus.add_argument("--repo", help="with --add-heads: a code repository to train the heads on")
    corpus.add_argument("--data", help="with --add-heads: a directory of code to train the heads on")
    p.add_argument("--heads", type=int, default=3, help="with --add-heads: new heads")
    p.add_argument("--minutes", type=float, default=10.0, help="with --add-heads: training time")
    p.add_argument("--default", action="store_true", help="with --add-heads: make it the default model")
    p.set_defaults(func=cmd_models_pull)


def cmd_models_pull(args) -> int:
    import shlex

    from assistant.hub import HubError, pull

    if args.add_heads and not (args.repo or args.data):
        raise CliError("--add-heads needs the code to train the heads on: --repo PATH or --data DIR")
    try:
        pulled = pull(args.repo_id, args.file, args.revision)
    except HubError as e:
        raise CliError(str(e)) from None
    name = args.name or f"{Path(args.file).stem if args.file else args.repo_id.split('/')[-1]}-mtp"
    print(f"{args.repo_id}: {pulled.summary()}")
    print(f"  at {pulled.path}")
    add_heads = ["models", "add-heads", str(pulled.path), "--name", name]
    if not args.add_heads:
        print(f"next: mtp-assistant {shlex.join(add_heads)} --repo YOUR_CODE [--minutes 30]")
        return 0
    add_heads += ["--repo", args.repo] if args.repo else ["--data", args.data]
    add_heads += ["--heads", str(args.heads), "--minutes", str(args.minutes)] + (["--default"] if args.default else [])
    chained = build_parser().parse_args(add_heads)
    return chained.func(chained)


def _add_models_export_parser(msub) -> None:
    from models.gguf_export import QUANTS

    p = msub.add_parser("export", help="write the GGUF files the llama.cpp engine runs into the model directory")
    p.add_argument("model", nargs="?", default="default", help="model directory or store name")
    p.add_argument("--quant", default="q8_0", help=f"one or more of {', '.join(QUANTS)}, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="quantizer threads")
    p.set_defaults(func=cmd_models_export)


def cmd_models_export(args) -> int:
    from models.gguf_export import QUANTS, export_model

    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    unknown = [q for q in quants if q not in QUANTS]
    if unknown or not quants:
        raise CliError(f"unknown quantization {', '.join(unknown) or '(none)'}; choose from {', '.join(QUANTS)}")
    model_dir = ModelStore().resolve(args.model)
    for quant in quants:
        result = export_model(model_dir, quant, threads=args.threads)
        size = sum(p.stat().st_size for p in result.files)
        types = sorted({t for file_types in result.tensor_types.values() for t in file_types.values()})
        print(f"{quant}: {len(result.files)} files, {size / 2**20:.1f} MiB in {result.files[0].parent} "
              f"(tensor types: {', '.join(types)})")
    return 0


def _add_llama_arguments(p) -> None:
    from models.gguf_export import QUANTS

    p.add_argument("--quant", choices=QUANTS, help="llama.cpp engine: which GGUF export (default: q8_0 if exported, ...)")
    p.add_argument("--threads", type=int, help="CPU threads (llama.cpp; torch for the torch engine)")


def _add_device_arguments(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def _add_complete_parser(sub) -> None:
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
    _add_device_arguments(p)
    _add_llama_arguments(p)
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
    engine = load_engine(model_dir, args.engine, args.device, args.dtype, args.quant, args.threads)
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


def _add_lsp_parser(sub) -> None:
    # Its own options are lsp/__main__.py's (`mtp-assistant lsp --help` shows them).
    p = sub.add_parser("lsp", help="start the language server (stdio; --tcp PORT for 127.0.0.1)", add_help=False)
    p.add_argument("lsp_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lsp)


def cmd_lsp(args) -> int:
    import runpy

    # Run by module name: the assistant package never imports the server (lsp -> assistant).
    sys.argv = ["mtp-assistant lsp", *args.lsp_args]
    runpy.run_module("lsp", run_name="__main__", alter_sys=True)
    return 0


def _add_bench_parser(sub) -> None:
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
                   help="comma-separated drafters to compare: heads (rows per k), lookup (context n-grams), both "
                        "(per step the one expected to commit more), auto (cost-aware, both drafters); "
                        "every one but heads adds a row per engine of ours")
    p.add_argument("--prompts", default="humaneval", help="'humaneval' (the 164 problems) or a directory of held-out code")
    p.add_argument("--limit", type=int, help="use the first N prompts")
    p.add_argument("--max-new", type=int, default=128, help="tokens to generate per prompt")
    p.add_argument("--k", help="comma-separated head counts to compare (default: 1..n)")
    p.add_argument("--threads", type=int, help="CPU threads (torch and llama.cpp)")
    p.add_argument("--out", help="also write the results as JSON here")
    _add_device_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import platform

    import torch

    from assistant.bench import BenchConfig, directory_prompts, engine_scorer, humaneval_prompts, run_bench, torch_scorer
    from assistant.engine import load_engine

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = ModelStore().resolve(args.model)
    engines, scorer, baseline = {}, None, None
    if args.engine == "llama":
        quants = [q.strip() for q in (args.quant or "").split(",") if q.strip()] or [None]
        for quant in quants:
            eng = load_engine(model_dir, "llama", args.device, args.dtype, quant, args.threads, exact=args.exact)
            engines[f"llama {eng.quant}"] = eng
        # The first export's own heads score head accuracy: no torch weights needed.
        scorer = engine_scorer(next(iter(engines.values())))
        if args.with_torch:
            engines["torch"] = load_engine(model_dir, "torch", args.device, args.dtype)
            baseline = "torch"
        if args.peers:
            from assistant.bench import PEER_PLAIN, llama_cpp_peers

            first = next(iter(engines.values()))
            engines |= llama_cpp_peers(first.files[0], first.max_seq_len, args.threads,
                                       n_gpu_layers=0 if args.device == "cpu" else -1)
            baseline = PEER_PLAIN
    else:
        engines["torch"] = load_engine(model_dir, "torch", args.device, args.dtype)
        scorer = torch_scorer(engines["torch"].model)
    from assistant.bench import with_drafters
    from assistant.engine.base import DRAFTERS

    drafters = [d.strip() for d in args.drafter.split(",") if d.strip()]
    unknown = [d for d in drafters if d not in DRAFTERS]
    if unknown:
        print(f"error: unknown drafter {unknown[0]!r}; choose from {', '.join(DRAFTERS)}", file=sys.stderr)
        return EXIT_ERROR
    engines = with_drafters(engines, drafters)
    engine = next(iter(engines.values()))
    prompts = humaneval_prompts() if args.prompts == "humaneval" else directory_prompts(args.prompts)
    ks = tuple(int(k) for k in args.k.split(",")) if args.k else None
    config = BenchConfig(max_new_tokens=args.max_new, ks=ks, limit=args.limit)
    result = run_bench(
        engines, engine.tokenizer, prompts, config,
        progress=lambda i, n: print(f"\rprompt {i}/{n}", end="", file=sys.stderr, flush=True),
        scorer=scorer, baseline=baseline,
    )
    print(file=sys.stderr)
    result.meta = {
        "model": str(model_dir), "engine": ", ".join(engines), "threads": args.threads, "prompts": args.prompts, "max_new": args.max_new,
        "device": args.device, "dtype": args.dtype,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
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


def _add_tui_parser(sub) -> None:
    from assistant.tui.screens import SCREEN_NAMES

    p = sub.add_parser("tui", help="the terminal UI: manage models, train on a repository, try completions")
    p.add_argument("--repo", default=".", help="repository the Train screen starts with (default: the current directory)")
    p.add_argument("--screen", default="models", choices=SCREEN_NAMES)
    p.set_defaults(func=cmd_tui)


def cmd_tui(args) -> int:
    from assistant.tui.app import MtpApp, TuiSettings

    repo = args.repo
    if repo == "." and Path.cwd().resolve() == Path(__file__).resolve().parents[1]:
        repo = ""  # started from this project's own checkout (`make run`): ask for the repository to learn
    app = MtpApp(TuiSettings(repo=repo, start_mode=args.screen))
    app.run()
    return app.return_code or 0


def _add_doctor_parser(sub) -> None:
    from assistant.editors import EDITORS

    p = sub.add_parser("doctor", help="check what an editor will run (model, engine, a completion round trip) "
                                      "and print the editor's set-up with the right path")
    p.add_argument("--model", help="model directory or store name (default: the one the repository is bound to, "
                                   "else the store's default)")
    p.add_argument("--repo", default=".", help="the repository the editor opens (default: the current directory)")
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "llama"))
    p.add_argument("--editor", default="neovim", choices=EDITORS, help="whose set-up to print")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from assistant.doctor import DoctorError, DoctorSettings, run_doctor

    try:
        return run_doctor(DoctorSettings(model=args.model, repo=Path(args.repo), engine=args.engine, editor=args.editor))
    except DoctorError as e:
        raise CliError(f"doctor: {e}") from None


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
    _add_train_parser(sub)
    _add_tune_parser(sub)
    _add_eval_parser(sub)
    _add_models_parser(sub)
    _add_complete_parser(sub)
    _add_bench_parser(sub)
    _add_tui_parser(sub)
    _add_lsp_parser(sub)
    _add_doctor_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
