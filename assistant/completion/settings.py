"""Completion settings: one dataclass with safe defaults, loaded from an editor's JSON.

Editors send settings as `initializationOptions` and in `workspace/didChangeConfiguration`,
flat or under an "mtpAssistant" section, in camelCase or snake_case. A bad value never
stops the server: that field keeps its default and the problem is reported.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from assistant.errors import UserError

MULTILINE_MODES = ("auto", "always", "never")
ENGINES = ("auto", "torch", "llama")  # as assistant.engine.load_engine names them
SECTION = "mtpAssistant"


@dataclass(frozen=True)
class CompletionSettings:
    model: str | None = None  # model directory or store name; None: the store's default
    engine: str = "auto"  # auto: llama.cpp where the model has its files, else torch
    # CPU threads of the engine's 1-row steps (None: its default, about the physical cores)
    # and llama.cpp's for forwards of several rows (None: every logical core); changing
    # either reloads the model.
    threads: int | None = None
    batch_threads: int | None = None
    max_tokens: int = 48  # new tokens per completion
    multiline: str = "auto"  # auto: multi-line after a block opener or an opening """; always; never
    max_lines: int = 8  # lines in a multi-line completion
    time_cap_ms: int = 400  # generation stops after this long (between forward passes)
    context_tokens: int = 768  # prompt tokens in all: prefix + suffix + snippets
    suffix_share: float = 0.2  # at most this share of the prompt for text after the cursor
    snippet_share: float = 0.25  # at most this share for snippets from other files
    heads: int | str | None = "auto"  # "auto": cost-aware drafting (heads and context lookup); None: all heads; 1: plain
    temperature: float = 0.0  # 0: greedy (cacheable, exact); > 0: speculative sampling
    cache_size: int = 256  # completions remembered
    workspace_index: bool = True  # index the workspace for similar code (watchdog keeps it current)

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise UserError("; ".join(problems))


def _positive_int(name: str, value: Any, maximum: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        return f"{name} must be an integer in 1..{maximum}, got {value!r}"
    return None


def _share(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value < 0.9:
        return f"{name} must be a number in [0, 0.9), got {value!r}"
    return None


def _check_field(name: str, value: Any) -> str | None:
    if name == "model":
        return None if value is None or (isinstance(value, str) and value) else f"model must be a non-empty string, got {value!r}"
    if name == "engine":
        return None if value in ENGINES else f"engine must be one of {', '.join(ENGINES)}, got {value!r}"
    if name == "multiline":
        return None if value in MULTILINE_MODES else f"multiline must be one of {', '.join(MULTILINE_MODES)}, got {value!r}"
    if name in ("suffix_share", "snippet_share"):
        return _share(name, value)
    if name == "heads":
        return None if value is None or value == "auto" else _positive_int(name, value, 64)
    if name == "temperature":
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 10
        return None if ok else f"temperature must be a number in [0, 10], got {value!r}"
    if name in ("threads", "batch_threads"):
        return None if value is None else _positive_int(name, value, 1024)
    if name == "workspace_index":
        return None if isinstance(value, bool) else f"workspace_index must be true or false, got {value!r}"
    if name == "context_tokens":
        problem = _positive_int(name, value, 1 << 20)
        return problem or (None if value >= 32 else f"context_tokens must be at least 32, got {value!r}")
    limits = {"max_tokens": 4096, "max_lines": 1000, "time_cap_ms": 600_000, "cache_size": 1 << 16}
    return _positive_int(name, value, limits[name])


def validate(settings: CompletionSettings) -> list[str]:
    problems = [_check_field(f.name, getattr(settings, f.name)) for f in dataclasses.fields(settings)]
    problems = [p for p in problems if p]
    if not problems and settings.suffix_share + settings.snippet_share >= 0.9:
        problems.append("suffix_share + snippet_share must leave at least 10% of the prompt for the prefix")
    return problems


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def load_settings(data: Any, base: CompletionSettings = CompletionSettings()) -> tuple[CompletionSettings, list[str]]:
    """Settings from an editor's JSON over `base`, and a line for each value that was refused.

    Unknown keys are reported too (a typo should not pass silently); refused values
    keep base's.
    """
    if data is None:
        return base, []
    if not isinstance(data, dict):
        return base, [f"settings must be a JSON object, got {type(data).__name__}"]
    if isinstance(data.get(SECTION), dict):
        data = data[SECTION]
    names = {f.name for f in dataclasses.fields(CompletionSettings)}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in data.items():
        name = _snake(str(key))
        if name not in names:
            problems.append(f"unknown setting {key!r}")
            continue
        problem = _check_field(name, value)
        if problem:
            problems.append(problem)
        else:
            values[name] = value
    try:
        return dataclasses.replace(base, **values), problems
    except ValueError as e:  # fields fine one by one, not together (the shares)
        return base, problems + [str(e)]
