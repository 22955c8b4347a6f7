"""A Llama-style multi-token-prediction transformer in Meta's released layout.

    tokens -> tok_embeddings -> layers[:-1] (trunk) -> z
    head 1      : layers[-1](z)      -> norm -> output   predicts token t+1
    head i >= 2 : extra_heads[i-2](z) -> norm -> output   predicts token t+i

Every head reads the same z (the input of the last block of `layers`) and one final
norm and output matrix serve all heads. The main path (`layers` + norm + output) is a
plain Llama, which is what lets llama.cpp run it and Meta's checkpoints load as they are.

Heads are numbered from 0 in code: head 0 is the next-token head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in (at least) fp32 for stability under bf16/fp16, as Meta's reference
        # does; the fused op matters: small models are bound by the number of ops.
        compute = compute_dtype(x.dtype)
        return F.rms_norm(x.to(compute), (x.shape[-1],), self.weight.to(compute), self.eps).type_as(x)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision for numerically sensitive steps: at least fp32, fp64 when given fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_seq_len, head_dim // 2)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def rope_rotation(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The complex rotations e^{i angle} for some positions: (T, hd/2), complex."""
    compute = compute_dtype(dtype)
    return torch.complex(cos.to(compute), sin.to(compute))


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]), Meta's (and llama.cpp's LLAMA) convention.

    x: (B, T, H, hd); rotation: (T, hd/2) complex, from rope_rotation.
    """
    pairs = torch.view_as_complex(x.to(rotation.real.dtype).unflatten(-1, (-1, 2)))  # (B, T, H, hd/2)
    return torch.view_as_real(pairs * rotation[None, :, None, :]).flatten(-2).type_as(x)


# A cached forward of at most this many new tokens is a decoding step (a verify step, or the
# few typed-ahead tokens of a reused prompt); see LayerCache.step_equivalent.
MAX_STEP_ROWS = 16


def linear_rows_invariant(model: "MTPTransformer", dtype: torch.dtype, device: torch.device | str = "cpu",
                          rows: int = MAX_STEP_ROWS) -> bool:
    """Whether F.linear gives a row the same bits for every row count 1..rows, for weights of
    the shapes of the model's blocks on this device and dtype (the output matrix is left out:
    decoding makes the logits a row at a time). It is the kernels' choice, so it is measured:
    CPU fp32 picks other kernels for small row counts, and so does fp16 on a CPU with
    AVX512-FP16, where bf16 keeps its bits."""
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear) and m is not model.output}
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features in sorted(shapes):
        weight = torch.randn(out_features, in_features, generator=generator).to(device, dtype)
        x = torch.randn(1, rows, in_features, generator=generator).to(device, dtype)
        one_row = torch.cat([F.linear(x[:, t : t + 1], weight) for t in range(rows)], dim=1)
        if not all(torch.equal(F.linear(x[:, :n], weight), one_row[:, :n]) for n in range(2, rows + 1)):
            return False
    return True


@dataclass
class LayerCache:
    """Keys and values of one block, written in place at absolute positions."""

    k: torch.Tensor  # (B, max_len, n_kv_heads, hd)
    v: torch.Tensor  # (B, max_len, n_kv_heads, hd)
    # Attend each new token of a step (up to MAX_STEP_ROWS after a cached prefix) with its own
    # attention call, exactly the call a 1-token step makes: the fused masked kernel rounds a
    # token's output differently from the 1-query kernel. With matmuls whose rows do not
    # depend on the batch's row count (linear_rows_invariant), a token then gets the same
    # bits in a k-token verify step as in plain decoding.
    step_equivalent: bool = False


class KVCache:
    """One LayerCache per block, `layers` first then `extra_heads`.

    Positions are absolute, so rolling back rejected tokens needs no copying: the next
    forward simply writes over them (attention never looks past its own position).
    """

    def __init__(
        self, config: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32, step_equivalent=False
    ):
        n_blocks = config.n_layers  # trunk + every head's block
        shape = (batch, max_len, config.kv_heads, config.head_dim)
        self.max_len = max_len
        self.layers = [
            LayerCache(
                torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(shape, device=device, dtype=dtype),
                step_equivalent,
            )
            for _ in range(n_blocks)
        ]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        bias = config.qkv_bias
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=bias)
        self.wk = nn.Linear(config.dim, config.kv_heads * config.head_dim, bias=bias)
        self.wv = nn.Linear(config.dim, config.kv_heads * config.head_dim, bias=bias)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)
        self.qk_norm = config.qk_norm

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rotation: torch.Tensor,  # (T, hd/2) complex, for positions start_pos..start_pos+T-1
        start_pos: int,
        cache: LayerCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rotation), apply_rope(k, rotation)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)

        if cache is not None:
            end = start_pos + T
            cache.k[:B, start_pos:end] = k
            cache.v[:B, start_pos:end] = v
            k, v = cache.k[:B, :end], cache.v[:B, :end]
        elif start_pos != 0:
            raise ValueError("start_pos > 0 needs a KV cache")

        if self.n_kv_heads != self.n_heads:  # grouped-query attention: share each kv head
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=2)
            v = v.repeat_interleave(repeat, dim=2)

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T or S, hd)
        if cache is not None and cache.step_equivalent and start_pos > 0 and 1 < T <= MAX_STEP_ROWS:
            seen = [start_pos + t + 1 for t in range(T)]  # token t sees keys 0..start_pos + t
            rows = [F.scaled_dot_product_attention(q[:, :, t : t + 1], k[:, :, :n], v[:, :, :n]) for t, n in enumerate(seen)]
            out = torch.cat(rows, dim=2)  # (B, H, T, hd)
        elif start_pos == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new token sees every cached position
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # T new queries after start_pos cached keys: causal with an offset
            S = k.shape[2]
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.ffn_hidden_dim
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x, rotation, start_pos: int = 0, cache: LayerCache | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rotation, start_pos, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class MTPTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.n_future = config.n_future_tokens
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_trunk_layers + 1))
        self.extra_heads = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_future_tokens - 1))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = self.rope_buffers(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if self.output.weight.device.type != "meta":  # a model built to load weights into skips init
            self.reset_parameters()

    @staticmethod
    def rope_buffers(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.device("cpu"):
            return rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)

    def reset_parameters(self, seed: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        # GPT-2 style: N(0, 0.02), residual projections scaled down by depth so the
        # residual stream's variance does not grow with the number of blocks.
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            else:
                std = residual_std if name.endswith(("wo.weight", "w2.weight")) else 0.02
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=generator) * std)

    # --- the pieces, used by the memory-efficient loss and by the decoding engines ---

    def head_blocks(self) -> list[TransformerBlock]:
        """The block of each head, head 0 (next token) first."""
        return [self.layers[-1], *self.extra_heads]

    def trunk_parameters(self) -> list[nn.Parameter]:
        return [*self.tok_embeddings.parameters(), *(p for block in self.layers[:-1] for p in block.parameters())]

    def rope(self, start_pos: int, length: int, dtype: torch.dtype) -> torch.Tensor:
        """RoPE rotations for positions start_pos..start_pos+length-1: (length, hd/2) complex."""
        end = start_pos + length
        if end > self.config.max_seq_len:
            raise ValueError(f"sequence of {end} positions exceeds max_seq_len {self.config.max_seq_len}")
        return rope_rotation(self.rope_cos[start_pos:end], self.rope_sin[start_pos:end], dtype)

    def trunk(self, tokens: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (B, T) -> z (B, T, D), the input every head reads."""
        h = self.tok_embeddings(tokens)
        rotation = self.rope(start_pos, tokens.shape[1], h.dtype)
        for i, block in enumerate(self.layers[:-1]):
            h = block(h, rotation, start_pos, cache.layers[i] if cache else None)
        return h

    def head_hidden(self, z: torch.Tensor, head: int, start_pos: int = 0, cache: KVCache | None = None,
                    final: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, T, D) -> head's normalised hidden state (B, T, D), ready for `output`.

        With config.heads_read_final, heads >= 1 read head 0's result instead of z: pass it
        as `final` when it is at hand, else head 0 runs (again) to make it."""
        if not 0 <= head < self.n_future:
            raise ValueError(f"head {head} out of range for a model with {self.n_future} heads")
        if head > 0 and self.config.heads_read_final:
            z = self.head_hidden(z, 0, start_pos, cache) if final is None else final
        return self.block_hidden(z, head, start_pos, cache)

    def block_hidden(self, x: torch.Tensor, head: int, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """The head's own block on its input x (z, or head 0's result), then the final norm."""
        rotation = self.rope(start_pos, x.shape[1], x.dtype)
        block_index = self.config.n_trunk_layers + head  # cache slot: layers first, then extra heads
        h = self.head_blocks()[head](x, rotation, start_pos, cache.layers[block_index] if cache else None)
        return self.norm(h)

    # --- whole-model forwards ---

    def forward(self, tokens: torch.Tensor, heads: Sequence[int] | None = None) -> torch.Tensor:
        """Training/evaluation forward without a cache.

        tokens (B, T) -> logits (B, len(heads), T, V); heads default to all of them.
        Holds every head's logits at once: use models.loss for memory-efficient training.
        """
        heads = range(self.n_future) if heads is None else heads
        z = self.trunk(tokens)
        final = self.head_hidden(z, 0) if self.config.heads_read_final else None
        return torch.stack([self.output(self.head_hidden(z, head, final=final)) for head in heads], dim=1)

    def new_cache(
        self, batch: int = 1, max_len: int | None = None, device=None, dtype=None, step_equivalent: bool = False
    ) -> KVCache:
        param = self.output.weight
        return KVCache(
            self.config,
            batch,
            max_len or self.config.max_seq_len,
            device=device or param.device,
            dtype=dtype or param.dtype,
            step_equivalent=step_equivalent,
        )

    def forward_hidden(
        self,
        tokens: torch.Tensor,  # (B, T) new tokens at positions start_pos..start_pos+T-1
        start_pos: int,
        cache: KVCache,
        heads: Sequence[int] = (0,),
    ) -> torch.Tensor:
        """Inference forward with a KV cache, stopping before the unembedding.

        Returns the heads' normalised hidden states (B, len(heads), T, D); apply
        `self.output` to the positions whose logits are needed (the output matrix
        dominates small models, and decoding rarely needs every head everywhere).
        Only the blocks of `heads` run, so only their caches advance: a caller that
        uses head i later must have passed it for every earlier position too.
        """
        z = self.trunk(tokens, start_pos, cache)
        if not self.config.heads_read_final:
            return torch.stack([self.head_hidden(z, head, start_pos, cache) for head in heads], dim=1)
        final = self.head_hidden(z, 0, start_pos, cache)  # what every other head reads: run once
        return torch.stack([final if head == 0 else self.block_hidden(final, head, start_pos, cache)
                            for head in heads], dim=1)

    def forward_cached(
        self,
        tokens: torch.Tensor,
        start_pos: int,
        cache: KVCache,
        heads: Sequence[int] = (0,),
        last_only: bool = False,
    ) -> torch.Tensor:
        """`forward_hidden` plus the unembedding: logits (B, len(heads), T or 1, V)."""
        hidden = self.forward_hidden(tokens, start_pos, cache, heads)
        return self.output(hidden[:, :, -1:] if last_only else hidden)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
