"""`mtp-assistant tune`: fine-tune a model on one repository in a time box, bind it there.

The whole flow, for a user who gives nothing but the repository:

    corpus (the rules `train` uses) -> held-out files (the corpus's split by path hash)
    -> the starting model's report on the held-out files ("before")
    -> a step-time probe -> a schedule that fits the time box
    -> the fine-tune (the trainer); validation loss on the held-out files keeps the best
       checkpoint and ends the run when it stops improving (a small repository overfits)
    -> the tuned model's report ("after") -> the model into the store, bound to the repository

A run in progress lives in the store until its model is in place, so that a kill or Ctrl+C
resumes where it stopped:

    STORE/tune/NAME/
        tune.json        the run: repository, starting model, schedule, the "before" report
        train_config.json, metrics.jsonl, checkpoint/, model/     the trainer's
        best/            the evaluated checkpoint with the lowest validation loss (weights only)
        final/           the tuned model being finished (exports, report) before it moves

The tuned model carries tune_report.json (before/after, and every file's content hash so
that the next tune of the repository knows what changed), metrics.jsonl, card.json, CARD.md.
A repository tuned before starts from its tuned model and reads the changed files more often.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from assistant.store import NAME_PATTERN, RESERVED_NAMES, SHIPPED_NAME, ModelStore, root_key
from assistant.training.config import FINETUNE_MODES
from assistant.training.corpus import Corpus, CorpusConfig, SourceFile, build_corpus
from assistant.training.metrics import MetricsRecord, read_records
from assistant.training.trainer import (
    CHECKPOINT_DIR, FINAL_MODEL_DIR, METRICS_FILE, TRAIN_CONFIG_FILE, TrainConfig, TrainError, _find_checkpoint, train,
)
from models.checkpoint import CONFIG_FILE, read_config, write_atomic

TUNE_DIR = "tune"  # under the store's root
STATE_FILE = "tune.json"
REPORT_FILE = "tune_report.json"
BEST_DIR = "best"
STAGING_DIR = "final"
DEFAULT_MINUTES = 10.0
# A re-tune starts from the tuned model and reads what changed more often: a few minutes do.
INCREMENTAL_MINUTES = 3.0
# Fewer steps than this cannot both warm up and be checked on the held-out files.
MIN_STEPS = 8
# Of the time box, what the optimizer steps get; evaluations and checkpoints take the rest.
STEP_SHARE = 0.85


class TuneError(TrainError):
    """A tune that cannot start; the message is one line for the user."""


@dataclass(frozen=True)
class TuneConfig:
    repo: str = "."
    minutes: float | None = None  # None: DEFAULT_MINUTES, or INCREMENTAL_MINUTES for a re-tune
    base: str | None = None  # model reference; None: the repository's last tuned model, else the default
    steps: int | None = None  # a fixed schedule instead of the time box (tests, repeatable runs)
    name: str | None = None  # store name; None: derived from the repository's path
    # The recipe: full fine-tune at lr 5e-4 (docutils, 200 steps of 8 x 512 tokens in 10 minutes
    # on 2 cores: head-1 top-1 +10 points). Against it on pygls in 3-minute boxes (one thread of
    # a loaded machine, 9-63 steps): heads-only at 3e-3, with twice the steps in the same time,
    # reached a lower held-out loss but no more tokens per forward (2.21 against full's 2.37-2.49
    # from 2.19), and full at 2e-3 was worse than at 1e-3: no reason to move from the measured default.
    # "heads-distill" trains heads 2..n on the model's own greedy tokens, the trunk and head 1
    # frozen: it cannot change what the model completes, only how many tokens a forward yields.
    finetune: str = "full"
    lr: float = 5e-4
    batch_size: int = 8
    seq_len: int = 512  # at most the model's context
    fim_rate: float = 0.5  # 0 where the model's tokenizer has no FIM tokens
    val_fraction: float = 0.2
    evaluations: int = 10  # validation checks (and checkpoints) over the schedule
    patience: int = 3  # checks without a lower validation loss before the run ends
    eval_windows: int = 16  # held-out windows a validation check reads (what picks the checkpoint)
    changed_weight: int = 4  # a re-tune reads new and edited files this many times an epoch
    # The report.
    report_windows: int = 64
    next_line_cases: int = 100
    speed_prompts: int = 20
    speed_tokens: int = 64
    engine: str = "auto"  # what the language server would run the model with
    device: str = "auto"  # training
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "minutes": self.minutes is None or self.minutes > 0,
            "steps": self.steps is None or self.steps >= 1,
            "finetune": self.finetune in FINETUNE_MODES,
            "lr": self.lr > 0,
            "batch_size": self.batch_size > 0,
            "seq_len": self.seq_len >= 8,
            "fim_rate": 0 <= self.fim_rate <= 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "evaluations": self.evaluations >= 1,
            "patience": self.patience >= 1,
            "changed_weight": self.changed_weight >= 1,
            "next_line_cases": self.next_line_cases >= 0,
            "speed_prompts": self.speed_prompts >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise TuneError(f"invalid setting {bad[0]}={getattr(self, bad[0])!r}")


@dataclass
class TuneResult:
    name: str | None  # the store model, None where tuning did not beat the starting model
    model_dir: Path | None
    report: dict[str, Any]


Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_name(root: Path) -> str:
    """The store name of a repository's tuned model: readable, and unique per path."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).strip("-._")[:40] or "repo"
    return f"{slug}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}"


