"""Export a model directory to the GGUF files the llama.cpp engine runs.

Layout, inside the model directory:

    gguf/<quant>/main.gguf      layers + norm + output: a plain model of the architecture
    gguf/<quant>/head-2.gguf    head 2: one block of the same architecture, fed what the
    ...                         heads read (z) as input embeddings, with the shared final
    gguf/<quant>/head-n.gguf    norm and output (tied as token_embd)

The architecture (gguf_arch) follows the config: llama; qwen2 where the blocks have q/k/v
biases; qwen3 where they have per-head q/k norms. A head file declares the same one, so
llama.cpp builds for it exactly the block it builds for the main model.

quant is one of f32, f16, q8_0, q4_k_m. The f32 files are written directly from the
safetensors weights; the others come from them through llama.cpp's own quantizer
(`llama_model_quantize`), which keeps 1-d tensors (norms) in f32 and falls back per
tensor to a block format that fits where a row is not a multiple of 256 (k-quants).

RoPE: our blocks rotate adjacent pairs (x[2i], x[2i+1]), Meta's convention, which is what
llama.cpp's LLAMA architecture does (GGML_ROPE_TYPE_NORM), so wq and wk are written as
they are. (convert_hf_to_gguf.py permutes them only because Hugging Face checkpoints
rotate halves.) llama.cpp's qwen2 and qwen3 rotate halves (GGML_ROPE_TYPE_NEOX), so for
those the q/k rows (weights, biases, per-head norms) are written in rotate-halves order.

Tokenizer: the engine tokenizes in Python and feeds ids, so the GGUF vocabulary only has
to be one llama.cpp accepts, with the model's vocab size. A SentencePiece model (Meta's)
is written as its own llama-SPM vocabulary (pieces, scores, types). For our byte and BPE
tokenizers it is an SPM-style ("llama") list in which single-byte tokens are llama.cpp
byte tokens <0xXX>, the specials are control tokens and every other token is its bytes
in GPT-2's printable byte alphabet (unique strings; llama.cpp's own detokenizer is not
used).

Every file carries mtp.* keys (head index, number of heads, a fingerprint of the source
weights) so the engine can tell a head that belongs to another model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, LoadedModel, ModelFileError, load_model

if TYPE_CHECKING:  # imported where tensors are written: listing exports must not pay for torch
    import torch
from models.config import ModelConfig
from models.tokenizer import _BYTE_TO_SYMBOL

GGUF_DIR = "gguf"
QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
MAIN_FILE = "main.gguf"

# llama_ftype values (llama.h), for llama_model_quantize.
_FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15}

# llama_token_type values (llama.h).
_TOKEN_NORMAL, _TOKEN_UNUSED, _TOKEN_CONTROL, _TOKEN_BYTE = 1, 5, 3, 6


def head_file(head: int) -> str:
    """The file of head `head` (2..n; head 1 lives in main.gguf)."""
    return f"head-{head}.gguf"


def quant_dir(model_dir: Path | str, quant: str) -> Path:
    return Path(model_dir) / GGUF_DIR / quant


def export_files(model_dir: Path | str, quant: str, n_future: int) -> list[Path]:
    """Every file an export at `quant` consists of, main first."""
    folder = quant_dir(model_dir, quant)
    return [folder / MAIN_FILE, *(folder / head_file(h) for h in range(2, n_future + 1))]


def weights_fingerprint(model_dir: Path | str) -> str:
    """sha256 of model.safetensors: ties every GGUF of an export to the weights it came from."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportResult:
    quant: str
    files: list[Path]
    tensor_types: dict[str, dict[str, str]]  # file name -> tensor name -> GGML type


# --- writing f32 GGUFs -------------------------------------------------------------------


_SPM_TYPES = {"normal": _TOKEN_NORMAL, "unknown": 2, "control": _TOKEN_CONTROL, "unused": _TOKEN_UNUSED, "byte": _TOKEN_BYTE}


