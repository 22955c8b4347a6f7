"""ctypes bindings for the layer-input taps of the libllama that llama-cpp-python builds.

`llama_set_embeddings_layer_inp` / `llama_get_embeddings_layer_inp` are exported as C++
symbols (no extern "C"), so they are looked up by their mangled names, the way
llama_cpp/llama_cpp_ext.py binds their neighbours. Their declarations (llama-ext.h):

    void    llama_set_embeddings_layer_inp(llama_context * ctx, uint32_t lid, bool value);
    float * llama_get_embeddings_layer_inp(llama_context * ctx, uint32_t lid);

After llama_decode, the getter's buffer holds the input of block `lid` for every token
of the batch in batch order (n_tokens x n_embd floats). llama_decode splits a batch into
micro-batches of n_ubatch tokens and copies each one's rows at its token offset, so the
rows of one batch are complete whatever n_ubatch is (tests/assistant/engine checks it).
"""

from __future__ import annotations

import ctypes
from typing import Any, Iterable


def _bind(names: Iterable[str], argtypes: list[Any], restype: Any):
    from llama_cpp import llama_cpp

    for name in names:
        func = getattr(llama_cpp._lib, name, None)
        if func is not None:
            func.argtypes, func.restype = argtypes, restype
            return func
    raise RuntimeError(
        f"this libllama does not export {next(iter(names))}; the llama.cpp engine needs llama-cpp-python 0.3.36"
    )


_functions: dict[str, Any] = {}


def _get(name: str):
    if not _functions:
        _functions["set"] = _bind(
            ("llama_set_embeddings_layer_inp", "_Z30llama_set_embeddings_layer_inpP13llama_contextjb"),
            [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_bool],
            None,
        )
        _functions["get"] = _bind(
            ("llama_get_embeddings_layer_inp", "_Z30llama_get_embeddings_layer_inpP13llama_contextj"),
            [ctypes.c_void_p, ctypes.c_uint32],
            ctypes.POINTER(ctypes.c_float),
        )
    return _functions[name]


def set_embeddings_layer_inp(ctx, layer: int, value: bool) -> None:
    """Make the context keep the input of block `layer` for every token it decodes."""
    _get("set")(ctx, layer, value)


def get_embeddings_layer_inp(ctx, layer: int):
    """Pointer to the inputs of block `layer` from the last decode: (n_tokens, n_embd) floats."""
    return _get("get")(ctx, layer)
