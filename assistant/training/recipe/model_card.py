"""The model card's data: card.json next to a shipped model, as typed dataclasses.

`ship` measures a ModelCard and writes it; `render_card` turns one into CARD.md; `mtp-assistant
models show` reads its headline scores. Torch-free, so that reading a card stays instant.

from_json rejects a missing or unknown field and a value of the wrong type, naming where it
is (e.g. `card.json: training.stages[0].steps: expected an integer`), so that to_json gives back exactly what was
read. Three parts are other formats' records, kept as written rather than re-typed here:
the run's train_config.json (whose TrainConfig gains fields over time: a card records the
settings its run wrote), a metrics.jsonl evaluation record, and the benchmark's rows.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from models.config import ConfigError, ModelConfig

CARD_FILE = "card.json"  # in the model's directory
SOURCES_FILE = "sources.json"  # in the recipe's DATA directory

# Metadata for a field that older files leave out: absent in JSON when None.
OPTIONAL = {"omit_if_none": True}


class CardError(ValueError):
    """A card.json that is not a model card: the message says where and what."""


class _JsonFile:
    """from_json/to_json and read/write for a dataclass kept as an indented JSON file."""

    FILE = ""  # the file's usual name, where its errors say they are when not read from a path

    @classmethod
    def from_json(cls, data: Any, where: str | None = None) -> Self:
        """The file's content `data`; a CardError names `where` it is from and the field that is wrong."""
        try:
            return _from_json(cls, data, "")
        except _Invalid as e:
            raise CardError(f"{where or cls.FILE}: {e}") from None

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def read(cls, path: Path) -> Self:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CardError(f"{path}: not a readable JSON file ({e})") from e
        return cls.from_json(data, str(path))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


@dataclass(frozen=True)
class Source:
    """One corpus source: the standard library or a pinned package's wheel."""

    name: str
    version: str
    license: str
    bytes: int  # of .py files
    wheel: str | None = field(default=None, metadata=OPTIONAL)  # the wheel's file name (packages)
    excluded_dirs: list[str] | None = field(default=None, metadata=OPTIONAL)  # left out (the stdlib)


@dataclass(frozen=True)
class Sources(_JsonFile):
    """DATA/sources.json: what the model trained on and what it never saw."""

    FILE = SOURCES_FILE

    train: list[Source]
    heldout: list[Source]


@dataclass(frozen=True)
class StageSummary:
    """What one training stage did, from its run's train_config.json and metrics.jsonl."""

    run: str
    base_model: str | None
    steps: int
    # More than steps: the run stopped early (stop_after). Absent in cards of older runs.
    schedule_steps: int | None = field(metadata=OPTIONAL)
    tokens_seen: int
    wall_hours: float
    median_tokens_per_s: float
    lr: float
    seed: int
    window_lanes: int
    final_val: dict[str, Any] | None  # the run's last metrics.jsonl "val" record, as written
    # The recipe's (not in the run's files); None when the shipped stages are not the recipe's.
    threads: int | None
    hardware: str | None


@dataclass(frozen=True)
class Training:
    steps: int
    tokens_seen: int
    wall_hours: float
    final_val: dict[str, Any] | None
    stages: list[StageSummary]


@dataclass(frozen=True)
class HeldoutHeads:
    """Per-head loss and top-1 accuracy on the held-out packages."""

    tokens: int
    loss_per_head: list[float]
    accuracy_per_head: list[float]


@dataclass(frozen=True)
class NextLineExample:
    path: str
    expected: str
    generated: str
    hit: bool


@dataclass(frozen=True)
class NextLine:
    cases: int
    exact_match: float
    examples: list[NextLineExample]


@dataclass(frozen=True)
class HumanEval:
    problems: int
    pass_at_1: float
    passed: list[str]  # task ids


@dataclass(frozen=True)
class Bench:
    """assistant.bench's BenchResult.to_json(); its rows are that module's, one per (engine, k)."""

    meta: dict[str, Any]
    prompts: int
    mismatches: int
    head_accuracy: list[float]
    baseline: str | None
    rows: list[dict[str, Any]]
    # Per engine: speculative runs that parted from plain decoding, runs compared, exact mode
    # (cards measured before fast mode existed have none).
    mismatches_by_engine: dict[str, int] | None = field(default=None, metadata=OPTIONAL)
    runs_by_engine: dict[str, int] | None = field(default=None, metadata=OPTIONAL)
    exact_engines: dict[str, bool] | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True)
class CardExample:
    """One of the card's ten examples: the text around the cursor and what is completed there."""

    prefix: str
    suffix: str
    completion: str


@dataclass(frozen=True)
class ModelCard(_JsonFile):
    FILE = CARD_FILE

    sources: Sources
    model_config: ModelConfig
    train_config: dict[str, Any]  # the last stage's train_config.json, as written
    training: Training
    heldout_heads: HeldoutHeads
    next_line: NextLine
    humaneval: HumanEval
    bench: Bench
    bench_table: str
    examples: list[CardExample]
    evaluation_minutes: float


class _Invalid(Exception):
    """A field that does not fit, at `path` inside the file (e.g. training.stages[0].steps)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}" if path else problem)


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _from_json(cls: type, data: Any, path: str) -> Any:
    """An instance of dataclass `cls` from its JSON object, every field checked."""
    if not isinstance(data, dict):
        raise _Invalid(path, f"expected a JSON object, got {_shown(data)}")
    fields = dataclasses.fields(cls)
    unknown = sorted(set(data) - {f.name for f in fields})
    if unknown:
        raise _Invalid(path, f"unknown field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields:
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name], _child(path, f.name))
        elif f.metadata.get("omit_if_none"):
            values[f.name] = None
        else:
            raise _Invalid(path, f"missing field {f.name}")
    return cls(**values)


def _value(hint: Any, value: Any, path: str) -> Any:
    """`value` checked against the type `hint` (and built, for a dataclass)."""
    if hint is Any:
        return value
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, path)
    if hint is ModelConfig:
        try:
            return ModelConfig.from_dict(value)
        except (ConfigError, TypeError) as e:
            raise _Invalid(path, str(e)) from e
    if dataclasses.is_dataclass(hint):
        return _from_json(hint, value, path)
    origin = typing.get_origin(hint)
    if origin is list:
        _expect(value, list, "a list", path)
        return [_value(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        return _expect(value, dict, "a JSON object", path)
    if hint is float:  # a whole number is a float too (json writes 2.0 as 2.0, but people write 2)
        return _expect(value, (int, float), "a number", path)
    return _expect(value, hint, {int: "an integer", str: "a string", bool: "true or false"}[hint], path)


def _expect(value: Any, kind: type | tuple[type, ...], name: str, path: str) -> Any:
    # bool is an int to isinstance, never to a card
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _Invalid(path, f"expected {name}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    return json.dumps(value, default=repr)[:60]


def _to_json(obj: Any) -> Any:
    if isinstance(obj, ModelConfig):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_if_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, list):
        return [_to_json(item) for item in obj]
    return obj