def _vocab(tokenizer, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Token texts, scores and llama token types for llama.cpp, exactly vocab_size of them.

    A SentencePiece tokenizer (Meta's models) is written as what it is, a llama-SPM
    vocabulary; byte and BPE tokenizers get the stand-in described in the module docstring."""
    if hasattr(tokenizer, "pieces"):
        pieces = tokenizer.pieces()
        texts = [p.encode() for p, _, _ in pieces]
        scores = [float(score) for _, score, _ in pieces]
        types = [_SPM_TYPES[kind] for _, _, kind in pieces]
        for i in range(len(pieces), vocab_size):
            texts.append(f"<unused_{i}>".encode()), scores.append(0.0), types.append(_TOKEN_UNUSED)
        return texts, scores, types
    texts, types = [], []
    seen: set[bytes] = set()
    for i in range(vocab_size):
        if i >= tokenizer.vocab_size:  # the model's embedding may be larger than the tokenizer
            text, kind = f"<unused_{i}>".encode(), _TOKEN_UNUSED
        elif i in tokenizer.special_ids:
            text, kind = tokenizer.token_bytes(i), _TOKEN_CONTROL
        else:
            raw = tokenizer.token_bytes(i)
            if len(raw) == 1:
                text, kind = f"<0x{raw[0]:02X}>".encode(), _TOKEN_BYTE
            else:
                text, kind = "".join(_BYTE_TO_SYMBOL[b] for b in raw).encode(), _TOKEN_NORMAL
        if text in seen:  # llama.cpp maps text -> id; keep every text unique
            text = f"<dup_{i}>".encode()
        seen.add(text)
        texts.append(text)
        types.append(kind)
    return texts, [0.0] * len(texts), types


ARCHITECTURES = ("llama", "qwen2", "qwen3")
# Architectures whose llama.cpp graph does not fill the block-input capture
# (llama_set_embeddings_layer_inp aborts the process on them): the heads of such a model
# read the final normed hidden state instead (ModelConfig.heads_read_final), which
# llama.cpp gives as its embeddings (t_embd, "result_norm") with pooling none.
FINAL_HIDDEN_ARCHS = ("qwen2",)
# llama.cpp rotates these as halves (NEOX RoPE): their q/k rows are written in that order.
HALVES_ROPE_ARCHS = ("qwen2", "qwen3")


def gguf_arch(config: ModelConfig) -> str:
    """The llama.cpp architecture whose block is ours for this config."""
    if config.qkv_bias and config.qk_norm:
        raise ValueError("no llama.cpp architecture has both q/k/v biases and q/k norms")
    return "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"


_BLOCK_NAMES = {
    "attention_norm.weight": "attn_norm.weight",
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "attention.wq.bias": "attn_q.bias",
    "attention.wk.bias": "attn_k.bias",
    "attention.wv.bias": "attn_v.bias",
    "attention.q_norm.weight": "attn_q_norm.weight",
    "attention.k_norm.weight": "attn_k_norm.weight",
}


def to_rotate_halves(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows (per head) from adjacent-pair order to rotate-halves order: weights (rows, cols),
    biases (rows,) and per-head norms (head_dim,) with n_heads 1."""
    rows = tensor.shape[0]
    flat = tensor.reshape(rows, -1)
    return flat.view(n_heads, rows // n_heads // 2, 2, -1).transpose(1, 2).reshape(tensor.shape)


def _block_tensors(prefix: str, state: dict[str, torch.Tensor], block: int,
                   config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our block `prefix` (e.g. "layers.3") as llama.cpp's blk.<block>.* tensors of
    gguf_arch(config), q/k rows in that architecture's RoPE order."""
    halves = gguf_arch(config) in HALVES_ROPE_ARCHS
    heads = {"wq": config.n_heads, "wk": config.kv_heads, "q_norm": 1, "k_norm": 1}
    tensors = {}
    for ours, theirs in _BLOCK_NAMES.items():
        name = f"{prefix}.{ours}"
        if name not in state:
            continue  # a bias or norm this architecture has not
        tensor, key = state[name], ours.split(".")[-2]
        if halves and key in heads:
            tensor = to_rotate_halves(tensor, heads[key])
        tensors[f"blk.{block}.{theirs}"] = tensor
    return tensors


def head_tensors(state: dict[str, torch.Tensor], config: ModelConfig, head: int) -> dict[str, torch.Tensor]:
    """Head `head` (2..n) as a one-block model's tensors."""
    # z goes in as input embeddings, so token_embd is never looked up: it stands in as the
    # tied output matrix (llama, qwen2 and qwen3 use token_embd where output.weight is absent).
    tensors = {"token_embd.weight": state["output.weight"]}
    tensors.update(_block_tensors(f"extra_heads.{head - 2}", state, 0, config))
    tensors["output_norm.weight"] = state["norm.weight"]
    return tensors


def _write_gguf(
    path: Path,
    config: ModelConfig,
    tokenizer,
    tensors: dict[str, torch.Tensor],
    n_blocks: int,
    head: int,
    fingerprint: str,
    name: str,
) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), gguf_arch(config))
    writer.add_name(name)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(n_blocks)
    writer.add_feed_forward_length(config.ffn_hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.dim // config.n_heads:  # Qwen3's: llama.cpp's default is dim / n_heads
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(0)  # all f32
    texts, scores, types = _vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(texts)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    bos = getattr(tokenizer, "bos_id", None)  # the engine adds it itself, as the torch engine's callers do
    writer.add_bos_token_id(tokenizer.eot_id if bos is None else bos)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_uint32("mtp.head", head)
    writer.add_uint32("mtp.n_future", config.n_future_tokens)
    writer.add_uint32("mtp.n_trunk_layers", config.n_trunk_layers)
    writer.add_string("mtp.weights_sha256", fingerprint)
    for tensor_name, tensor in tensors.items():
        writer.add_tensor(tensor_name, tensor.detach().float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_f32(model_dir: Path | str, out_dir: Path, loaded: LoadedModel | None = None) -> list[Path]:
    """The main model and every extra head as f32 GGUFs in out_dir. loaded: model_dir's model
    when the caller already holds it (loading a 1B model again would take another 4.4 GB)."""
    model_dir = Path(model_dir)
    loaded = loaded or load_model(model_dir)
    config, tokenizer = loaded.config, loaded.tokenizer
    state = {k: v.detach().float() for k, v in loaded.model.state_dict().items()}
    fingerprint = weights_fingerprint(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_main = config.n_trunk_layers + 1
    main = {"token_embd.weight": state["tok_embeddings.weight"]}
    for i in range(n_main):
        main.update(_block_tensors(f"layers.{i}", state, i, config))
    main["output_norm.weight"] = state["norm.weight"]
    main["output.weight"] = state["output.weight"]
    files = [out_dir / MAIN_FILE]
    _write_gguf(files[0], config, tokenizer, main, n_main, 1, fingerprint, f"{model_dir.name} main")
    for h in range(2, config.n_future_tokens + 1):
        tensors = head_tensors(state, config, h)
        files.append(out_dir / head_file(h))
        _write_gguf(files[-1], config, tokenizer, tensors, 1, h, fingerprint, f"{model_dir.name} head {h}")
    return files


# --- quantizing with llama.cpp -------------------------------------------------------------


def quantize_file(src: Path, dst: Path, quant: str, threads: int = 1) -> None:
    """llama.cpp's quantizer, src (f32 GGUF) -> dst at `quant`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[quant]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if status != 0:
        raise ModelFileError(src, f"llama.cpp could not quantize it to {quant} (status {status})")


def tensor_types(path: Path) -> dict[str, str]:
    """Each tensor's GGML type in a GGUF file (what the quantizer chose)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def export_model(model_dir: Path | str, quant: str, threads: int = 1) -> ExportResult:
    """Write gguf/<quant>/ for the model in model_dir; replaces an earlier export atomically."""
    _check_quant(quant)
    model_dir = Path(model_dir)
    parent = quant_dir(model_dir, quant).parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=parent, prefix=".f32."))
    try:
        return export_from_f32(model_dir, quant, write_f32(model_dir, work / "f32"), threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_from_f32(model_dir: Path | str, quant: str, f32_files: list[Path], threads: int = 1) -> ExportResult:
    """Write gguf/<quant>/ from f32 GGUFs of the model in model_dir (write_f32's files, left
    as they are), replacing an earlier export atomically. Lets one f32 conversion serve
    several quantizations, with the weights out of memory while llama.cpp quantizes."""
    _check_quant(quant)
    model_dir = Path(model_dir)
    target = quant_dir(model_dir, quant)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{quant}."))
    try:
        staged = work / quant
        staged.mkdir()
        for src in f32_files:
            if quant == "f32":
                _link_or_copy(src, staged / src.name)
            else:
                quiet_llama_logs()
                quantize_file(src, staged / src.name, quant, threads)
        types = {p.name: tensor_types(p) for p in sorted(staged.iterdir())}
        (staged / "export.json").write_text(json.dumps({"quant": quant, "tensor_types": types}, indent=2) + "\n")
        if target.exists():
            os.replace(target, work / "old")
        os.replace(staged, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(quant, export_files(model_dir, quant, len(types)), types)


def _check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; choose from {', '.join(QUANTS)}")


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where src and dst share a file system (an f32 export of a 1B model is 4.4 GB)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


_LOG_CALLBACK = None


def quiet_llama_logs() -> None:
    """llama.cpp prints every tensor it quantizes and loads; keep errors only."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        if level == 4 or os.environ.get("MTP_LLAMA_VERBOSE"):  # 4: GGML_LOG_LEVEL_ERROR
            os.write(2, text)

    _LOG_CALLBACK = callback  # keep a reference: llama.cpp calls it later
    llama_cpp.llama_log_set(callback, None)


# --- reading an export back: what the engine checks before llama.cpp sees a file -------------


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    arch: str  # general.architecture: one of ARCHITECTURES
    dim: int
    vocab: int
    blocks: int
    head: int  # 1: main.gguf; 2..n: an extra head
    n_future: int
    fingerprint: str
    context_length: int  # the max_seq_len it was exported with
    n_heads: int
    n_kv_heads: int
    rope_theta: float
    norm_eps: float


def open_gguf(path: Path, missing: str = "missing", what: str = "GGUF file"):
    """A GGUFReader over `path` whose every tensor lies inside the file (a truncated one would
    read past its end); a ModelFileError naming the file otherwise."""
    import gguf

    if not path.is_file():
        raise ModelFileError(path, missing)
    try:
        reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError(f"tensor {t.name} runs past the end of the file")
    except (ValueError, KeyError, IndexError, OSError, EOFError) as e:
        raise ModelFileError(path, f"not a readable {what}, corrupt or truncated ({e})") from None
    return reader


def read_info(path: Path) -> GGUFInfo:
    """A GGUF file's shape and mtp.* keys; ModelFileError naming the file if it is missing,
    truncated, corrupt or not one of our exports. (llama.cpp aborts the whole process on
    some malformed files, so they are checked here first.)"""
    path = Path(path)
    reader = open_gguf(path, "missing (run `mtp-assistant models export MODEL --quant Q` to write it)", "GGUF export")
    try:

        def field(key: str):
            if key not in reader.fields:
                raise ValueError(f"no {key!r} key")
            return reader.fields[key].contents()

        arch = str(field("general.architecture"))
        if arch not in ARCHITECTURES:
            raise ValueError(f"architecture {arch!r}, expected one of {', '.join(ARCHITECTURES)}")
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else -1
        info = GGUFInfo(
            path=path,
            arch=arch,
            dim=int(field(f"{arch}.embedding_length")),
            vocab=vocab,
            blocks=int(field(f"{arch}.block_count")),
            head=int(field("mtp.head")),
            n_future=int(field("mtp.n_future")),
            fingerprint=str(field("mtp.weights_sha256")),
            context_length=int(field(f"{arch}.context_length")),
            n_heads=int(field(f"{arch}.attention.head_count")),
            n_kv_heads=int(field(f"{arch}.attention.head_count_kv")),
            rope_theta=float(field(f"{arch}.rope.freq_base")),
            norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon")),
        )
        _check_finite(reader)
        return info
    except ModelFileError:
        raise
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise ModelFileError(path, f"not a readable GGUF export, corrupt or truncated ({e})") from None


def _check_finite(reader) -> None:
    """ValueError naming the first unquantized tensor holding NaN or inf. (Quantized ones are
    checked by a probe forward when the engine loads: their values are not plain floats.)"""
    for t in reader.tensors:
        if t.tensor_type.name in ("F32", "F16") and not np.isfinite(t.data).all():
            raise ValueError(f"tensor {t.name} holds non-finite values (NaN or inf)")


def check_export(model_dir: Path | str, quant: str, config: ModelConfig) -> list[Path]:
    """The files of the export at `quant` (main first), checked against config.json and
    against each other; ModelFileError naming the first file that is missing or does not fit."""
    files = export_files(model_dir, quant, config.n_future_tokens)
    if (files[0].parent / "base.json").is_file():  # main.gguf is a base that heads were added to
        from models.base_import import check_base_export

        return check_base_export(model_dir, files, config)
    main = read_info(files[0])
    expected = {"arch": gguf_arch(config), "dim": config.dim, "vocab": config.vocab_size,
                "blocks": config.n_trunk_layers + 1, "head": 1,
                "n_future": config.n_future_tokens, "n_heads": config.n_heads, "n_kv_heads": config.kv_heads,
                "rope_theta": _f32(config.rope_theta), "norm_eps": _f32(config.norm_eps)}
    for key, value in expected.items():
        if getattr(main, key) != value:
            raise ModelFileError(files[0], f"{key} is {getattr(main, key)}, {CONFIG_FILE} implies {value} (re-export it)")
    if config.max_seq_len > main.context_length:
        raise ModelFileError(
            files[0],
            f"exported for a context of {main.context_length} positions, {CONFIG_FILE} says max_seq_len "
            f"{config.max_seq_len} (re-export it, or lower max_seq_len)",
        )
    for h, path in enumerate(files[1:], start=2):
        info = read_info(path)
        expected = {"arch": main.arch, "dim": main.dim, "vocab": main.vocab, "blocks": 1, "head": h,
                    "n_future": main.n_future,
                    "fingerprint": main.fingerprint, "context_length": main.context_length, "n_heads": main.n_heads,
                    "n_kv_heads": main.n_kv_heads, "rope_theta": main.rope_theta, "norm_eps": main.norm_eps}
        for key, value in expected.items():
            if getattr(info, key) != value:
                raise ModelFileError(
                    path, f"does not match its main model {files[0].name}: {key} is {getattr(info, key)!r}, expected {value!r}"
                )
    return files


def _f32(value: float) -> float:
    """value as GGUF stores it (a float32 key)."""
    return float(np.float32(value))


def available_quants(model_dir: Path | str) -> list[str]:
    """Quantizations whose main file exists in model_dir, in QUANTS order, then any other
    (a base GGUF kept at its own quantization, e.g. q5_k_m) by name."""
    found = [q for q in QUANTS if (quant_dir(model_dir, q) / MAIN_FILE).is_file()]
    folder = Path(model_dir) / GGUF_DIR
    others = sorted(p.name for p in folder.iterdir() if p.name not in QUANTS and not p.name.startswith(".") and (p / MAIN_FILE).is_file()) \
        if folder.is_dir() else []
    return found + others
