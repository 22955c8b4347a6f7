"""What the Models screen shows about each model: read from its directory, never loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.store import ModelStore
from models.checkpoint import WEIGHTS_FILE, ModelFileError, read_config


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    is_default: bool = False
    shipped: bool = False  # the model in the repository (models/default), not in the store
    parameters: int | None = None
    size_bytes: int = 0
    n_future: int | None = None
    dim: int | None = None
    n_layers: int | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    quantizations: tuple[str, ...] = ()  # e.g. ("q8_0", "q4_k_m"): the GGUF exports present
    gguf_files: tuple[str, ...] = ()  # relative to the model directory
    provenance: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when config.json cannot be read
    serves: tuple[str, ...] = ()  # the repository roots bound to this model (store.bind)


def count_parameters(weights: Path) -> int | None:
    """Parameters from the safetensors header: shapes only, no tensor is read."""
    try:
        from safetensors import safe_open

        total = 0
        with safe_open(str(weights), framework="pt") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                total += n
        return total
    except Exception:  # a torn or foreign file: the size column says "?"
        return None


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_model(
    name: str, path: Path, is_default: bool = False, shipped: bool = False, serves: tuple[str, ...] = ()
) -> ModelInfo:
    base = dict(name=name, path=path, is_default=is_default, shipped=shipped, serves=serves)
    try:
        config, tokenizer, provenance = read_config(path)
    except ModelFileError as e:
        return ModelInfo(**base, size_bytes=directory_size(path) if path.is_dir() else 0, error=e.problem)
    return ModelInfo(
        **base,
        parameters=count_parameters(path / WEIGHTS_FILE),
        size_bytes=directory_size(path),
        n_future=config.n_future_tokens,
        dim=config.dim,
        n_layers=config.n_layers,
        tokenizer=str(tokenizer.get("kind", "?")),
        vocab_size=config.vocab_size,
        quantizations=quantizations(path),
        gguf_files=tuple(sorted(str(p.relative_to(path)) for p in path.rglob("*.gguf"))),
        provenance=provenance,
    )


def quantizations(model_dir: Path) -> tuple[str, ...]:
    """The GGUF exports in a model directory. The llama.cpp export writes one folder per
    quantization (gguf/q8_0/main.gguf, head-2.gguf, ...); a loose file counts by its name."""
    found = set()
    for p in model_dir.rglob("*.gguf"):
        inside = p.parent not in (model_dir, model_dir / "gguf")
        found.add(p.parent.name if inside else p.stem)
    return tuple(sorted(found))


def list_models(store: ModelStore) -> list[ModelInfo]:
    """Every model the store lists: its own, then the shipped one."""
    bindings = store.bindings()

    def serves(name: str) -> tuple[str, ...]:
        return tuple(sorted(root for root, bound in bindings.items() if bound == name))

    return [describe_model(e.name, e.path, e.is_default, e.shipped, serves(e.name)) for e in store.list()]


def scores(provenance: dict[str, Any]) -> dict[str, Any]:
    """Validation results recorded in the provenance (any key about validation or evaluation)."""
    found = {}
    for key, value in provenance.items():
        if any(word in key.lower() for word in ("val", "eval", "score", "accuracy", "loss", "bench")):
            found[key] = value
    return found


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_count(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k"
