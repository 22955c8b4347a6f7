"""Plain llama, qwen2 and qwen3 bases, read as MTP models with new heads.

A base is a GGUF file of one of those architectures (any quantization: the `gguf` package
dequantizes every type) or a Hugging Face directory of their *ForCausalLM (config.json,
*.safetensors, tokenizer.json). Either becomes an MTPTransformer whose `layers`, norm and
output are the base's own and whose `extra_heads` are new blocks, each a copy of the
base's last block: they read z (the input of that block) exactly where head 1 does, or
for qwen2 (gguf_export.FINAL_HIDDEN_ARCHS) the base's final normed hidden state, and
are unembedded with the base's norm and output matrix.

The model directory written for it (write_model_dir):

    config.json             provenance.base: the base's path, kind and sha256
    model.safetensors       the base's weights (dequantized) + the heads
    tokenizer               the base's own (see base_tokenizer)
    gguf/<quant>/main.gguf  the base GGUF itself, hard-linked or copied, never re-quantized
    gguf/<quant>/head-i.gguf  the heads, at the base's quantization (or f16), each a one-block
                            model of the base's architecture (models.gguf_export)
    gguf/<quant>/base.json  the base file's sha256, size and mtime

A base GGUF that changed after its heads were trained (the engine would pair them with
other weights) is refused by check_base_unchanged, which gguf_export.check_export calls
for every such export.

Weight layouts: llama GGUFs already rotate adjacent pairs (convert_hf_to_gguf.py permutes
q and k for that), like our blocks, so their tensors map one to one. Hugging Face
checkpoints rotate halves, so their wq and wk are permuted back here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import ModelFileError, check_tensor, save_model, write_atomic
from models.config import ConfigError, ModelConfig
from models.gguf_export import FINAL_HIDDEN_ARCHS, open_gguf
from models.tokenizer import (
    TOKENIZER_FILE,
    GGUFTokenizer,
    HFTokenizer,
    TokenizerError,
    load_tokenizer,
)
from models.transformer import MTPTransformer

SUPPORTED = "supported: llama, qwen2, qwen3 (GGUF files, and Hugging Face directories of their *ForCausalLM)"
ARCHITECTURES = ("llama", "qwen2", "qwen3")
# What the architecture's blocks add to llama's (ModelConfig flags).
_ARCH_FLAGS = {"llama": {}, "qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True}}
# llama.cpp rotates these as halves (NEOX RoPE; their GGUFs keep Hugging Face's q/k row
# order), llama as adjacent pairs, like our blocks: their q/k rows are permuted on reading.
_HALVES_ROPE = ("qwen2", "qwen3")
BASE_MARKER = "base.json"
# Context length when the base declares none, and the most a new model gets by default
# (every engine allocates its KV cache for all of max_seq_len).
DEFAULT_MAX_SEQ_LEN = 4096

# llama_ftype (general.file_type) -> the name of an export folder.
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
              12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
              32: "bf16"}

# GGUF block tensor names -> ours.
_BLOCK_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "attn_q.bias": "attention.wq.bias",
    "attn_k.bias": "attention.wk.bias",
    "attn_v.bias": "attention.wv.bias",
    "attn_q_norm.weight": "attention.q_norm.weight",
    "attn_k_norm.weight": "attention.k_norm.weight",
}
# Hugging Face Llama block tensor names -> ours.
_HF_BLOCK_NAMES = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "self_attn.q_proj.bias": "attention.wq.bias",
    "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.bias": "attention.wv.bias",
    "self_attn.q_norm.weight": "attention.q_norm.weight",
    "self_attn.k_norm.weight": "attention.k_norm.weight",
}
# Architectures people bring that the transformer does not run yet, and why.
_NOT_YET: dict[str, str] = {}


@dataclass
class Base:
    kind: str  # "gguf" or "hf"
    path: Path  # the GGUF file or the Hugging Face directory
    files: list[Path]  # what the fingerprint covers
    config: ModelConfig  # n_future_tokens 1: the base alone
    state: dict[str, torch.Tensor]  # our names
    tokenizer: Any
    quant: str | None  # the GGUF's quantization (its export folder name); None for a Hugging Face base
    context_length: int
    metadata: dict[str, Any] = field(default_factory=dict)


def sha256_files(files: list[Path]) -> str:
    """sha256 of one file, or of several (a sharded checkpoint) in the given order."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _unsupported(path: Path, arch: str) -> ModelFileError:
    why = f" ({_NOT_YET[arch]})" if arch in _NOT_YET else ""
    return ModelFileError(path, f"architecture {arch!r} is not supported{why}; {SUPPORTED}")


