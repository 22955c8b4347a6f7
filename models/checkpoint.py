"""A model on disk: a directory with config.json, model.safetensors (+ tokenizer.json for
BPE, tokenizer.model for SentencePiece).

config.json:
    {"format": "mtp-assistant/1",
     "model": {...ModelConfig...},
     "tokenizer": {"kind": "byte" | "bpe" | "sentencepiece", "vocab_size": ..., "special_tokens": {...}},
     "provenance": {...how it was made: free-form, for the model card...}}

Weights are safetensors only: nothing here ever unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from models.config import ConfigError, ModelConfig, format_bytes
from models.tokenizer import TokenizerError, load_tokenizer

# torch is imported where weights are touched: reading a config (every CLI command, the
# model list) must not pay torch's ~2 s import.
if TYPE_CHECKING:
    import torch

    from models.transformer import MTPTransformer

FORMAT = "mtp-assistant/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFileError(Exception):
    """A model directory that cannot be loaded; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class LoadedModel:
    model: MTPTransformer
    tokenizer: Any  # models.tokenizer.Tokenizer
    config: ModelConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(
    model_dir: Path | str,
    model: MTPTransformer,
    tokenizer: Any,
    provenance: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write config.json, model.safetensors and the tokenizer's files into model_dir."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu", dtype or t.dtype).contiguous() for name, t in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{WEIGHTS_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": FORMAT})
        os.replace(tmp, model_dir / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    tokenizer.save(model_dir)
    config = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "tokenizer": tokenizer.to_config(),
        "provenance": provenance or {},
    }
    write_atomic(model_dir / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return model_dir


def read_config(model_dir: Path | str) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
    """Parse and validate config.json: (model config, tokenizer section, provenance)."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelFileError(model_dir, "model directory does not exist")
    if not model_dir.is_dir():
        raise ModelFileError(model_dir, "not a directory (a model is a directory with config.json and model.safetensors)")
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(path, "missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFileError(path, "must hold a JSON object")
    if data.get("format") != FORMAT:
        raise ModelFileError(path, f"unknown format {data.get('format')!r}, expected {FORMAT!r}")
    for section in ("model", "tokenizer"):
        if not isinstance(data.get(section), dict):
            raise ModelFileError(path, f"missing the {section!r} section")
    try:
        config = ModelConfig.from_dict(data["model"])
    except (ConfigError, TypeError) as e:
        raise ModelFileError(path, f"bad model config: {e}") from None
    provenance = data.get("provenance") or {}
    return config, data["tokenizer"], provenance


# The share of the available memory a context may take: the weights, the tokenizer and
# the editor need the rest.
MEMORY_SHARE = 0.5


def available_memory() -> int:
    """Bytes this process could still allocate: MemAvailable, or what the cgroup (a
    container's limit) leaves, whichever is less; physical memory where neither is known."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            candidates.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return 1 << 62  # unknown: nothing to check against
    return min(candidates)


def context_bytes(config: ModelConfig, n_ctx: int, kv_bytes: int) -> int:
    """What an engine allocates for a context of n_ctx positions: the keys and values of
    every block, and per position the RoPE tables (built in float64) and the rows of
    hidden state the engines keep (z, the heads' input batches)."""
    per_position = config.head_dim * 16 + config.n_future_tokens * config.dim * 4
    return config.kv_cache_bytes(n_ctx, kv_bytes) + per_position * n_ctx


def check_context_memory(model_dir: Path | str, config: ModelConfig, n_ctx: int, kv_bytes: int) -> None:
    """Raise, naming config.json, unless a context of n_ctx positions fits in memory. Checked
    before anything is allocated: a context too large for the machine does not fail, it
    grows until the kernel kills the process."""
    needed = context_bytes(config, n_ctx, kv_bytes)
    available = available_memory()
    if needed > MEMORY_SHARE * available:
        raise ModelFileError(
            Path(model_dir) / CONFIG_FILE,
            f"max_seq_len {config.max_seq_len}: a context of {n_ctx} positions needs {format_bytes(needed)} "
            f"(KV cache {format_bytes(config.kv_cache_bytes(n_ctx, kv_bytes))}), more than "
            f"{MEMORY_SHARE:.0%} of the {format_bytes(available)} available: lower max_seq_len",
        )


def check_tensor_names(path: Path, names: set[str], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise, naming the file, unless `names` are exactly the tensors `source` implies."""
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
        raise ModelFileError(path, f"does not match {source}: " + "; ".join(parts))


def check_tensor(path: Path, name: str, tensor: torch.Tensor, shape: tuple[int, ...], source: str) -> None:
    """Raise, naming the file, unless the tensor has the shape `source` implies and a float dtype."""
    if tuple(tensor.shape) != shape:
        raise ModelFileError(path, f"tensor {name} has shape {tuple(tensor.shape)}, {source} implies {shape}")
    if not tensor.is_floating_point():
        raise ModelFileError(path, f"tensor {name} has non-float dtype {tensor.dtype}")
    import torch

    finite = torch.isfinite(tensor)
    if not finite.all():
        # Such weights load and run, and every completion comes out empty or garbage.
        bad = tensor.numel() - int(finite.sum())
        raise ModelFileError(path, f"tensor {name} holds {bad} non-finite values (NaN or inf): the weights are broken")


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in the model.safetensors of a model with this config."""
    import torch

    from models.transformer import MTPTransformer

    with torch.device("meta"):
        model = MTPTransformer(config.replace(max_seq_len=1))  # shapes only; no RoPE tables
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_weights_header(model_dir: Path | str, config: ModelConfig) -> Path:
    """model.safetensors checked without reading its tensors: it exists, its header parses,
    names every tensor config.json implies at its shape, and the file holds all their data.
    For engines that run other files (the GGUF export) but must not serve from a model
    directory whose weights are gone or damaged."""
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelFileError(path, "missing (the model's weights; the GGUF export is made from them)")
    expected = expected_tensors(config)
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            check_tensor_names(path, names, expected, CONFIG_FILE)
            for name in sorted(names):
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected[name]:
                    implied = expected[name]
                    raise ModelFileError(path, f"tensor {name} has shape {shape}, {CONFIG_FILE} implies {implied}")
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(path, f"not a readable safetensors file ({e})") from None
    return path


def _read_weights(path: Path, model: MTPTransformer) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(path, "missing")
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            check_tensor_names(path, names, expected, CONFIG_FILE)
            tensors = {}
            for name in sorted(names):
                tensor = f.get_tensor(name)
                check_tensor(path, name, tensor, expected[name], CONFIG_FILE)
                tensors[name] = tensor
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(path, f"not a readable safetensors file ({e})") from None
    return tensors


def load_model(
    model_dir: Path | str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,  # None: float32
) -> LoadedModel:
    import torch

    from models.transformer import MTPTransformer

    dtype = dtype or torch.float32
    model_dir = Path(model_dir)
    config, tokenizer_config, provenance = read_config(model_dir)
    try:
        tokenizer = load_tokenizer(model_dir, tokenizer_config)
    except TokenizerError as e:
        raise ModelFileError(model_dir, str(e)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelFileError(
            model_dir / CONFIG_FILE,
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}",
        )
    # The RoPE tables are built for every position, and an engine's KV cache follows.
    check_context_memory(model_dir, config, config.max_seq_len, torch.finfo(dtype).bits // 8)
    with torch.device("meta"):
        model = MTPTransformer(config)  # shapes only; real tensors come from the file
    tensors = _read_weights(model_dir / WEIGHTS_FILE, model)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, assign=True)
    # Buffers (RoPE tables) are not saved: rebuild them on the real device.
    model.rope_cos, model.rope_sin = MTPTransformer.rope_buffers(config)
    model = model.to(device=device)
    model.eval()
    return LoadedModel(model, tokenizer, config, provenance, model_dir)
