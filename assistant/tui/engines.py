"""The engine completions run on, as the screens load and name it."""

from __future__ import annotations

from pathlib import Path


def load_completion_engine(model_dir: Path | str, engine: str = "auto"):
    """The engine the language server would load for this model (same defaults)."""
    from assistant.engine import load_engine

    return load_engine(model_dir, engine)


def engine_label(engine) -> str:
    """As the language server names it: "llama.cpp Q8_0" or "torch"."""
    quant = getattr(engine, "quant", None)
    return f"llama.cpp {quant.upper()}" if isinstance(quant, str) else "torch"