def ffn_settings(dim: int, hidden: int) -> dict[str, Any]:
    """multiple_of and ffn_dim_multiplier that make ModelConfig.ffn_hidden_dim equal `hidden`."""
    default = int(2 * 4 * dim / 3)
    multiplier = None if default <= hidden else hidden / default
    return {"multiple_of": hidden, "ffn_dim_multiplier": multiplier}


def _config(path: Path, fields: dict[str, Any], ffn: int, max_seq_len: int) -> ModelConfig:
    if fields.get("attn_head_dim") == fields["dim"] // fields["n_heads"]:
        fields = {**fields, "attn_head_dim": None}  # the llama default, left out of config.json
    try:
        config = ModelConfig(**fields, **ffn_settings(fields["dim"], ffn), n_future_tokens=1, max_seq_len=max_seq_len)
    except (ConfigError, TypeError) as e:
        raise ModelFileError(path, f"does not describe a model this project runs: {e}") from None
    if config.ffn_hidden_dim != ffn:
        raise ModelFileError(path, f"feed-forward size {ffn} cannot be expressed for dim {config.dim}")
    return config


# --- GGUF ---------------------------------------------------------------------------------


def _field(reader, key: str, default: Any = ...) -> Any:
    if key not in reader.fields:
        if default is ...:
            raise KeyError(key)
        return default
    return reader.fields[key].contents()


