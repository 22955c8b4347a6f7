"""Decoding engines behind one interface (see base.py)."""

from __future__ import annotations

from pathlib import Path

ENGINES = ("auto", "torch", "llama")


def has_llama_files(model_dir: Path | str) -> bool:
    """Whether the model directory holds a complete GGUF export (main + every head) for the
    llama.cpp engine. Whether the files are sound is checked when the engine loads them."""
    from models.checkpoint import ModelFileError, read_config
    from models.gguf_export import available_quants, export_files

    try:
        config, _, _ = read_config(model_dir)
    except ModelFileError:
        return False
    return any(
        all(p.is_file() for p in export_files(model_dir, q, config.n_future_tokens)) for q in available_quants(model_dir)
    )


def load_engine(
    model_dir: Path | str,
    engine: str = "auto",
    device: str = "cpu",
    dtype: str = "float32",
    quant: str | None = None,
    threads: int | None = None,
):
    """An engine for the model in model_dir. "auto": llama.cpp where its files exist, else torch.

    device and dtype are the torch engine's; the llama.cpp engine offloads to the GPU when
    device is not "cpu" (and libllama was built with one), and reads quant (None: the
    preferred export that exists) and threads (None: half the logical cores).
    """
    if engine == "auto":
        engine = "llama" if has_llama_files(model_dir) else "torch"
    if engine == "torch":
        import torch

        from assistant.engine.torch_engine import TorchEngine

        if threads:
            torch.set_num_threads(threads)
        return TorchEngine.from_dir(model_dir, device=device, dtype=getattr(torch, dtype))
    if engine == "llama":
        from assistant.engine.llama_engine import LlamaEngine

        return LlamaEngine.from_dir(model_dir, quant=quant, threads=threads, device=device)
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
