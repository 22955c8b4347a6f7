"""Import Meta's released multi-token-prediction checkpoints (facebook/multi-token-prediction).

A release directory holds

    params.json        dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of,
                       ffn_dim_multiplier, norm_eps, n_future_tokens, rope_theta
    consolidated.pth   fp16 state dict: tok_embeddings.weight, layers.* (trunk + head 1),
                       extra_heads.* (heads 2..n), norm.weight, output.weight
    tokenizer.model    Llama 2's SentencePiece model (32000 pieces)

(Meta's repository keeps tokenizer.model one level up, beside the 7B_* directories;
both places are searched.) Our MTPTransformer uses Meta's parameter names and counts
`n_layers` as they do (every block, heads included: 7B is 32 = 28 trunk + 4 heads, so
`layers` has 29 blocks and `extra_heads` 3), so the state dict maps one to one. The
result is an ordinary model directory: config.json + model.safetensors + tokenizer.model.

The .pth is read with `torch.load(weights_only=True, mmap=True)`: nothing is unpickled
beyond tensors, and the weights are paged in from disk rather than read into memory twice.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import ModelFileError, check_tensor, check_tensor_names, save_model
from models.config import ConfigError, ModelConfig
from models.tokenizer import SENTENCEPIECE_FILE, SentencePieceTokenizer, TokenizerError
from models.transformer import MTPTransformer

PARAMS_FILE = "params.json"
WEIGHTS_PTH = "consolidated.pth"

# params.json fields that become ModelConfig fields of the same name.
ARCH_FIELDS = (
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
    "ffn_dim_multiplier", "norm_eps", "n_future_tokens", "rope_theta",
)
# Runtime settings of Meta's generator that some params.json files carry; they do not
# change the weights (max_seq_len is used as the context length when present).
RUNTIME_FIELDS = ("max_batch_size", "max_seq_len")
# Meta's ModelArgs defaults for fields a params.json may leave out (the n=1 baselines
# have no n_future_tokens).
META_DEFAULTS = {"n_kv_heads": None, "multiple_of": 256, "ffn_dim_multiplier": None, "norm_eps": 1e-5,
                 "n_future_tokens": 1, "rope_theta": 10000.0}
# Llama 2's context length; params.json does not say what the model was trained with.
DEFAULT_MAX_SEQ_LEN = 4096
# Llama 1 checkpoints carry the RoPE table as a tensor; it is recomputed, never loaded.
IGNORED_KEYS = frozenset({"rope.freqs"})

MISSING_PARAMS = "missing; a Meta release directory has params.json, consolidated.pth and tokenizer.model"

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class MetaImportConfig:
    dtype: str = "auto"  # "auto" keeps the checkpoint's dtype (fp16 for Meta's release)
    max_seq_len: int | None = None  # None: params.json's, else DEFAULT_MAX_SEQ_LEN
    tokenizer_path: str | None = None  # None: PATH/tokenizer.model, then PATH/../tokenizer.model

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_seq_len is not None and self.max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be positive, got {self.max_seq_len}")


def find_tokenizer(source: Path, explicit: str | Path | None = None) -> Path:
    """Where the release's tokenizer.model is: the given path, PATH/, or PATH/.. (Meta's layout)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ModelFileError(path, "missing (given as the tokenizer)")
        return path
    for candidate in (source / SENTENCEPIECE_FILE, source.parent / SENTENCEPIECE_FILE):
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        source / SENTENCEPIECE_FILE,
        f"missing (also looked in {source.parent}); pass the SentencePiece model with --tokenizer",
    )


