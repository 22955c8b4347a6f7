"""add-heads into the model store: the new model's name, where its resumable run lives,
and the move of the finished model into place (written beside the store's models, so a
large base's weights are not copied twice, and never left half-written)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Callable

from assistant.store import NAME_PATTERN, RESERVED_NAMES, ModelEntry, ModelStore
from assistant.training.heads import HeadsConfig, HeadsError, HeadsResult, add_heads


def default_name(base: Path | str) -> str:
    """A GGUF file's stem, or a Hugging Face directory's name, + "-mtp"."""
    base = Path(base)
    return f"{(base.stem if base.is_file() else base.resolve().name)}-mtp"


def check_name(store: ModelStore, name: str) -> None:
    if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
        raise HeadsError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-' only, not 'shipped' or 'default'")
    if (store.models_dir / name).exists():
        raise HeadsError(f"a model named {name!r} already exists in {store.models_dir}")


def run_dir_for(store: ModelStore, name: str) -> Path:
    """Where the run that makes `name` lives: the same settings again resume it there."""
    return store.root / "runs" / f"add-heads-{name}"


def add_heads_to_store(
    store: ModelStore,
    config: HeadsConfig,
    name: str,
    make_default: bool = False,
    show_progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[ModelEntry, HeadsResult]:
    """Train config's heads (resuming its run), then add the model to the store as `name`.
    Raises HeadsError (and the base's ModelFileError, the corpus's CorpusError) with one
    line for the user; HeadsStopped when `stop` was set (the run resumes next time)."""
    check_name(store, name)
    staging = store.models_dir / f".{name}.add-heads"
    store.models_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _, result = add_heads(config, staging, show_progress, on_step, stop)
        entry = store.add(staging, name, make_default, move=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry, result