def _gguf_config(path: Path, reader, max_seq_len: int | None) -> tuple[ModelConfig, int]:
    arch = _field(reader, "general.architecture", None)
    if arch is None:
        raise ModelFileError(path, "not a model GGUF: no general.architecture key")
    if arch not in ARCHITECTURES:
        raise _unsupported(path, str(arch))
    if "rope_freqs.weight" in {t.name for t in reader.tensors} or _field(reader, f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise ModelFileError(path, "RoPE scaling (Llama 3.1 style frequency factors or linear/yarn) is not supported yet")
    try:
        dim = int(_field(reader, f"{arch}.embedding_length"))
        n_heads = int(_field(reader, f"{arch}.attention.head_count"))
        head_dim = int(_field(reader, f"{arch}.attention.key_length", dim // n_heads))
        fields = {
            "dim": dim,
            "n_layers": int(_field(reader, f"{arch}.block_count")),
            "n_heads": n_heads,
            "n_kv_heads": int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
            "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data)
            if "tokenizer.ggml.tokens" in reader.fields else int(_field(reader, f"{arch}.vocab_size")),
            "norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            "attn_head_dim": head_dim,
            **_ARCH_FLAGS[arch],
        }
        ffn = int(_field(reader, f"{arch}.feed_forward_length"))
        context = int(_field(reader, f"{arch}.context_length", DEFAULT_MAX_SEQ_LEN))
        rope_dims = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
    except KeyError as e:
        raise ModelFileError(path, f"{arch} GGUF without the {e.args[0]!r} key") from None
    if rope_dims != head_dim or int(_field(reader, f"{arch}.attention.value_length", head_dim)) != head_dim:
        raise ModelFileError(path, "RoPE over part of a head, or value heads of another size, are not supported")
    if arch == "llama" and head_dim != dim // n_heads:
        raise ModelFileError(path, "head size or RoPE dimensions other than dim / n_heads are not supported")
    return _config(path, fields, ffn, max_seq_len or min(context, DEFAULT_MAX_SEQ_LEN)), context


def _dequantized(path: Path, tensor) -> torch.Tensor:
    import gguf

    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise ModelFileError(path, f"tensor {tensor.name}: cannot dequantize {tensor.tensor_type.name} ({e})") from None
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy


def _gguf_state(path: Path, reader, config: ModelConfig) -> dict[str, torch.Tensor]:
    names = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
             "output.weight": "output.weight"}
    for i in range(config.n_layers):
        names.update({f"blk.{i}.{theirs}": f"layers.{i}.{ours}" for theirs, ours in _BLOCK_NAMES.items()})
    arch = str(_field(reader, "general.architecture"))
    state = {}
    for tensor in reader.tensors:
        if tensor.name not in names:
            raise ModelFileError(path, f"unexpected tensor {tensor.name} for a plain {arch} model")
        state[names[tensor.name]] = _dequantized(path, tensor)
    if "output.weight" not in state and "tok_embeddings.weight" in state:  # tied embeddings
        state["output.weight"] = state["tok_embeddings.weight"]
    if arch in _HALVES_ROPE:
        _to_adjacent_pairs(state, config)
    return state


def gguf_quant(path: Path, reader) -> str:
    """The export folder for a GGUF: its file type's name (f16 when it does not say)."""
    file_type = _field(reader, "general.file_type", None)
    return FILE_TYPES.get(int(file_type), f"type{int(file_type)}") if file_type is not None else "f16"


def base_tokenizer(path: Path, reader, tokenizer_from: Path | None = None):
    """The tokenizer of a GGUF base.

    GGUFs written by our own exporter hold a stand-in vocabulary (the exact bytes of every
    token, no merges), so for those the tokenizer of the model directory they were exported
    from is used (`tokenizer_from`, else the directory two levels up, as laid out by
    `models export`) once its tokens are checked to be the file's. Any other GGUF is
    tokenized by llama.cpp from its own vocabulary, exactly as llama.cpp would."""
    from models.checkpoint import read_config
    from models.gguf_export import _vocab

    candidates = [tokenizer_from] if tokenizer_from else []
    if "mtp.weights_sha256" in reader.fields:
        candidates.append(path.resolve().parent.parent.parent)
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]) for i in reader.fields["tokenizer.ggml.tokens"].data]
    for model_dir in candidates:
        try:
            config, tokenizer_config, _ = read_config(model_dir)
            tokenizer = load_tokenizer(model_dir, tokenizer_config)
        except (ModelFileError, TokenizerError) as e:
            if tokenizer_from is not None and model_dir == tokenizer_from:
                raise ModelFileError(model_dir, f"cannot serve as the tokenizer: {e}") from None
            continue
        if _vocab(tokenizer, len(tokens))[0] == tokens:
            return tokenizer, model_dir
        if model_dir == tokenizer_from:
            raise ModelFileError(model_dir, f"its tokenizer's vocabulary is not the one in {path}")
    return None, None


def kept_base_path(quant: str) -> str:
    """Where the model directory keeps a GGUF base, relative to it: the llama.cpp engine's
    main model, beside the head files. (Directories made before qwen heads had GGUFs keep
    a qwen base in base/<quant>/, out of that engine's way; they still load, in torch.)"""
    return f"gguf/{quant}/main.gguf"


def read_gguf_base(path: Path, max_seq_len: int | None = None, tokenizer_from: Path | None = None) -> Base:
    reader = open_gguf(path)
    config, context = _gguf_config(path, reader, max_seq_len)
    tokenizer, tokenizer_dir = base_tokenizer(path, reader, tokenizer_from)
    quant = gguf_quant(path, reader)
    if tokenizer is None:  # llama.cpp's own; in the model directory it reads the kept base
        try:
            tokenizer = GGUFTokenizer(path, kept_base_path(quant))
        except TokenizerError as e:
            raise ModelFileError(path, str(e).removeprefix(f"{path}: ")) from None
    state = _gguf_state(path, reader, config)
    metadata = {"architecture": str(_field(reader, "general.architecture")), "name": _field(reader, "general.name", None),
                "tokenizer": f"from {tokenizer_dir}" if tokenizer_dir else "the GGUF's own, through llama.cpp"}
    base = Base("gguf", path, [path], config, state, tokenizer, quant, context, metadata)
    check_state(base)
    return base


