"""Decoding engines behind one interface (see base.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from assistant.errors import UserError

ENGINES = ("auto", "torch", "llama")

log = logging.getLogger(__name__)


def load_engine(
    model_dir: Path | str,
    engine: str = "auto",
    device: str = "cpu",
    dtype: str = "float32",
    quant: str | None = None,
    threads: int | None = None,
    exact: bool = False,
    batch_threads: int | None = None,
):
    """An engine for the model in model_dir. "auto": llama.cpp where a GGUF export exists,
    else torch; an export that cannot be used falls back to torch with a warning, logged
    and kept in the engine's `warnings` (a list of one-line messages a caller can show).

    device and dtype are the torch engine's; the llama.cpp engine offloads to the GPU when
    device is not "cpu" (and libllama was built with one), and reads quant (None: the
    preferred export that exists), threads (None: half the logical cores), batch_threads
    (LlamaSettings.batch_threads; None: every logical core) and exact
    (LlamaSettings.exact: False, llama.cpp's fast defaults, for every caller but the
    exactness checks).
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "torch":
        return _torch_engine(model_dir, device, dtype, threads)
    if engine == "llama":
        return _llama_engine(model_dir, device, quant, threads, exact, batch_threads)
    return _auto_engine(model_dir, device, dtype, quant, threads, exact, batch_threads)


def _torch_engine(model_dir, device: str, dtype: str, threads: int | None):
    import torch

    from assistant.engine.torch_engine import TorchEngine

    if threads:
        torch.set_num_threads(threads)
    return TorchEngine.from_dir(model_dir, device=device, dtype=getattr(torch, dtype))


def _llama_engine(model_dir, device: str, quant: str | None, threads: int | None, exact: bool = False,
                  batch_threads: int | None = None):
    from assistant.engine.llama_engine import LlamaEngine
    from assistant.store import ModelStore

    # The auto drafter's cost probe is kept in the store's home, measured once per model and machine.
    probe_dir = ModelStore(shipped_dir=None).root / "probes"
    return LlamaEngine.from_dir(model_dir, quant=quant, threads=threads, device=device, exact=exact, probe_dir=probe_dir,
                                batch_threads=batch_threads)


def _auto_engine(model_dir, device: str, dtype: str, quant: str | None, threads: int | None, exact: bool = False,
                 batch_threads: int | None = None):
    from models.checkpoint import ModelFileError, read_config
    from models.gguf_export import available_quants

    read_config(model_dir)  # a bad config.json is both engines' problem: say so, do not fall back
    if not available_quants(model_dir):
        return _torch_engine(model_dir, device, dtype, threads)  # never exported: torch is the engine
    try:
        return _llama_engine(model_dir, device, quant, threads, exact, batch_threads)
    except (ModelFileError, ImportError) as e:
        # The export exists but cannot serve (a head missing, a file corrupt, llama-cpp-python
        # not installed): torch still can, slower. Say why, or the slowdown goes unexplained.
        reason = f"llama.cpp engine unusable, serving with the torch engine instead: {e}"
        log.warning("%s", reason)
        fallback = _torch_engine(model_dir, device, dtype, threads)
        fallback.warnings.append(reason)
        return fallback
