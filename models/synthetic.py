"""Model directories for speed measurements, whose output matrix is zero ("perfect heads").

With the output matrix zero every logit is 0, at every position and in every head, so head
1 and heads 2..n all take the same argmax (the first id, 0): every draft agrees with head 1
and is accepted, the ceiling of speculative decoding. A dense kernel does not look at the
values it multiplies, so the zero matrix costs what a trained one of its shape does.

    random_model(cache, size)     random weights of a named size (RANDOM_SIZES), llama-style
    perfect_copy(cache, source)   a copy of a model directory with its output matrix zeroed

Each is written once into the cache folder and reused: the directory's name holds what it
was made from (the shape and seed, or the source weights' sha256), and it is built under a
temporary name and renamed when complete, so one found in place is whole. The torch model
is built once; model.safetensors and the f32 GGUFs are written from it; it is freed before
llama.cpp quantizes. The peak is about the fp32 weights (4.4 GB at 1.1B parameters).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from models.checkpoint import CONFIG_FILE, LoadedModel, load_model, save_model
from models.config import ModelConfig
from models.gguf_export import available_quants, export_from_f32, export_model, quant_dir, weights_fingerprint, write_f32
from models.tokenizer import ByteTokenizer

if TYPE_CHECKING:
    from models.transformer import MTPTransformer

# Named sizes of random models; vocabulary 32000 (Llama 2's) over the byte tokenizer (ids
# past 260 are never produced, but the embedding and output matrices have their real size).
RANDOM_SIZES: dict[str, ModelConfig] = {
    # For tests: builds and runs in well under a second.
    "tiny": ModelConfig(dim=64, n_layers=6, n_heads=4, vocab_size=512, n_future_tokens=4, max_seq_len=512),
    # GPT-2 small's width with 14 blocks (11 in the main path): 148M parameters.
    "150m": ModelConfig(dim=768, n_layers=14, n_heads=12, vocab_size=32000, multiple_of=256, n_future_tokens=4,
                        max_seq_len=2048),
    # TinyLlama's shape (22 blocks of dim 2048, 32 query / 4 key-value heads, FFN 5632): 1.1B parameters.
    "1b": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, multiple_of=256,
                      n_future_tokens=4, max_seq_len=2048),
}

_F32_SOURCE = ".f32-source"  # inside gguf/: the same file system as the exports, for hard links

Progress = Callable[[str], None]
Maker = Callable[[], "tuple[MTPTransformer, Any, dict]"]


def _silent(line: str) -> None:
    pass


def parameter_counts(config: ModelConfig) -> tuple[int, int]:
    """(every parameter, those of the main path: embeddings, trunk, head 1, norm and output)."""
    from models.checkpoint import expected_tensors

    total = main = 0
    for name, shape in expected_tensors(config).items():
        n = 1
        for d in shape:
            n *= d
        total += n
        main += 0 if name.startswith("extra_heads.") else n
    return total, main


def random_model(cache: Path, size: str, quants: Sequence[str], threads: int = 1, seed: int = 0,
                 progress: Progress = _silent) -> tuple[Path, bool]:
    """(directory, whether it was built now) of a random model of size `size` (a RANDOM_SIZES
    key) with its output matrix zero, exported at every quant."""
    config = RANDOM_SIZES[size]
    digest = hashlib.sha256(json.dumps({"model": config.to_dict(), "seed": seed}, sort_keys=True).encode()).hexdigest()
    dest = Path(cache) / f"random-{size}-{digest[:12]}"

    def make() -> tuple[MTPTransformer, Any, dict]:
        import torch

        from models.transformer import MTPTransformer

        with torch.device("meta"):
            model = MTPTransformer(config)  # no init: every parameter is drawn once, below
        model.to_empty(device="cpu")
        model.rope_cos, model.rope_sin = MTPTransformer.rope_buffers(config)
        model.reset_parameters(seed)
        provenance = {"made_by": "mtp-assistant bench-cost", "random": size, "seed": seed,
                      "output": "zero (perfect heads: every head agrees with head 1)"}
        return _zero_output(model), ByteTokenizer(), provenance

    return dest, _ensure(dest, make, quants, threads, progress)


def perfect_copy(cache: Path, source: Path, quants: Sequence[str], threads: int = 1,
                 progress: Progress = _silent) -> tuple[Path, bool]:
    """(directory, whether it was built now) of a copy of the model in `source` whose output
    matrix is zero, exported at every quant. The source directory is only read."""
    source = Path(source)
    fingerprint = weights_fingerprint(source)
    dest = Path(cache) / f"perfect-{fingerprint[:16]}"

    def make() -> tuple[MTPTransformer, Any, dict]:
        loaded = load_model(source)
        provenance = {"made_by": "mtp-assistant bench-cost", "perfect_heads_of": str(source),
                      "source_weights_sha256": fingerprint, "output": "zero (perfect heads: every head agrees with head 1)"}
        return _zero_output(loaded.model), loaded.tokenizer, provenance

    return dest, _ensure(dest, make, quants, threads, progress)


def _zero_output(model: MTPTransformer) -> MTPTransformer:
    import torch

    with torch.no_grad():
        model.output.weight.zero_()
    return model.eval()


def _ensure(dest: Path, make: Maker, quants: Sequence[str], threads: int, progress: Progress) -> bool:
    """Build dest if it is not there; add the exports it lacks. Whether it was built now."""
    built = not (dest / CONFIG_FILE).is_file()
    if built:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        try:
            _build(work, make, quants, threads, progress)
            if dest.exists():  # a directory without config.json is no cache entry: left by hand
                shutil.rmtree(dest)
            os.replace(work, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for quant in quants:
        if quant not in available_quants(dest):  # asked for after it was built: from its weights
            progress(f"exporting {dest.name} at {quant}")
            export_model(dest, quant, threads)
    return built


def _build(model_dir: Path, make: Maker, quants: Sequence[str], threads: int, progress: Progress) -> None:
    progress("making the weights")
    model, tokenizer, provenance = make()
    progress("writing model.safetensors")
    save_model(model_dir, model, tokenizer, provenance)
    progress("writing f32 GGUFs")
    f32_dir = quant_dir(model_dir, "f32").parent / _F32_SOURCE
    files = write_f32(model_dir, f32_dir, LoadedModel(model, tokenizer, model.config, provenance, model_dir))
    del model
    gc.collect()  # the torch weights go before llama.cpp maps and quantizes the f32 files
    for quant in quants:
        progress(f"quantizing to {quant}")
        export_from_f32(model_dir, quant, files, threads)
    shutil.rmtree(f32_dir)
