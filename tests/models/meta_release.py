"""A tiny checkpoint in exactly the layout of Meta's multi-token-prediction release, written
independently of models/ (its own FFN size rule and key names), plus a reference forward
pass over the raw state dict in the style of Meta's llama/model.py."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F

# Small, but with every optional feature on: GQA, an FFN multiplier, a non-default rope theta.
PARAMS = {
    "dim": 64,
    "n_layers": 6,  # all blocks: 3 trunk + 3 heads (layers.0..3, extra_heads.0..1)
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 512,
    "multiple_of": 32,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-5,
    "n_future_tokens": 3,
    "rope_theta": 500000.0,
}

CORPUS_EXTRA = [
    "naïve café, Grüße, ünïcödé, 日本語のコード, ёлка, 🐍",
    "    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n\tprint(i * 2 + 1)\n",
]


def train_sentencepiece(vocab_size: int = 512) -> bytes:
    """A Llama-2-style SentencePiece model (BPE, byte fallback, no normalization) on stdlib code."""
    texts = []
    for module in (json.decoder, json.encoder, os):
        texts.extend(Path(module.__file__).read_text(encoding="utf-8").splitlines())
    texts.extend(line for text in CORPUS_EXTRA for line in text.splitlines())
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    return model.getvalue()


def meta_ffn_hidden(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """FeedForward's hidden size exactly as Meta's llama/model.py computes it."""
    hidden_dim = 4 * dim
    hidden_dim = int(2 * hidden_dim / 3)
    if ffn_dim_multiplier is not None:
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


def meta_state_dict(params: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp16 weights with the names and shapes of Meta's checkpoint."""
    g = torch.Generator().manual_seed(seed)
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = meta_ffn_hidden(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    vocab = params["vocab_size"]

    def w(*shape, std=None):
        std = std if std is not None else 1 / math.sqrt(shape[-1])
        return (torch.randn(shape, generator=g) * std).half()

    def norm():
        return (1 + 0.1 * torch.randn(dim, generator=g)).half()

    def block(prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.attention.wq.weight": w(n_heads * head_dim, dim),
            f"{prefix}.attention.wk.weight": w(n_kv * head_dim, dim),
            f"{prefix}.attention.wv.weight": w(n_kv * head_dim, dim),
            f"{prefix}.attention.wo.weight": w(dim, n_heads * head_dim),
            f"{prefix}.feed_forward.w1.weight": w(hidden, dim),
            f"{prefix}.feed_forward.w2.weight": w(dim, hidden),
            f"{prefix}.feed_forward.w3.weight": w(hidden, dim),
            f"{prefix}.attention_norm.weight": norm(),
            f"{prefix}.ffn_norm.weight": norm(),
        }

    n_future = params.get("n_future_tokens", 1)
    state = {"tok_embeddings.weight": w(vocab, dim, std=1.0)}
    for i in range(params["n_layers"] - n_future + 1):  # trunk + head 1, numbered contiguously
        state |= block(f"layers.{i}")
    for i in range(n_future - 1):
        state |= block(f"extra_heads.{i}")
    state["norm.weight"] = norm()
    state["output.weight"] = w(vocab, dim)
    return state


def write_release(
    directory: Path,
    params: dict = PARAMS,
    state: dict[str, torch.Tensor] | None = None,
    tokenizer: bytes | None = None,
    tokenizer_in_parent: bool = False,
) -> Path:
    """params.json + consolidated.pth (+ tokenizer.model here or, as Meta ships it, one level up)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(params))
    torch.save(state if state is not None else meta_state_dict(params), directory / "consolidated.pth")
    if tokenizer is not None:
        target = directory.parent if tokenizer_in_parent else directory
        (target / "tokenizer.model").write_bytes(tokenizer)
    return directory


def reference_logits(state: dict[str, torch.Tensor], params: dict, tokens: list[int]) -> torch.Tensor:
    """Every head's logits (n_future, T, V) in float64, the way Meta's forward computes them:
    trunk = layers[:-1]; each head block (layers[-1], then extra_heads) reads the trunk
    output; one final norm and output matrix."""
    sd = {name: t.double() for name, t in state.items()}
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    hd = dim // n_heads
    eps, theta = params["norm_eps"], params["rope_theta"]
    n_future = params["n_future_tokens"]
    T = len(tokens)

    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64)[: hd // 2] / hd))
    angles = torch.outer(torch.arange(T, dtype=torch.float64), freqs)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)  # (T, hd/2)
    causal = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)

    def rmsnorm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(x):  # (T, H, hd): rotate adjacent pairs
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(xc * freqs_cis[:, None, :]).flatten(-2)

    def block(prefix, h):
        x = rmsnorm(h, sd[f"{prefix}.attention_norm.weight"])
        q = (x @ sd[f"{prefix}.attention.wq.weight"].T).view(T, n_heads, hd)
        k = (x @ sd[f"{prefix}.attention.wk.weight"].T).view(T, n_kv, hd)
        v = (x @ sd[f"{prefix}.attention.wv.weight"].T).view(T, n_kv, hd)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + causal
        out = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, dim)
        h = h + out @ sd[f"{prefix}.attention.wo.weight"].T
        x = rmsnorm(h, sd[f"{prefix}.ffn_norm.weight"])
        ffn = F.silu(x @ sd[f"{prefix}.feed_forward.w1.weight"].T) * (x @ sd[f"{prefix}.feed_forward.w3.weight"].T)
        return h + ffn @ sd[f"{prefix}.feed_forward.w2.weight"].T

    n_layers_blocks = params["n_layers"] - n_future + 1
    h = sd["tok_embeddings.weight"][torch.tensor(tokens)]
    for i in range(n_layers_blocks - 1):
        h = block(f"layers.{i}", h)
    heads = [f"layers.{n_layers_blocks - 1}"] + [f"extra_heads.{i}" for i in range(n_future - 1)]
    return torch.stack([rmsnorm(block(p, h), sd["norm.weight"]) @ sd["output.weight"].T for p in heads])