def _target(config: TuneConfig, store: ModelStore) -> tuple[Path, str, Path]:
    """(repository root, store name of its tuned model, the run's working directory)."""
    root = Path(root_key(config.repo))
    name = config.name or model_name(root)
    if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
        raise TuneError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-' only, not {RESERVED_NAMES}")
    return root, name, store.root / TUNE_DIR / name


def tune(config: TuneConfig, store: ModelStore | None = None, log: Log = _stderr) -> TuneResult | None:
    """Tune (or resume tuning) config.repo; None when there was nothing to do."""
    store = store or ModelStore()
    root, name, run_dir = _target(config, store)
    state = _read_state(run_dir)
    if state is not None and state["repo"] == str(root):
        log(f"resuming the interrupted tune of {root} ({run_dir})")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        state = _start(config, store, root, name, run_dir, log)
        if state is None:
            return None
    try:
        _train(run_dir, state, config.show_progress, log)
    except KeyboardInterrupt:
        checkpoint = _find_checkpoint(run_dir)
        kept = f"the checkpoint at step {_checkpoint_step(checkpoint)} is kept" if checkpoint else "no checkpoint yet"
        log(f"tune interrupted: {kept}; `mtp-assistant tune {root}` resumes it")
        raise
    return _finish(store, run_dir, state, log)


# --- starting a run ---


@dataclass(frozen=True)
class TunePlan:
    """What `tune` would do with a config now, found without loading any weights: what a
    user sees before starting it."""

    repo: Path
    name: str  # the tuned model's store name
    run_dir: Path  # where the run works until its model is in the store
    base: Path  # the model it starts from
    started_from: str  # "last tune" (the repository's tuned model) or "base model"
    changes: dict[str, Any] | None  # since the last tune (see describe_changes); None: a first tune
    resuming: bool  # an interrupted tune of the repository goes on as it was started