def read_params(
    source: Path, vocab_fallback: int | None, max_seq_len: int | None = None
) -> tuple[ModelConfig, dict[str, Any]]:
    """params.json -> (ModelConfig, the raw params). vocab_size -1 or absent (Llama's convention)
    means the tokenizer's."""
    path = source / PARAMS_FILE
    if not path.is_file():
        raise ModelFileError(path, MISSING_PARAMS)
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"not valid JSON ({e})") from None
    if not isinstance(params, dict):
        raise ModelFileError(path, "must hold a JSON object")
    unknown = sorted(set(params) - set(ARCH_FIELDS) - set(RUNTIME_FIELDS))
    if unknown:
        # An unknown field may change the architecture (e.g. rope scaling): refuse rather than guess.
        raise ModelFileError(path, f"unknown field(s) {', '.join(unknown)}; this importer knows {', '.join(ARCH_FIELDS)}")
    missing = [name for name in ("dim", "n_layers", "n_heads") if params.get(name) is None]
    if missing:
        raise ModelFileError(path, f"missing required field(s) {', '.join(missing)}")

    # Absent or null: Meta's default.
    fields: dict[str, Any] = {
        name: default if params.get(name) is None else params[name] for name, default in META_DEFAULTS.items()
    }
    fields.update({name: params[name] for name in ("dim", "n_layers", "n_heads")})
    vocab = params.get("vocab_size")
    fields["vocab_size"] = vocab_fallback if vocab is None or vocab == -1 else vocab
    fields["max_seq_len"] = max_seq_len or params.get("max_seq_len") or DEFAULT_MAX_SEQ_LEN
    try:
        return ModelConfig(**fields), params
    except (ConfigError, TypeError) as e:
        raise ModelFileError(path, f"does not describe a valid model: {e}") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """consolidated.pth -> {name: tensor}, memory-mapped; only tensors are ever unpickled."""
    if not path.is_file():
        raise ModelFileError(path, "missing")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files in torch's pre-1.6 format cannot be memory-mapped; read them whole.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(path, f"not a weights-only checkpoint; refused, nothing in it was run ({_refusal(e)})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ModelFileError(path, f"not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(path, "does not hold a state dict (a mapping from names to tensors)")
    return state


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _refusal(error: Exception) -> str:
    """The line of torch's weights-only refusal that names the culprit (its first lines
    advise loading the file unsafely, which we never do)."""
    for line in str(error).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return "it holds objects other than tensors"


def check_state_dict(path: Path, state: dict[str, torch.Tensor], model: MTPTransformer) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for `model`, after checking names, shapes and dtypes."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_tensor_names(path, set(state) - IGNORED_KEYS, expected, PARAMS_FILE)
    for name in sorted(expected):
        check_tensor(path, name, state[name], expected[name], PARAMS_FILE)
    return {name: state[name] for name in expected}


def import_meta_checkpoint(
    source: Path | str, out_dir: Path | str, config: MetaImportConfig = MetaImportConfig()
) -> Path:
    """Convert a Meta release directory into a model directory at out_dir (created; must not exist)."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise ModelFileError(source, "not a directory (expected Meta's layout: params.json, consolidated.pth, tokenizer.model)")
    if out_dir.exists():
        raise ModelFileError(out_dir, "already exists")
    if not (source / PARAMS_FILE).is_file():  # the surest sign of a wrong directory: say so first
        raise ModelFileError(source / PARAMS_FILE, MISSING_PARAMS)

    tokenizer_path = find_tokenizer(source, config.tokenizer_path)
    try:
        tokenizer = SentencePieceTokenizer.from_file(tokenizer_path)
    except TokenizerError as e:
        raise ModelFileError(tokenizer_path, str(e).removeprefix(f"{tokenizer_path}: ")) from None
    model_config, params = read_params(source, tokenizer.vocab_size, config.max_seq_len)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ModelFileError(
            tokenizer_path, f"has {tokenizer.vocab_size} pieces but {PARAMS_FILE} says vocab_size {model_config.vocab_size}"
        )

    pth = source / WEIGHTS_PTH
    state = load_state_dict(pth)
    with torch.device("meta"):
        model = MTPTransformer(model_config)  # shapes only; the tensors come from the checkpoint
    tensors = check_state_dict(pth, state, model)
    dtype = DTYPES.get(config.dtype) or tensors["output.weight"].dtype
    # assign=True keeps the memory-mapped tensors (no copy when the dtype is unchanged).
    model.load_state_dict({name: t.to(dtype) for name, t in tensors.items()}, assign=True)

    provenance = {
        "source": "meta-release",
        "imported_from": str(source.resolve()),
        "tokenizer_from": str(tokenizer_path.resolve()),
        "params": params,
        "dtype": str(dtype).removeprefix("torch."),
    }
    # Write next to the target and rename, so a failed import never leaves a half model.
    tmp = out_dir.with_name(f".{out_dir.name}.importing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(tmp, model, tokenizer, provenance, dtype=dtype)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