# --- Hugging Face -------------------------------------------------------------------------


def _unpermute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face's rotate-halves q/k rows back to adjacent pairs (the inverse of the
    permutation in transformers' convert_llama_weights_to_hf.py)."""
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Adjacent pairs -> Hugging Face's rotate-halves layout (for writing test checkpoints)."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _to_adjacent_pairs(state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """q/k (weights, biases, per-head norms) from rotate-halves order to adjacent pairs, in
    place: RMSNorm over a head does not depend on the order of its entries, and RoPE then
    pairs the same two values the original pairs."""
    for i in range(config.n_layers):
        for key, heads in (("wq", config.n_heads), ("wk", config.kv_heads)):
            for kind in ("weight", "bias"):
                name = f"layers.{i}.attention.{key}.{kind}"
                if name in state and state[name].shape[0] % (2 * heads) == 0:
                    t = state[name]
                    state[name] = _unpermute(t.view(t.shape[0], -1), heads).view(t.shape)
        for key in ("q_norm", "k_norm"):
            name = f"layers.{i}.attention.{key}.weight"
            if name in state and state[name].shape[0] % 2 == 0:
                state[name] = _unpermute(state[name].view(-1, 1), 1).view(-1)


def _hf_config(source: Path, max_seq_len: int | None) -> tuple[ModelConfig, int, dict[str, Any]]:
    path = source / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(path, "missing; a Hugging Face model directory has config.json, *.safetensors and tokenizer.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ModelFileError(path, "must hold a JSON object")
    arch = str(hf.get("model_type") or (hf.get("architectures") or ["?"])[0])
    if arch not in ARCHITECTURES:
        raise _unsupported(path, arch)
    if hf.get("rope_scaling"):
        raise ModelFileError(path, f"RoPE scaling {hf['rope_scaling'].get('rope_type') or hf['rope_scaling'].get('type')!r} is not supported yet")
    if (hf.get("attention_bias") and arch != "qwen2") or hf.get("mlp_bias"):
        raise ModelFileError(path, "attention or MLP biases are not supported")
    if hf.get("use_sliding_window"):
        raise ModelFileError(path, "sliding-window attention is not supported")
    try:
        dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        fields = {"dim": dim, "n_layers": int(hf["num_hidden_layers"]), "n_heads": n_heads,
                  "n_kv_heads": int(hf.get("num_key_value_heads") or n_heads), "vocab_size": int(hf["vocab_size"]),
                  "norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "rope_theta": float(hf.get("rope_theta", 10000.0)),
                  "attn_head_dim": int(hf.get("head_dim") or dim // n_heads), **_ARCH_FLAGS[arch]}
        ffn = int(hf["intermediate_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(path, f"missing or bad field {e}") from None
    if arch == "llama" and hf.get("head_dim") not in (None, dim // n_heads):
        raise ModelFileError(path, f"head_dim {hf['head_dim']} other than hidden_size / num_attention_heads is not supported")
    context = int(hf.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LEN)
    return _config(path, fields, ffn, max_seq_len or min(context, DEFAULT_MAX_SEQ_LEN)), context, hf


def _hf_state(source: Path, files: list[Path], config: ModelConfig, tied: bool) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    names = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(config.n_layers):
        names.update({f"model.layers.{i}.{theirs}": f"layers.{i}.{ours}" for theirs, ours in _HF_BLOCK_NAMES.items()})
    state = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if name.endswith("rotary_emb.inv_freq"):
                        continue  # recomputed, never loaded
                    if name not in names:
                        raise ModelFileError(path, f"unexpected tensor {name} for this architecture")
                    state[names[name]] = f.get_tensor(name).float()
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelFileError(path, f"not a readable safetensors file ({e})") from None
    _to_adjacent_pairs(state, config)
    if "output.weight" not in state and "tok_embeddings.weight" in state and tied:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


def _hf_token_id(hf: dict[str, Any], key: str) -> int | None:
    value = hf.get(key)
    if isinstance(value, list):  # Llama 3.1 lists several end tokens; the first is end-of-text
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def read_hf_base(source: Path, max_seq_len: int | None = None) -> Base:
    config, context, hf = _hf_config(source, max_seq_len)
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise ModelFileError(source, "no *.safetensors weights (only safetensors are read; nothing is unpickled)")
    eot = _hf_token_id(hf, "eos_token_id")
    if eot is None:
        raise ModelFileError(source / "config.json", "no eos_token_id")
    try:
        tokenizer = HFTokenizer.from_file(source / TOKENIZER_FILE, eot, _hf_token_id(hf, "bos_token_id"))
    except TokenizerError as e:
        raise ModelFileError(source / TOKENIZER_FILE, str(e).removeprefix(f"{source / TOKENIZER_FILE}: ")) from None
    state = _hf_state(source, files, config, bool(hf.get("tie_word_embeddings", False)))
    metadata = {"architecture": str(hf["model_type"]), "name": hf.get("_name_or_path") or source.name,
                "tokenizer": TOKENIZER_FILE}
    base = Base("hf", source, [*files, source / "config.json"], config, state, tokenizer, None, context, metadata)
    check_state(base)
    return base


# --- either --------------------------------------------------------------------------------


def read_base(path: Path | str, max_seq_len: int | None = None, tokenizer_from: Path | str | None = None) -> Base:
    """A GGUF file or a Hugging Face directory, checked and dequantized to float32."""
    path = Path(path)
    if path.is_dir():
        return read_hf_base(path, max_seq_len)
    if not path.exists():
        raise ModelFileError(path, "does not exist (expected a .gguf file or a Hugging Face model directory)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFileError(path, "not a GGUF file (no GGUF magic) nor a Hugging Face model directory")
    return read_gguf_base(path, max_seq_len, Path(tokenizer_from) if tokenizer_from else None)


def describe_hf_config(directory: Path | str) -> dict[str, Any]:
    """describe_base from a Hugging Face directory's config.json alone (the weights may not
    be there yet: a download checks the architecture before fetching them)."""
    config, context, hf = _hf_config(Path(directory), None)
    return {"kind": "hf", "architecture": str(hf.get("model_type")), "quant": None, "dim": config.dim,
            "blocks": config.n_layers, "vocab": config.vocab_size, "context_length": context}


def describe_base(path: Path | str) -> dict[str, Any]:
    """What a base is, from its header or config.json alone (no weights read): the check a
    download gets before any heads are trained. ModelFileError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        info = describe_hf_config(path)
        if not any(path.glob("*.safetensors")):
            raise ModelFileError(path, "no *.safetensors weights (only safetensors are read; nothing is unpickled)")
        if not (path / TOKENIZER_FILE).is_file():
            raise ModelFileError(path / TOKENIZER_FILE, "missing; a Hugging Face base needs its tokenizer.json")
        return info
    if not path.is_file():
        raise ModelFileError(path, "does not exist (expected a .gguf file or a Hugging Face model directory)")
    reader = open_gguf(path)
    config, context = _gguf_config(path, reader, None)
    return {"kind": "gguf", "architecture": str(_field(reader, "general.architecture")),
            "quant": gguf_quant(path, reader), "dim": config.dim, "blocks": config.n_layers,
            "vocab": config.vocab_size, "context_length": context}