def plan_tune(config: TuneConfig, store: ModelStore | None = None) -> TunePlan:
    """The plan of `tune(config, store)`; raises what it would raise before training
    (CorpusError, TuneError for too little code, StoreError, ModelFileError)."""
    store = store or ModelStore()
    root, name, run_dir = _target(config, store)
    state = _read_state(run_dir)
    if state is not None and state["repo"] == str(root):
        return TunePlan(root, name, run_dir, Path(state["base"]), state.get("started_from", "base model"),
                        state.get("changes"), resuming=True)
    corpus = build_corpus(root, CorpusConfig(val_fraction=config.val_fraction))
    previous, base_dir = _starting_point(config, store, name, root)
    from models.checkpoint import ModelFileError
    from models.tokenizer import TokenizerError, load_tokenizer

    model_config, tokenizer_config, _ = read_config(base_dir)
    try:
        tokenizer = load_tokenizer(base_dir, tokenizer_config)
    except TokenizerError as e:
        raise ModelFileError(base_dir, str(e)) from None
    _check_enough_code(corpus, tokenizer, config.batch_size, min(config.seq_len, model_config.max_seq_len))
    changes = _changes(previous["files"], file_hashes(corpus), corpus) if previous else None
    return TunePlan(root, name, run_dir, base_dir, "last tune" if previous else "base model", changes, resuming=False)


def _starting_point(config: TuneConfig, store: ModelStore, name: str, root: Path) -> tuple[dict | None, Path]:
    """(the report of the repository's last tune, or None; the model to start from)."""
    previous = _previous_tune(store, name, root) if config.base is None else None
    return previous, store.models_dir / name if previous else store.resolve(config.base)


