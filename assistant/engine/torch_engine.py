"""The torch decoding backend: CPU or CUDA, full or half precision.

Keeps one KV cache between calls and reuses its longest common prefix with the new
prompt: an editor asks again and again about nearly the same text.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import torch

from assistant.engine.base import (
    GenerationConfig,
    MIN_CONTEXT,
    GenerationResult,
    check_min_context,
    checked_prompt,
    common_prefix_length,
    result_text,
)
from assistant.engine.drafting import CostCurve, DraftPlanner, planner_for, probe_costs, probe_prefix
from assistant.engine.speculative import decode, forward_heads
from assistant.errors import UserError
from models.transformer import MAX_STEP_ROWS, KVCache, MTPTransformer, compute_dtype, linear_rows_invariant


class _TorchStepOutput:
    def __init__(self, unembedding: torch.Tensor, hidden: torch.Tensor):
        self.unembedding = unembedding  # (V, D), at least fp32
        self.hidden = hidden  # (k, T, D) normalised hidden states of heads 1..k

    def next_logits(self, start: int = 0) -> torch.Tensor:
        # Only the rows asked for: a prefill needs its last position's logits, not a
        # (T, V) product for every prompt position. One product per row: that is what a
        # plain step computes, and a k-row product rounds differently (fp32 matmuls pick
        # another kernel for 1, 2, 3 and 4+ rows), which can flip a near-tie.
        return torch.cat([self._logits(row) for row in self.hidden[0, start:].split(1)])  # (T - start, V)

    def draft_logits(self, index: int, n: int | None = None) -> torch.Tensor:
        return self._logits(self.hidden[1 : None if n is None else 1 + n, index])  # (n or k - 1, V)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # Logits in fp32 even for a half-precision model: rounded to bf16, the top two
        # logits tie exactly far more often, and a tie can break differently in a
        # verify forward than in a plain one.
        return hidden.to(self.unembedding.dtype) @ self.unembedding.T


class _TorchStepModel:
    def __init__(self, model: MTPTransformer, unembedding: torch.Tensor, cache: KVCache, device: torch.device,
                 token_steps: bool = False):
        self.model, self.unembedding, self.cache, self.device = model, unembedding, cache, device
        self.token_steps = token_steps  # run a step's tokens one at a time (see TorchEngine)

    def forward(self, tokens: Sequence[int], start_pos: int, k: int, all_rows: bool = True) -> _TorchStepOutput:
        x = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        if self.token_steps and start_pos > 0 and 1 < len(tokens) <= MAX_STEP_ROWS:
            hidden = torch.cat([self.model.forward_hidden(x[:, t : t + 1], start_pos + t, self.cache, heads=range(k))
                                for t in range(len(tokens))], dim=2)  # (1, k, T, D)
        else:
            hidden = self.model.forward_hidden(x, start_pos, self.cache, heads=range(k))  # (1, k, T, D)
        return _TorchStepOutput(self.unembedding, hidden[0])


class TorchEngine:
    # The heads' caches hold the positions of the last k used: another k re-runs the prefill.
    reuses_cache_across_k = False
    # Greedy speculative output is plain output token for token (one product per row, below).
    exact = True

    def __init__(self, model: MTPTransformer, tokenizer: Any, device: str | torch.device = "cpu", dtype=torch.float32):
        if model.config.max_seq_len < MIN_CONTEXT:
            raise UserError(
                f"max_seq_len {model.config.max_seq_len} is too small to serve completions (at least {MIN_CONTEXT})"
            )
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        # In half precision a verify step must give each token a plain step's bits: rounded
        # that coarsely, logits near-tie often enough that any other rounding flips tokens.
        # Where this device's matmuls give a row the same bits whatever the row count, the
        # cache makes each token's attention its own call (LayerCache.step_equivalent) and
        # that suffices; where they do not (fp16 on a CPU with AVX512-FP16), a step's tokens
        # are run one at a time, as plain decoding runs them: exact, but with no gain.
        half = dtype in (torch.bfloat16, torch.float16)
        self._step_equivalent = half and linear_rows_invariant(self.model, dtype, self.device)
        self._token_steps = half and not self._step_equivalent
        weight = self.model.output.weight.detach()
        self._unembedding = weight.to(compute_dtype(weight.dtype))
        self.tokenizer = tokenizer
        self.n_future = model.n_future
        self.max_seq_len = model.config.max_seq_len
        self._cache: KVCache | None = None
        self._cache_k = 0  # heads whose blocks filled the cache: only they can reuse it
        self._cached: list[int] = []  # tokens whose KV is valid, in position order
        self._lock = threading.Lock()  # one generation at a time on the shared cache
        self.warnings: list[str] = []  # see base.Engine
        if self._token_steps:
            self.warnings.append(f"{str(dtype).removeprefix('torch.')} matmuls on this {self.device.type} round a row "
                                 "by the row count, so drafts are verified a token at a time (exact, no faster than "
                                 "plain decoding); bfloat16 or float32 keep the gain")
        default = (self.device.type, dtype) == ("cpu", torch.float32)
        self.label = "torch" if default else f"torch {self.device.type} {str(dtype).removeprefix('torch.')}"
        self.threads = (torch.get_num_threads(),) * 2  # see base.Engine (torch's threads are per process)
        # The "auto" drafter's: acceptance learned across calls, a probed cost curve per k.
        self._planner: DraftPlanner = planner_for(None)
        self._costs: dict[int, CostCurve] = {}

    @classmethod
    def from_dir(cls, model_dir, device: str = "cpu", dtype=torch.float32) -> "TorchEngine":
        from models.checkpoint import load_model, read_config

        check_min_context(model_dir, read_config(model_dir)[0].max_seq_len)
        loaded = load_model(model_dir, device=device, dtype=dtype)  # no float32 copy of a half model
        engine = cls(loaded.model, loaded.tokenizer, device, dtype)
        engine._planner = planner_for(model_dir)  # the heads' prior from the model's card
        return engine

    @torch.inference_mode()
    def generate(
        self,
        prompt: Sequence[int],
        config: GenerationConfig = GenerationConfig(),
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        prompt = checked_prompt(prompt, self.max_seq_len, self.model.config.vocab_size)
        k = forward_heads(config, self.n_future)
        with self._lock:
            if self._cache is None:
                self._cache = self.model.new_cache(batch=1, step_equivalent=self._step_equivalent)
            step = _TorchStepModel(self.model, self._unembedding, self._cache, self.device, self._token_steps)
            planner = self._planned(step, k) if config.drafter == "auto" else None
            reusable = config.reuse_prefix and self._cache_k == k
            # At least the last prompt token is fed again: its logits start the decoding.
            start = min(common_prefix_length(prompt, self._cached), len(prompt) - 1) if reusable else 0
            self._cached = []  # invalid while the cache is being written
            outcome = decode(
                step, prompt, start, config, k, self.max_seq_len, self.tokenizer.token_bytes, cancel, planner
            )
            self._cache_k = k
            self._cached = (prompt + outcome.tokens)[: outcome.cached_len]
        text = result_text(self.tokenizer, outcome.tokens, config)
        return GenerationResult(outcome.tokens, text, outcome.stop_reason, outcome.stats, outcome.token_heads)

    def _planned(self, step: _TorchStepModel, k: int) -> DraftPlanner:
        """The planner with the cost curve of k heads, probed the first time (over the cache)."""
        if k not in self._costs:
            self._costs[k] = probe_costs(step, k, prefix=probe_prefix(self.max_seq_len))
            self._cached, self._cache_k = [], 0  # the probe wrote the cache
        self._planner.cost = self._costs[k]
        return self._planner
