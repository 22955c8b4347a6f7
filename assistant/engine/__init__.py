"""Decoding engines behind one interface (see base.py)."""

from __future__ import annotations

from pathlib import Path

ENGINES = ("torch",)


def load_engine(model_dir: Path | str, engine: str = "torch", device: str = "cpu", dtype: str = "float32"):
    """An engine for the model in model_dir."""
    if engine == "torch":
        import torch

        from assistant.engine.torch_engine import TorchEngine

        return TorchEngine.from_dir(model_dir, device=device, dtype=getattr(torch, dtype))
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
