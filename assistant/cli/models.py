"""`mtp-assistant models ...`: the model store, and bringing models into it (import, pull,
add-heads, export)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import threading
from pathlib import Path

from assistant.cli.common import CliError
from assistant.store import NAME_PATTERN, ModelStore
from assistant.training.recipe.model_card import CardError, ModelCard
from models.checkpoint import ModelFileError, read_config


def register(sub) -> None:
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
    _add_corpus_arguments(p, "")
    p.add_argument("--name", help="name in the store (default: the base's name + '-mtp')")
    p.add_argument("--default", action="store_true", help="make it the default model")
    # Unset settings take HeadsConfig's defaults (read there, not here: it imports torch).
    p.add_argument("--targets", choices=("base-path", "base", "base-soft", "corpus"),
                   help="base-path (the default): agree with the base's own greedy tokens where the text went "
                        "the base's way (self-distillation, what decoding accepts); base: at every position; "
                        "base-soft: learn the base's whole next-token distributions (their top --soft-top-k); "
                        "corpus: the text's tokens")
    p.add_argument("--soft-top-k", type=int,
                   help="with --targets base-soft: how many of the base's likeliest tokens each target keeps (32)")
    p.add_argument("--run-dir", help="where the resumable run lives (default: the store's runs/add-heads-NAME)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, help="peak learning rate of the new heads (3e-3)")
    p.add_argument("--max-seq-len", type=int, help="the new model's context (default: the base's, at most 4096)")
    p.add_argument("--tokenizer", help="a model directory whose tokenizer a GGUF of ours was exported with "
                                       "(found by itself beside `models export` output)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps even with time left")
    p.add_argument("--device", default="auto", help="torch device for the base pass and the heads (auto: cuda if any)")
    p.set_defaults(func=cmd_models_add_heads)


def _add_corpus_arguments(p, prefix: str) -> None:
    """--repo and --data, each repeatable: the heads train on all of them mixed."""
    for flag, what in (("--repo", "a code repository"), ("--data", "a directory of code")):
        p.add_argument(flag, dest="corpus", action="append", metavar=flag.strip("-").upper(),
                       help=f"{prefix}{what} to train the heads on (the training corpus rules); give several "
                            "to mix them: broad code makes heads that carry to code they never saw")


def cmd_models_add_heads(args) -> int:
    from assistant.training.heads import HeadsConfig, HeadsError, HeadsStopped
    from assistant.training.heads_store import add_heads_to_store, default_name, run_dir_for

    store = ModelStore()
    base = Path(args.base)
    name = args.name or default_name(base)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(store, name)
    if not args.corpus:
        raise CliError("add-heads needs the code to train the heads on: --repo PATH or --data DIR (several mix)")
    stop = threading.Event()
    try:
        config = HeadsConfig(
            base=str(base), corpus=tuple(args.corpus), run_dir=str(run_dir), new_heads=args.heads,
            minutes=args.minutes, seq_len=args.seq_len, batch_size=args.batch_size,
            max_seq_len=args.max_seq_len, tokenizer_from=args.tokenizer, max_steps=args.max_steps, device=args.device,
            **{k: v for k, v in (("targets", args.targets), ("lr", args.lr), ("soft_top_k", args.soft_top_k))
               if v is not None},
        )
        with _stop_on_first_ctrl_c(stop):
            entry, result = add_heads_to_store(store, config, name, args.default, stop=stop)
    except HeadsStopped as e:
        print(f"add-heads {e}: the same command resumes it", file=sys.stderr)
        return 130
    except HeadsError as e:
        raise CliError(str(e)) from None
    before, after = result.first_eval["agreement_per_head"], result.final_eval["agreement_per_head"]
    print(f"added {args.heads} heads to {base} as {entry.name} at {entry.path}" + (" (default)" if entry.is_default else ""))
    print(f"{result.steps} steps in {result.seconds / 60:.1f} min; agreement with the base per new head "
          f"{' '.join(f'{a:.2f}' for a in before)} -> {' '.join(f'{a:.2f}' for a in after)} (run: {run_dir})")
    if note := result.corpus_note():
        print(f"note: {note}")
    return 0


@contextlib.contextmanager
def _stop_on_first_ctrl_c(stop: threading.Event):
    """The first Ctrl+C asks the run to stop after its step, with a checkpoint; a second one
    interrupts at once (the base pass before the first step can take minutes)."""
    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this step (Ctrl+C again to quit at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
    _add_corpus_arguments(p, "with --add-heads: ")
    p.add_argument("--heads", type=int, default=3, help="with --add-heads: new heads")
    p.add_argument("--minutes", type=float, default=10.0, help="with --add-heads: training time")
    p.add_argument("--default", action="store_true", help="with --add-heads: make it the default model")
    p.set_defaults(func=cmd_models_pull)


def cmd_models_pull(args) -> int:
    import shlex

    from assistant.hub import HubError, pull

    if args.add_heads and not args.corpus:
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
    add_heads += [arg for path in args.corpus for arg in ("--data", path)]
    add_heads += ["--heads", str(args.heads), "--minutes", str(args.minutes)] + (["--default"] if args.default else [])
    from assistant.cli import build_parser  # the whole command line: pull chains into add-heads

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