def _start(config: TuneConfig, store: ModelStore, root: Path, name: str, run_dir: Path, log: Log) -> dict | None:
    corpus = build_corpus(root, CorpusConfig(val_fraction=config.val_fraction))
    previous, base_dir = _starting_point(config, store, name, root)
    from models.checkpoint import load_model

    loaded = load_model(base_dir)
    seq_len = min(config.seq_len, loaded.config.max_seq_len)
    if config.finetune == "heads-distill" and loaded.model.n_future < 2:
        raise TuneError(f"{base_dir} has one head: there are no draft heads to distill (--finetune heads-distill)")
    _check_enough_code(corpus, loaded.tokenizer, config.batch_size, seq_len)

    hashes = file_hashes(corpus)
    changes = _changes(previous["files"], hashes, corpus) if previous else None
    file_weights: dict[str, int] = {}
    if changes is not None:
        log(f"changed since the last tune: {describe_changes(changes)}")
        if not changes["changed_files"] and config.minutes is None and config.steps is None:
            log(f"nothing changed in {root} since its last tune: nothing to do (--minutes N tunes again anyway)")
            return None
        file_weights = {path: config.changed_weight for path in changes["changed_train_files"]}

    # The probe first: a box too short for this machine fails before minutes of measuring.
    minutes = config.minutes or (INCREMENTAL_MINUTES if previous else DEFAULT_MINUTES)
    steps, probe = _schedule(config, loaded.config, seq_len, minutes)
    log(f"schedule: {steps} steps of {config.batch_size} x {seq_len} tokens"
        + (f" (probe: {probe['step_s']:.2f} s a step; {minutes:g} minutes)" if probe else ""))
    label = SHIPPED_NAME if store.shipped_dir and base_dir.resolve() == store.shipped_dir.resolve() else base_dir.name
    log(f"held-out: {len(corpus.val)} of {len(corpus.train) + len(corpus.val)} files; "
        f"measuring {label} on them before tuning")
    before = measure_model(base_dir, corpus.val, config, seq_len)
    fim_rate = config.fim_rate if loaded.tokenizer.has_fim else 0.0
    # A check reads eval_windows windows forward only, about 2/3 of a step at 16 windows and a
    # batch of 8: at least 10 steps apart it costs a few percent of the run, not most of it.
    every = max(10, steps // config.evaluations) if steps >= 10 else steps
    train_config = TrainConfig(
        repo=str(root), out_dir=str(run_dir), base_model=str(base_dir), finetune=config.finetune,
        steps=steps, batch_size=config.batch_size, seq_len=seq_len, lr=config.lr,
        warmup_steps=min(20, steps // 10), fim_rate=fim_rate, val_fraction=config.val_fraction,
        file_weights=file_weights, checkpoint_every=every, eval_every=every, eval_windows=config.eval_windows,
        seed=config.seed, device=config.device,
    )
    state = {
        "repo": str(root),
        "name": name,
        "base": str(base_dir),
        "started_from": "last tune" if previous else "base model",
        "tune": {k: v for k, v in dataclasses.asdict(config).items() if k != "show_progress"},
        "minutes": minutes,
        "probe": probe,
        "patience": config.patience,
        "train": train_config.to_json(),
        "corpus": corpus.summary(),
        "files": hashes,
        "changes": changes,
        "before": before,
        "started": time.time(),
    }
    write_atomic(run_dir / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())
    return state


def _read_state(run_dir: Path) -> dict | None:
    """The run in progress in run_dir, or None (none, or one too torn to resume)."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) and {"repo", "train", "before"} <= state.keys() else None


def _previous_tune(store: ModelStore, name: str, root: Path) -> dict | None:
    """The report of this repository's last tune, if its model is still in the store."""
    try:
        report = json.loads((store.models_dir / name / REPORT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = isinstance(report, dict) and report.get("repo") == str(root) and isinstance(report.get("files"), dict)
    return report if ok else None


def _check_enough_code(corpus: Corpus, tokenizer, batch_size: int, seq_len: int) -> None:
    """A run needs held-out files to judge it and a batch of distinct windows to learn from:
    with less, every step sees the same text and the model learns it by heart."""
    need_train, need_val = batch_size * seq_len, seq_len
    train_tokens = _count_tokens(corpus.train, tokenizer, need_train)
    val_tokens = _count_tokens(corpus.val, tokenizer, need_val)
    if corpus.val and train_tokens >= need_train and val_tokens >= need_val:
        return
    files = len(corpus.train) + len(corpus.val)
    raise TuneError(
        f"{corpus.root}: too little code to tune on ({files} code file{'s' * (files != 1)}, "
        f"{train_tokens}{'+' * (train_tokens >= need_train)} tokens to train on, {val_tokens} held out): "
        f"tune needs at least 2 files, {need_train} tokens to train on ({batch_size} windows of {seq_len}) "
        f"and {need_val} held out"
    )


def _count_tokens(files: list[SourceFile], tokenizer, enough: int) -> int:
    total = 0
    for f in files:
        total += len(tokenizer.encode(f.text)) + 1
        if total >= enough:
            break
    return total


def file_hashes(corpus: Corpus) -> dict[str, str]:
    """Every corpus file's content hash, by path: what the next tune compares against."""
    return {f.path: hashlib.sha256(f.text.encode("utf-8")).hexdigest()[:16] for f in corpus.train + corpus.val}


def _changes(old: dict[str, str], new: dict[str, str], corpus: Corpus) -> dict[str, Any]:
    added = sorted(set(new) - set(old))
    edited = sorted(p for p in new if p in old and new[p] != old[p])
    removed = sorted(set(old) - set(new))
    changed = set(added) | set(edited)
    sizes = {f.path: len(f.text.encode("utf-8")) for f in corpus.train + corpus.val}
    total = sum(sizes.values())
    return {
        "new": len(added), "edited": len(edited), "removed": len(removed), "unchanged": len(new) - len(changed),
        "changed_files": sorted(changed),
        "changed_train_files": sorted(changed & {f.path for f in corpus.train}),
        "changed_share": sum(sizes[p] for p in changed) / total if total else 0.0,
    }


def describe_changes(changes: dict[str, Any]) -> str:
    return (f"{changes['new']} new, {changes['edited']} edited, {changes['removed']} removed, "
            f"{changes['unchanged']} unchanged files ({changes['changed_share']:.0%} of the code changed)")


def _schedule(config: TuneConfig, model_config, seq_len: int, minutes: float) -> tuple[int, dict | None]:
    """Steps that fit the time box, from the measured step time of this model here."""
    if config.steps is not None:
        return config.steps, None
    from assistant.training.throughput import measure
    from assistant.training.trainer import resolve_device

    started = time.perf_counter()
    probe = measure(model_config, config.batch_size, seq_len, resolve_device(config.device), warmup=1, timed=2,
                    train_trunk=config.finetune == "full")
    seconds = minutes * 60 - (time.perf_counter() - started)  # the probe spent part of the box
    steps = int(STEP_SHARE * seconds / probe["step_s"])
    if steps < MIN_STEPS:
        raise TuneError(f"{minutes:g} minutes fit only {max(steps, 0)} steps here ({probe['step_s']:.1f} s a step); "
                        f"tune needs {MIN_STEPS}: give more --minutes")
    return steps, probe


# --- the fine-tune ---


class _EarlyStop(Exception):
    pass


def _train(run_dir: Path, state: dict, show_progress: bool, log: Log) -> None:
    """Run the trainer to the end of the schedule or until validation stops improving;
    a run already under way resumes from its checkpoint."""
    if (run_dir / FINAL_MODEL_DIR / CONFIG_FILE).is_file() or state.get("stopped_early"):
        return
    config = TrainConfig.from_json(state["train"])
    before_loss = selection_loss(state["before"], config.finetune)
    checkpoint = _find_checkpoint(run_dir)
    if checkpoint is not None:
        _keep_best(run_dir, before_loss, _checkpoint_step(checkpoint))  # a kill between checkpoint and copy
        if _should_stop(run_dir, state["patience"]):
            return _mark_stopped(run_dir, state)
    else:  # killed before the first checkpoint: nothing to resume
        for leftover in (TRAIN_CONFIG_FILE, METRICS_FILE):
            (run_dir / leftover).unlink(missing_ok=True)

    last = config.stop_after or config.steps

    def on_step(step: int, record: dict) -> None:
        if step % config.eval_every and step != last:
            return
        _keep_best(run_dir, before_loss, step)
        if step != last and _should_stop(run_dir, state["patience"]):
            raise _EarlyStop

    try:
        if checkpoint is not None:
            train(resume_dir=run_dir, on_step=on_step, show_progress=show_progress)
        else:
            train(config, on_step=on_step, show_progress=show_progress)
    except _EarlyStop:
        log(f"validation loss stopped improving: ending the run ({state['patience']} checks without a better one)")
        _mark_stopped(run_dir, state)


def selection_loss(measured: dict, finetune: str) -> float:
    """The starting model's figure a checkpoint's validation loss must beat: the loss on the
    text, or for distillation the draft heads' loss against the model's own greedy tokens
    (the trainer's validation loss for each recipe, on the same windows)."""
    return measured["distill_loss"] if finetune == "heads-distill" else measured["val_loss"]


def _val_records(run_dir: Path, up_to: int) -> list[MetricsRecord]:
    path = run_dir / METRICS_FILE
    records = read_records(path) if path.exists() else []
    return [r for r in records if r.split == "val" and r.step <= up_to]


def _keep_best(run_dir: Path, before_loss: float, step: int) -> None:
    """Copy the checkpoint of `step` to best/ if its validation loss is the lowest yet and
    below the starting model's."""
    records = _val_records(run_dir, step)
    if not records:
        return
    best = min(records, key=lambda r: r.loss)  # the first of equals
    checkpoint = run_dir / CHECKPOINT_DIR
    if best.step != step or best.loss >= before_loss or _checkpoint_step(checkpoint) != step:
        return
    if _best_step(run_dir) == step:
        return
    tmp = run_dir / f"{BEST_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
    write_atomic(tmp / "best.json", json.dumps({"step": step, "val_loss": best.loss}).encode())
    _swap_in(tmp, run_dir / BEST_DIR)


def _should_stop(run_dir: Path, patience: int) -> bool:
    records = _val_records(run_dir, 1 << 62)
    if not records:
        return False
    best = min(records, key=lambda r: r.loss)
    return sum(1 for r in records if r.step > best.step) >= patience


def _mark_stopped(run_dir: Path, state: dict) -> None:
    state["stopped_early"] = True
    write_atomic(run_dir / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())


def _best_dir(run_dir: Path) -> Path | None:
    for name in (BEST_DIR, f"{BEST_DIR}.old"):  # .old: a kill between the swap's renames
        if (run_dir / name / "best.json").is_file():
            return run_dir / name
    return None


def _best_step(run_dir: Path) -> int | None:
    best = _best_dir(run_dir)
    return json.loads((best / "best.json").read_text())["step"] if best else None


def _checkpoint_step(checkpoint: Path | None) -> int | None:
    try:
        return int(read_config(checkpoint)[2]["steps"]) if checkpoint else None
    except Exception:
        return None


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` so that a kill leaves one of them whole."""
    old = final.with_name(final.name + ".old")
    if final.exists():  # else an earlier swap was cut between its renames: old is the only copy
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# --- finishing: report, store, binding ---


def _finish(store: ModelStore, run_dir: Path, state: dict, log: Log) -> TuneResult:
    root, name = Path(state["repo"]), state["name"]
    best = _best_dir(run_dir)
    records = read_records(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else []
    train_steps = [r.step for r in records if r.split == "train"]
    summary = {
        "steps": max(train_steps, default=0),
        "schedule_steps": state["train"]["steps"],
        "stopped": "validation loss stopped improving" if state.get("stopped_early") else "end of the schedule",
        "best_step": json.loads((best / "best.json").read_text())["step"] if best else None,
        "tokens_per_s": statistics.median(r.tokens_per_s for r in records if r.split == "train")
        if train_steps else None,
    }
    report = {k: state[k] for k in ("repo", "name", "base", "started_from", "minutes", "probe", "corpus", "changes",
                                    "files", "before")}
    report |= {"tune": state["tune"], "train": state["train"], "run": summary, "after": None}
    if best is None:
        log(f"no checkpoint beat {Path(state['base']).name} on the held-out files: the model stays as it was")
        shutil.rmtree(run_dir, ignore_errors=True)
        return TuneResult(None, None, report)

    staging = run_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best, staging, ignore=shutil.ignore_patterns("best.json"))
    shutil.copyfile(run_dir / METRICS_FILE, staging / METRICS_FILE)
    _export_like_base(Path(state["base"]), staging, log)
    log("measuring the tuned model on the held-out files")
    config = TuneConfig(**{k: v for k, v in state["tune"].items() if k in _TUNE_FIELDS})
    report["after"] = measure_model(staging, _held_out(root, config.val_fraction), config, state["train"]["seq_len"])
    _write_model_files(staging, report)
    entry = store.add(staging, name, move=True, replace=True)
    store.bind(root, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    return TuneResult(name, entry.path, report)


_TUNE_FIELDS = {f.name for f in dataclasses.fields(TuneConfig)}


def _held_out(root: Path, val_fraction: float) -> list[SourceFile]:
    return build_corpus(root, CorpusConfig(val_fraction=val_fraction)).val


def _export_like_base(base: Path, model_dir: Path, log: Log) -> None:
    """The GGUF exports the starting model had, so the language server runs the tuned model
    with the engine it ran the base with."""
    from models.gguf_export import available_quants, export_model

    for quant in available_quants(base):
        log(f"exporting {quant} for llama.cpp")
        export_model(model_dir, quant, threads=max(1, (os.cpu_count() or 2) // 2))


def _write_model_files(model_dir: Path, report: dict) -> None:
    """tune_report.json, card.json (what `models show` prints), CARD.md, and a line in the
    provenance of config.json."""
    write_atomic(model_dir / REPORT_FILE, (json.dumps(report, indent=2) + "\n").encode())
    after = report["after"]
    card = {
        "heldout_heads": {"accuracy_per_head": after["accuracy_per_head"], "split": f"held-out files of {report['repo']}"},
        "next_line": {"exact_match": after["next_line"]["exact_match"], "cases": after["next_line"]["cases"]},
        "tune": {"repo": report["repo"], "base": report["base"], "report": REPORT_FILE},
    }
    write_atomic(model_dir / "card.json", (json.dumps(card, indent=2) + "\n").encode())
    (model_dir / "CARD.md").write_text(
        f"# {report['name']}\n\nTuned by `mtp-assistant tune` on {report['repo']}, starting from {report['base']} "
        f"({report['started_from']}); {report['run']['steps']} steps, kept step {report['run']['best_step']} "
        f"({report['run']['stopped']}).\n\n{report_table(report)}\n"
    )
    data = json.loads((model_dir / CONFIG_FILE).read_text())
    data["provenance"] |= {
        "trained_by": "mtp-assistant tune",
        "tune": {"repo": report["repo"], "base": report["base"], "steps": report["run"]["steps"],
                 "best_step": report["run"]["best_step"], "report": REPORT_FILE,
                 "head1_before": report["before"]["accuracy_per_head"][0], "head1_after": after["accuracy_per_head"][0]},
    }
    write_atomic(model_dir / CONFIG_FILE, (json.dumps(data, indent=2) + "\n").encode())


# --- measuring a model on held-out files ---


def measure_model(model_dir: Path, held_out: list[SourceFile], config: TuneConfig, seq_len: int) -> dict[str, Any]:
    """Per-head top-1 accuracy and validation loss, the draft heads' agreement with the
    model's own greedy tokens, next-line exact match, tokens per forward at k=4 and
    completion latency, on the held-out files."""
    import torch

    from assistant.engine import load_engine
    from assistant.evals.next_line import cases_from_files, run_next_line
    from assistant.training.data import evaluation_windows
    from assistant.training.distill import evaluate_agreement
    from assistant.training.evaluation import evaluate
    from models.checkpoint import load_model
    from models.loss import split_window

    loaded = load_model(model_dir)
    texts = [f.text for f in held_out]
    n = loaded.model.n_future
    # The report's windows begin with the trainer's validation windows (the same cut of the
    # same texts): the first eval_windows give the loss that picks the checkpoint.
    windows = evaluation_windows(texts, loaded.tokenizer, seq_len, n, max(config.report_windows, config.eval_windows))
    val = evaluate(loaded.model, windows[: config.eval_windows])
    rest = evaluate(loaded.model, windows[config.eval_windows :]) if len(windows) > config.eval_windows else None
    heads = _combined(val, rest)
    if n > 1:  # as the trainer's distillation reads them: the inputs of the same windows, the first
        inputs = split_window(windows, n)[0]  # eval_windows its validation
        agree_val = evaluate_agreement(loaded.model, inputs[: config.eval_windows])
        agree_rest = evaluate_agreement(loaded.model, inputs[config.eval_windows :]) if rest is not None else None
        agreement = _combined(agree_val, agree_rest)
    del loaded
    engine = load_engine(model_dir, config.engine)
    try:
        cases = cases_from_files(held_out, config.next_line_cases, config.seed)
        lines = run_next_line(engine, cases, keep_examples=0)
        k = min(4, engine.n_future)
        tpf = _tokens_per_forward(engine, [c.prefix for c in cases[: config.speed_prompts]], k, config.speed_tokens)
    finally:
        getattr(engine, "close", lambda: None)()
    latencies = sorted(lines.latencies_s)
    return {
        "val_loss": float(val.loss.sum()),
        "loss_per_head": heads.loss.tolist(),
        "accuracy_per_head": heads.accuracy.tolist(),
        "scored_positions": int(heads.count[0]),
        # Heads 2..n: the share of positions where a head's token is the model's own greedy one.
        "agreement_per_head": agreement.accuracy.tolist() if n > 1 else [],
        "distill_loss": float(agree_val.loss.sum()) if n > 1 else None,
        "next_line": {"cases": lines.total, "exact_match": lines.exact_match},
        "tokens_per_forward": {"k": k, "value": tpf},
        "latency_ms": {
            "p50": 1e3 * statistics.median(latencies) if latencies else None,
            "p95": 1e3 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
        },
        "engine": engine.label,
        "threads": torch.get_num_threads(),
    }


def _combined(a, b):
    """Per-head stats of two sets of windows together."""
    if b is None:
        return a
    from models.loss import HeadStats

    count = a.count + b.count
    return HeadStats((a.loss * a.count + b.loss * b.count) / count.clamp(min=1), a.correct + b.correct, count)


def _tokens_per_forward(engine, prompts: list[str], k: int, max_new: int) -> float | None:
    """Self-speculative decoding with k heads on held-out prompts: all tokens / all forwards."""
    from assistant.engine.base import GenerationConfig

    tokenizer = engine.tokenizer
    room = engine.max_seq_len - max_new - engine.n_future - 1
    tokens = forwards = 0
    for prompt in prompts:
        ids = tokenizer.encode(prompt)[-room:] or [tokenizer.eot_id]
        result = engine.generate(ids, GenerationConfig(max_new_tokens=max_new, k=k, stop_token_ids=(tokenizer.eot_id,),
                                                       reuse_prefix=False))
        tokens += result.stats.new_tokens
        forwards += result.stats.forward_passes
    return tokens / forwards if forwards else None


# --- the report as text ---


def report_rows(report: dict, compact: bool = False) -> list[tuple[str, str, str]]:
    """The before/after report as (metric, before, after) rows; compact: a row per head and
    short labels, to fit beside the TUI's loss plot."""
    before, after = report["before"], report.get("after")
    n = len(before["accuracy_per_head"])
    cases, k = before["next_line"]["cases"], before["tokens_per_forward"]["k"]

    def latency(m: dict) -> str:
        lat = m["latency_ms"]
        return f"{lat['p50']:.0f}{'/' if compact else ' / '}{lat['p95']:.0f} ms" if lat["p50"] is not None else "-"

    def agreement(m: dict) -> str:
        return percents(m["agreement_per_head"]) if m.get("agreement_per_head") else "-"  # older reports lack it

    def tpf(m: dict) -> str:
        value = m["tokens_per_forward"]["value"]
        return f"{value:.2f}" if value is not None else "-"

    def percents(values: list[float]) -> str:
        return " / ".join(f"{100 * v:.1f}" for v in values) + "%"

    if compact:
        accuracy = [(f"top-1 head {i + 1}", lambda m, i=i: f"{100 * m['accuracy_per_head'][i]:.1f}%") for i in range(n)]
    else:
        draft_heads = "/".join(str(i + 1) for i in range(1, n)) or "-"
        accuracy = [(f"top-1 accuracy, heads {'/'.join(str(i + 1) for i in range(n))}",
                     lambda m: percents(m["accuracy_per_head"])),
                    (f"agreement with the model's greedy tokens, heads {draft_heads}", agreement)]
    metrics = accuracy + [
        ("val loss" if compact else "validation loss (sum of heads)", lambda m: f"{m['val_loss']:.3f}"),
        (f"next line ({cases})" if compact else f"next-line exact match ({cases} cases)",
         lambda m: f"{100 * m['next_line']['exact_match']:.1f}%"),
        (f"tok/forward k={k}" if compact else f"tokens per forward, k={k}", tpf),
        ("latency p50/p95" if compact else "next-line completion latency p50 / p95 (cold prompt)", latency),
    ]
    return [(label, fmt(before), fmt(after) if after else "-") for label, fmt in metrics]


def report_table(report: dict) -> str:
    before, after = report["before"], report.get("after")
    columns = ["before"] + (["after"] if after else [])
    corpus = report["corpus"]
    lines = [
        f"held-out files of {report['repo']}: {corpus['val']['files']} files, {corpus['val']['bytes'] / 1e3:.0f} kB "
        f"(trained on {corpus['train']['files']} files)",
        "| " + " | ".join(["metric"] + columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for label, *cells in report_rows(report):
        lines.append("| " + " | ".join([label] + cells[: len(columns)]) + " |")
    lines.append(f"engine: {before['engine']} -> {after['engine'] if after else '-'}")
    return "\n".join(lines)