def check_state(base: Base) -> None:
    """Every tensor of the base present, at its shape, finite; ModelFileError naming the file."""
    from models.checkpoint import check_tensor_names, expected_tensors

    expected = expected_tensors(base.config)
    check_tensor_names(base.path, set(base.state), expected, f"its {base.config.n_layers}-block llama config")
    for name, shape in expected.items():
        check_tensor(base.path, name, base.state[name], shape, "its config")
    if base.tokenizer is not None and base.tokenizer.vocab_size > base.config.vocab_size:
        raise ModelFileError(base.path, f"tokenizer has {base.tokenizer.vocab_size} tokens, the model {base.config.vocab_size}")


def mtp_config(base: Base, new_heads: int) -> ModelConfig:
    """The config of the base with `new_heads` more heads (each one more block)."""
    if new_heads < 1:
        raise ValueError(f"add at least one head, got {new_heads}")
    return base.config.replace(n_layers=base.config.n_layers + new_heads, n_future_tokens=1 + new_heads)


def build_model(base: Base, new_heads: int, dtype: torch.dtype = torch.float32,
                heads_read_final: bool | None = None) -> MTPTransformer:
    """The base as `layers` + norm + output, and new heads copied from its last block.
    heads_read_final (default: by architecture, FINAL_HIDDEN_ARCHS): the new heads read
    the base's final normed hidden state rather than the input of its last block."""
    if heads_read_final is None:
        heads_read_final = base.metadata.get("architecture") in FINAL_HIDDEN_ARCHS
    config = mtp_config(base, new_heads).replace(heads_read_final=heads_read_final)
    with torch.device("meta"):
        model = MTPTransformer(config)
    state = {name: t.to(dtype) for name, t in base.state.items()}
    last = config.n_trunk_layers  # index of the base's last block in `layers`
    for head in range(new_heads):
        for name, tensor in base.state.items():
            if name.startswith(f"layers.{last}."):
                state[f"extra_heads.{head}." + name.removeprefix(f"layers.{last}.")] = tensor.to(dtype).clone()
    model.load_state_dict(state, assign=True)
    if model.output.weight is model.tok_embeddings.weight or \
            model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr():
        model.output.weight = torch.nn.Parameter(model.output.weight.detach().clone())  # saved as two tensors
    model.rope_cos, model.rope_sin = MTPTransformer.rope_buffers(config)
    return model.eval()


