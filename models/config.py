"""Model architecture settings, validated when loaded from config.json.

`n_layers` counts every transformer block, heads included, as in Meta's released
`params.json`: `layers` holds the trunk plus head 1 (n_layers - n_future + 1 blocks)
and `extra_heads` holds heads 2..n (n_future - 1 blocks). A model with more heads
therefore has the same parameter count as its next-token twin (paper Sec. 2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


# Bounds no model this project can run comes near (Llama 3 405B: dim 16384, 126 layers,
# vocabulary 128256): a value past them is a typo or a corrupt file, and would otherwise
# ask for terabytes before anything else could object.
_INT_LIMITS = {
    "dim": 1 << 16,
    "n_layers": 1024,
    "n_heads": 1024,
    "vocab_size": 1 << 20,
    "multiple_of": 1 << 16,
    "n_future_tokens": 64,
}
# Positions. RoPE has no position table in the weights, so nothing else bounds it, and
# every engine allocates its KV cache for all of it (Llama 3.1's context is 128K).
MAX_SEQ_LEN = 1 << 20


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


_FLAGS = ("qkv_bias", "qk_norm", "heads_read_final")
# Fields config.json leaves out at these values (the models made before they existed).
_OPTIONAL = {"attn_head_dim": None, "qkv_bias": False, "qk_norm": False, "heads_read_final": False}


class ConfigError(ValueError):
    """A model config that cannot describe a valid model."""


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 256
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None  # None: same as n_heads (no GQA)
    vocab_size: int = 261
    multiple_of: int = 32  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_future_tokens: int = 4
    max_seq_len: int = 2048
    # Qwen-family blocks (off for llama, and for every model made before them; config.json
    # leaves them out while off, so those files are unchanged).
    attn_head_dim: int | None = None  # None: dim / n_heads (Qwen3 sets it, e.g. 128 with dim 1024, 16 heads)
    qkv_bias: bool = False  # Qwen2: biases on the q, k and v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k, before RoPE
    # Heads 2..n read the base's final normed hidden state (head 1's, before the output
    # matrix) instead of the input of the last block: the state llama.cpp exposes as
    # embeddings for architectures whose graph does not capture a block's input.
    heads_read_final: bool = False

    def __post_init__(self) -> None:
        for name in (*_INT_LIMITS, "max_seq_len"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name, limit in _INT_LIMITS.items():
            if getattr(self, name) > limit:
                raise ConfigError(f"{name} {getattr(self, name)} is larger than any model this runs ({limit} at most)")
        if self.n_kv_heads is not None and (not _is_int(self.n_kv_heads) or self.n_kv_heads <= 0):
            raise ConfigError(f"n_kv_heads must be a positive integer or null, got {self.n_kv_heads!r}")
        if self.max_seq_len > MAX_SEQ_LEN:
            raise ConfigError(
                f"max_seq_len {self.max_seq_len} is beyond any usable context ({MAX_SEQ_LEN} at most): "
                f"its KV cache alone would take {format_bytes(self.kv_cache_bytes())}"
            )
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not _is_finite_positive(value):
                raise ConfigError(f"{name} must be a finite positive number, got {value!r}")
        if self.ffn_dim_multiplier is not None and not _is_finite_positive(self.ffn_dim_multiplier):
            raise ConfigError(
                f"ffn_dim_multiplier must be a finite positive number or null, got {self.ffn_dim_multiplier!r}"
            )
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.attn_head_dim is not None and (not _is_int(self.attn_head_dim) or not 0 < self.attn_head_dim <= 4096):
            raise ConfigError(f"attn_head_dim must be a positive integer (at most 4096) or null, got {self.attn_head_dim!r}")
        if self.attn_head_dim is None and self.dim % self.n_heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head dim ({self.head_dim}) must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if self.n_future_tokens > self.n_layers:
            raise ConfigError(
                f"n_future_tokens ({self.n_future_tokens}) cannot exceed n_layers ({self.n_layers}): "
                "every head is one of the model's blocks"
            )

    def kv_cache_bytes(self, n_ctx: int | None = None, bytes_per_value: int = 4) -> int:
        """Memory of the keys and values of every block for n_ctx positions (default: all)."""
        n_ctx = self.max_seq_len if n_ctx is None else n_ctx
        return 2 * self.n_layers * self.kv_heads * self.head_dim * n_ctx * bytes_per_value

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.dim // self.n_heads

    @property
    def n_trunk_layers(self) -> int:
        """Blocks shared by all heads (`layers` minus its last block, head 1)."""
        return self.n_layers - self.n_future_tokens

    @property
    def ffn_hidden_dim(self) -> int:
        # Llama's rule: 2/3 of 4*dim, scaled, rounded up to multiple_of.
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if k not in _OPTIONAL or v != _OPTIONAL[k]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Sizes we recommend; see BENCHMARKS.md for their training throughput on a 2-core CPU.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=64, n_layers=4, n_heads=4, n_future_tokens=4, max_seq_len=512),
    "small": ModelConfig(dim=256, n_layers=8, n_heads=8, n_future_tokens=4, max_seq_len=1024),
    "base": ModelConfig(dim=512, n_layers=12, n_heads=8, n_kv_heads=4, n_future_tokens=4, max_seq_len=2048),
}
