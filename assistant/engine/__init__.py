"""Decoding engines behind one interface (see base.py)."""

from __future__ import annotations

from pathlib import Path

ENGINES = ("auto", "torch")


def has_llama_files(model_dir: Path | str) -> bool:
    """Whether the model directory holds the files the llama.cpp engine runs (issue 4)."""
    return False


def load_engine(model_dir: Path | str, engine: str = "auto", device: str = "cpu", dtype: str = "float32"):
    """An engine for the model in model_dir. "auto": llama.cpp where its files exist, else torch."""
    if engine == "auto":
        engine = "torch"  # the llama.cpp engine takes over here once it lands
    if engine == "torch":
        import torch

        from assistant.engine.torch_engine import TorchEngine

        return TorchEngine.from_dir(model_dir, device=device, dtype=getattr(torch, dtype))
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