# --- the model directory -------------------------------------------------------------------


def base_provenance(base: Base, fingerprint: str) -> dict[str, Any]:
    return {"kind": base.kind, "path": str(base.path.resolve()), "sha256": fingerprint,
            "quant": base.quant, "context_length": base.context_length, **base.metadata}


def _place(src: Path, dst: Path) -> str:
    """Hard-link src at dst (same file system), else copy it: never a converted file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The file itself: link(2) would link a symlink (the hub cache's snapshots are relative
        # symlinks to blobs), and that link would dangle in its new folder.
        os.link(src.resolve(), dst)
        return "hard link"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy"


def write_model_dir(base: Base, model: MTPTransformer, out_dir: Path | str, provenance: dict[str, Any],
                    fingerprint: str | None = None) -> Path:
    """Write the model directory (see the module docstring); out_dir must not exist yet."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ModelFileError(out_dir, "already exists")
    fingerprint = fingerprint or sha256_files(base.files)
    tmp = out_dir.with_name(f".{out_dir.name}.writing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = base.tokenizer
        quant = base.quant
        if base.kind == "gguf":
            main = tmp / kept_base_path(quant)
            how = _place(base.path, main)
            stat = main.stat()
            marker = {"base": str(base.path.resolve()), "sha256": fingerprint, "size": stat.st_size,
                      "mtime_ns": stat.st_mtime_ns, "placed_by": how}
            write_atomic(main.parent / BASE_MARKER, (json.dumps(marker, indent=2) + "\n").encode())
        dtype = torch.bfloat16 if model.num_parameters() > 1_000_000_000 else torch.float32
        save_model(tmp, model, tokenizer, {**provenance, "base": base_provenance(base, fingerprint)}, dtype=dtype)
        if base.kind == "gguf":
            write_head_ggufs(tmp, model, tokenizer, quant, fingerprint)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def heads_quant(quant: str) -> str:
    """The quantization of the head files: the base's where llama.cpp's quantizer writes it, else f16."""
    from models.gguf_export import _FTYPES

    return quant if quant in _FTYPES else "f16"


def write_head_ggufs(model_dir: Path, model: MTPTransformer, tokenizer, quant: str, fingerprint: str) -> list[Path]:
    """head-2.gguf .. head-n.gguf beside the base's main.gguf, with gguf_export's head writer;
    their mtp.weights_sha256 is the base's sha256, which ties them to it."""
    from models.gguf_export import _write_gguf, head_file, head_tensors, quantize_file, quiet_llama_logs

    folder = Path(model_dir) / "gguf" / quant
    config = model.config
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    files = []
    with tempfile.TemporaryDirectory(dir=folder) as work:
        for h in range(2, config.n_future_tokens + 1):
            tensors = head_tensors(state, config, h)
            f32 = Path(work) / head_file(h)
            _write_gguf(f32, config, tokenizer, tensors, 1, h, fingerprint, f"{model_dir.name} head {h}")
            target = folder / head_file(h)
            if heads_quant(quant) == "f32":
                shutil.move(f32, target)
            else:
                quiet_llama_logs()
                quantize_file(f32, target, heads_quant(quant))
            files.append(target)
    return files


def check_base_unchanged(model_dir: Path | str, main: Path) -> dict[str, Any] | None:
    """For an export whose main.gguf is a base (a base.json beside it): raise ModelFileError
    naming main.gguf if the file is not the one the heads were trained for. Returns the
    marker, or None for an ordinary export. A file whose size and mtime are as recorded is
    taken as unchanged (hashing a multi-GB base at every start would cost seconds); any
    other is hashed in full."""
    marker_path = Path(main).parent / BASE_MARKER
    if not marker_path.is_file():
        return None
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        expected = str(marker["sha256"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelFileError(marker_path, f"unreadable ({e}); add the heads again") from None
    if not Path(main).is_file():
        raise ModelFileError(main, f"missing (the base {marker.get('base')} the heads were trained for)")
    stat = Path(main).stat()
    if (stat.st_size, stat.st_mtime_ns) != (marker.get("size"), marker.get("mtime_ns")):
        actual = sha256_files([Path(main)])
        if actual != expected:
            raise ModelFileError(
                main, f"the base changed after its heads were trained (sha256 {actual[:12]}..., heads trained for "
                      f"{expected[:12]}...): add heads to it again with `mtp-assistant models add-heads`")
    return marker


def read_base_gguf_info(path: Path) -> dict[str, Any]:
    """The shape of a base main.gguf, for checking it against config.json."""
    reader = open_gguf(path)
    config, context = _gguf_config(path, reader, 1)
    return {"arch": str(_field(reader, "general.architecture")), "dim": config.dim, "blocks": config.n_layers,
            "n_heads": config.n_heads, "n_kv_heads": config.kv_heads, "vocab": config.vocab_size,
            "context_length": context}


def check_base_export(model_dir: Path | str, files: list[Path], config: ModelConfig) -> list[Path]:
    """check_export for an export whose main.gguf is a base: the base unchanged and of the
    shape config.json says, each head file of this model and trained for this base."""
    from models.gguf_export import gguf_arch, read_info

    marker = check_base_unchanged(model_dir, files[0])
    main = read_base_gguf_info(files[0])
    expected = {"arch": gguf_arch(config), "dim": config.dim, "blocks": config.n_trunk_layers + 1, "n_heads": config.n_heads,
                "n_kv_heads": config.kv_heads, "vocab": config.vocab_size}
    for key, value in expected.items():
        if main[key] != value:
            raise ModelFileError(files[0], f"{key} is {main[key]}, config.json implies {value}")
    if config.max_seq_len > main["context_length"]:
        raise ModelFileError(files[0], f"context of {main['context_length']} positions, config.json says max_seq_len "
                                       f"{config.max_seq_len}")
    for h, path in enumerate(files[1:], start=2):
        info = read_info(path)
        checks = {"arch": main["arch"], "head": h, "dim": config.dim, "blocks": 1, "n_future": config.n_future_tokens,
                  "fingerprint": marker["sha256"], "n_heads": config.n_heads, "n_kv_heads": config.kv_heads}
        for key, value in checks.items():
            if getattr(info, key) != value:
                raise ModelFileError(path, f"does not belong to the base {files[0].name}: {key} is "
                                           f"{getattr(info, key)!r}, expected {value!r}")
    return files

