"""The llama.cpp decoding backend: quantized GGUF weights on CPU or GPU.

Files (models/gguf_export.py): gguf/<quant>/main.gguf is the main path (trunk + head 1 +
norm + output) as a plain llama, qwen2 or qwen3 model; gguf/<quant>/head-<i>.gguf is head
i as a one-block model of the same architecture with the shared norm and output.

    main context   tokens -> logits of head 1 at every fed position, and z, what the heads
                   read: the input of the last block (llama_set_embeddings_layer_inp), or
                   with heads_read_final the final normed hidden state (llama.cpp's
                   embeddings with pooling none, t_embd; qwen2's graph fills no block
                   input), which llama.cpp keeps only for rows whose logits it computes
    head contexts  z rows as input embeddings (batch.embd) -> logits of head i

Each context has its own KV cache; rejected drafts are rolled back with
llama_memory_seq_rm. z of the cached positions is kept on the host where heads may need
it (prefills and forwards with k > 1; a plain 1-token step does not capture it), so the
heads run lazily: only on positions that were accepted, only when their drafts are asked
for, catching up from the kept z when a head was not used for a while (a call with a
smaller k, or a completion that stopped). That also lets a new request reuse the cached
prompt whatever k the previous one used; tokens a plain call generated are fed again.

The decoding algorithm is speculative.decode, shared with the torch backend.

Loading checks, each failing with ModelFileError naming the file: the export's metadata
against config.json (check_export; its f32/f16 tensors for NaN/inf), model.safetensors'
header (llama.cpp never reads the weights, but a directory without sound ones is broken),
that the context fits in memory, and a one-token probe forward of every context for
non-finite logits, which catches NaN/inf in quantized tensors too.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from assistant.engine import llama_ext
from assistant.engine.base import (
    GenerationConfig,
    GenerationResult,
    check_min_context,
    checked_prompt,
    common_prefix_length,
    result_text,
)
from assistant.engine.drafting import (
    CostCurve,
    DraftPlanner,
    cached_probe,
    planner_for,
    probe_costs,
    probe_key,
    probe_prefix,
)
from assistant.engine.speculative import decode, forward_heads
from models.checkpoint import ModelFileError, check_context_memory, check_weights_header, read_config
from models.gguf_export import FINAL_HIDDEN_ARCHS, available_quants, check_export, export_files, gguf_arch, quiet_llama_logs
from models.tokenizer import TokenizerError, load_tokenizer

# Which export "auto" picks when several exist: q8_0 is within rounding of f16 in
# acceptance and faster on CPU; q4_k_m is faster still but drafts a little worse.
PREFERRED_QUANTS = ("q8_0", "q4_k_m", "f16", "f32")

_GGML_TYPE_F32, _GGML_TYPE_F16 = 0, 1
_FLASH_ATTN_DISABLED, _FLASH_ATTN_AUTO = 0, -1
_POOLING_NONE = 0  # llama_pooling_type: embeddings per token, not pooled


@dataclass(frozen=True)
class LlamaSettings:
    quant: str | None = None  # None: the first of PREFERRED_QUANTS that was exported, else any export
    threads: int | None = None  # CPU threads of a 1-row forward; None: half the logical cores (~ the physical ones)
    # CPU threads of a forward of several rows (a prompt, a draft's verification): compute-bound
    # where one row is memory-bound, so more threads help it. None: every logical core,
    # llama.cpp's own default (n_threads_batch).
    batch_threads: int | None = None
    n_gpu_layers: int = -1  # blocks offloaded when libllama was built with a GPU backend; -1: all
    n_ubatch: int = 512  # micro-batch size: a longer prompt is decoded in several
    # False (the default): llama.cpp's own defaults, what llama.cpp users run: KV type and
    # flash attention as llama.cpp chooses, 1-token forwards as they are. Speculative output
    # may then differ from plain output where two tokens nearly tie, because a k-token
    # verify and a 1-token step round differently (the bench counts such runs).
    # True: f32 KV cache, no flash attention (which rounds Q to f16 on CPU) and 1-token
    # forwards padded to two rows (see _LlamaStepModel): speculative == plain token for
    # token at every quantization (no run of 240 differed; with flash attention 1 did at
    # q4_k_m), for ~40-60% more time per token on a small CPU model.
    exact: bool = False
    # Where the cost probe of the "auto" drafter is kept (one small JSON file per model file,
    # settings and machine); None: measured at the first "auto" call of each engine.
    probe_dir: Path | None = None


def resolved_threads(settings: LlamaSettings) -> tuple[int, int]:
    """(threads of a 1-row forward, of a forward of several rows) that settings ask for."""
    return settings.threads or max(1, (os.cpu_count() or 2) // 2), settings.batch_threads or os.cpu_count() or 1


# check_export parses every GGUF of an export (about a second for the shipped model, on every
# load); an export whose files all have the stamp they had when it passed is not parsed again.
_checked_exports: dict[tuple, list[Path]] = {}


def _file_stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (str(path), None)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def checked_export(model_dir: Path, quant: str, config) -> list[Path]:
    """check_export(model_dir, quant, config), remembered in this process for as long as the
    export's files (and a base export's base.json) keep their path, size, mtime and inode."""
    files = export_files(model_dir, quant, config.n_future_tokens)
    key = (quant, config, tuple(_file_stamp(p) for p in [*files, files[0].parent / "base.json"]))
    if key not in _checked_exports:
        _checked_exports[key] = check_export(model_dir, quant, config)  # raises, remembering nothing, if unsound
    return list(_checked_exports[key])


_backend_ready = False


def _backend_init() -> None:
    """llama_backend_init, once per process (loads the ggml backends, e.g. CUDA)."""
    global _backend_ready
    if not _backend_ready:
        import llama_cpp

        llama_cpp.llama_backend_init()
        _backend_ready = True


class _Context:
    """One llama.cpp model + context + batch, for a single sequence."""

    def __init__(self, path: Path, settings: LlamaSettings, n_ctx: int, exact: bool, embd_dim: int = 0):
        import llama_cpp

        self.path = path
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = settings.n_gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise ModelFileError(path, "llama.cpp could not load it (corrupt GGUF, or built by a newer llama.cpp?)")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx  # a whole prompt in one llama_decode (split into micro-batches)
        params.n_ubatch = min(settings.n_ubatch, n_ctx)
        params.n_seq_max = 1
        params.n_threads, params.n_threads_batch = resolved_threads(settings)
        if exact:
            params.type_k = params.type_v = _GGML_TYPE_F32
            params.flash_attn_type = _FLASH_ATTN_DISABLED
        params.pooling_type = _POOLING_NONE  # embeddings, where turned on, are every row's hidden state
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"{path}: llama.cpp could not create a context of {n_ctx} positions")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.dim = llama_cpp.llama_model_n_embd(self.model)
        self.n_ctx = n_ctx
        self.batch = llama_cpp.llama_batch_init(n_ctx, embd_dim, 1)
        for i in range(n_ctx):  # one sequence, id 0, for every slot
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
        # numpy views of the batch's arrays, to fill them without a Python loop per token
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(n_ctx,))
        self._want = np.ctypeslib.as_array(self.batch.logits, shape=(n_ctx,))
        self._positions = np.arange(n_ctx, dtype=np.int32)
        self.filled = 0  # positions the KV cache may hold (0 ..filled-1)
        self._logits_address, self._logits_view = None, np.zeros((0, self.vocab), np.float32)
        if embd_dim:
            self._embd = np.ctypeslib.as_array(self.batch.embd, shape=(n_ctx, embd_dim))
        else:
            self._token = np.ctypeslib.as_array(self.batch.token, shape=(n_ctx,))

    def decode(self, start_pos: int, rows: np.ndarray, all_logits: bool) -> np.ndarray:
        """Write rows (token ids (T,) or embeddings (T, D)) at start_pos.., dropping whatever the
        cache held from start_pos on. Logits (T or 1, V) of every row or of the last one."""
        import llama_cpp

        T = len(rows)
        if start_pos + T > self.n_ctx:
            raise ValueError(f"{start_pos + T} positions exceed the context of {self.n_ctx}")
        if start_pos < self.filled:  # a plain step appends: nothing to drop
            llama_cpp.llama_memory_seq_rm(self.memory, 0, start_pos, -1)
        self.filled = self.n_ctx  # unknown until the decode succeeds: a failed one may leave rows
        (self._embd if rows.ndim == 2 else self._token)[:T] = rows
        self._pos[:T] = self._positions[start_pos : start_pos + T]
        self._want[:T] = all_logits
        self._want[T - 1] = 1
        self.batch.n_tokens = T
        status = llama_cpp.llama_decode(self.ctx, self.batch)
        if status != 0:
            raise RuntimeError(f"{self.path.name}: llama_decode failed with status {status}")
        self.filled = start_pos + T
        n_out = T if all_logits else 1
        return self._logits(n_out).copy()  # (n_out, V): llama.cpp's buffer is the next decode's

    def _logits(self, n_out: int) -> np.ndarray:
        """A view of llama.cpp's logits of the last decode, (n_out, V). The view is rebuilt only
        when llama.cpp moved its buffer: building one costs more than copying a row."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits(self.ctx)
        address = ctypes.addressof(pointer.contents)
        if address != self._logits_address or n_out > len(self._logits_view):
            self._logits_view = np.ctypeslib.as_array(pointer, shape=(n_out, self.vocab))
            self._logits_address = address
        return self._logits_view[:n_out]

    def layer_input(self, layer: int, n_tokens: int) -> np.ndarray:
        """The input of block `layer` for the last decode's tokens: (n_tokens, D)."""
        pointer = llama_ext.get_embeddings_layer_inp(self.ctx, layer)
        if not pointer:
            raise RuntimeError(f"{self.path.name}: llama.cpp kept no input of block {layer}")
        return np.ctypeslib.as_array(pointer, shape=(n_tokens * self.dim,)).reshape(n_tokens, self.dim)

    def final_hidden(self, n_rows: int) -> np.ndarray:
        """The final normed hidden state of the last decode's first n_rows output rows (those
        whose logits were asked for), with embeddings on: (n_rows, D)."""
        import llama_cpp

        pointer = llama_cpp.llama_get_embeddings(self.ctx)
        if not pointer:
            raise RuntimeError(f"{self.path.name}: llama.cpp kept no embeddings")
        return np.ctypeslib.as_array(pointer, shape=(n_rows * self.dim,)).reshape(n_rows, self.dim)

    def close(self) -> None:
        import llama_cpp

        if getattr(self, "ctx", None):
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            self.ctx = None


class _LlamaStepOutput:
    """Head 1's logits at the fed positions (the last one only for a prefill, see
    _LlamaStepModel.forward) and, on demand, heads 2..k's at one of them."""

    def __init__(self, step: "_LlamaStepModel", logits: np.ndarray, n_fed: int, start_pos: int, k: int):
        self.step, self.logits, self.start_pos, self.k = step, logits, start_pos, k
        self.first_row = n_fed - len(logits)  # fed position of logits[0]

    def next_logits(self, start: int = 0) -> np.ndarray:
        if start < self.first_row:
            raise ValueError(f"logits of fed position {start} were not computed (prefill: last position only)")
        return self.logits[start - self.first_row :]  # (T - start, V)

    def draft_logits(self, index: int, n: int | None = None) -> np.ndarray:
        return self.step.head_logits(self.start_pos + index, self.k if n is None else 1 + n)  # (n or k - 1, V)


class _LlamaStepModel:
    """The StepModel of speculative.decode over the main and head contexts."""

    def __init__(self, main: _Context, heads: list[_Context], trunk_layers: int, max_len: int, pad_single_rows: bool,
                 reads_final: bool = False):
        self.main, self.heads, self.trunk_layers = main, heads, trunk_layers
        # z is the final normed hidden state (llama.cpp's embeddings), not the last block's input
        self.reads_final = reads_final
        # llama.cpp's CPU kernels round a 1-row batch differently from a batch of 2 or more
        # rows (those all agree with each other and with a prefill, bit for bit). Quantized
        # activations turn that into logit differences (up to 0.05 at q8_0) that flip near-ties
        # between plain decoding (1 row a step) and verification (k rows). So in exact mode a
        # 1-token forward gets a second, throwaway row at start_pos + 1 (the main context has
        # a spare slot for it; the next forward overwrites it).
        self.pad_single_rows = pad_single_rows
        self.z = np.zeros((max_len, main.dim), dtype=np.float32)  # z of cached positions
        self.z_len = 0  # z[:z_len] is that of the cached positions 0..z_len-1
        self.head_fed = [0] * len(heads)  # positions whose z each head's cache holds
        self.capturing = False  # whether the main context keeps z
        self._set_capture(True)

    def _set_capture(self, capture: bool) -> None:
        if capture != self.capturing:
            if self.reads_final:
                import llama_cpp

                llama_cpp.llama_set_embeddings(self.main.ctx, capture)
            else:
                llama_ext.set_embeddings_layer_inp(self.main.ctx, self.trunk_layers, capture)
            self.capturing = capture

    def forward(self, tokens: Sequence[int], start_pos: int, k: int, all_rows: bool = True) -> _LlamaStepOutput:
        # z is kept where heads will draft from it (k > 1) and for prefills, so that a later
        # request with heads can reuse the prompt's cache (copying T rows of z costs nothing
        # next to a T-row forward). Steps without heads (plain or lookup drafts) do not keep it.
        prefill = not all_rows and len(tokens) > 1
        return self.run(tokens, start_pos, k, capture=bool(self.heads) and (k > 1 or prefill), all_rows=all_rows)

    def run(self, tokens: Sequence[int], start_pos: int, k: int, capture: bool, all_rows: bool = True) -> _LlamaStepOutput:
        """forward, saying whether to keep z of the fed positions."""
        T = len(tokens)
        # Of a prefill decode() reads head 1 at the last position only: unembedding every prompt
        # position would add ~25% to it (vocab 4096, dim 192). A prefill of at most k tokens is
        # unembedded at every row all the same, so that its last row rounds as a verify's does.
        rows = np.asarray(tokens, dtype=np.int32)
        padded = self.pad_single_rows and T == 1
        if padded:
            rows = np.append(rows, rows[0])
        self._set_capture(capture)
        self.z_len = min(self.z_len, start_pos)  # from start_pos on, the cache is rewritten
        # A padded batch's last row is the throwaway one: ask for every row's logits then. The
        # final hidden state is kept only for rows with logits: every row's, when it is z.
        every_row = all_rows or T <= k or padded or (capture and self.reads_final)
        logits = self.main.decode(start_pos, rows, all_logits=every_row)[:T]  # (T or 1, V)
        if capture:
            z = self.main.final_hidden(T) if self.reads_final else self.main.layer_input(self.trunk_layers, T)
            self.z[start_pos : start_pos + T] = z
            if self.z_len == start_pos:
                self.z_len = start_pos + T
        if self.heads:
            self.head_fed = [min(fed, start_pos) for fed in self.head_fed]  # the rest is stale
        return _LlamaStepOutput(self, logits, T, start_pos, k)

    def head_logits(self, position: int, k: int) -> np.ndarray:
        """Heads 2..k at `position`, after feeding each the z it has not seen up to there."""
        if position >= self.z_len:
            raise RuntimeError(f"z of position {position} was not kept (z is kept up to {self.z_len})")
        rows = []
        for h in range(k - 1):
            fed = min(self.head_fed[h], position)
            rows.append(self.heads[h].decode(fed, self.z[fed : position + 1], all_logits=False)[0])
            self.head_fed[h] = position + 1
        return np.stack(rows)  # (k - 1, V)

    def reset(self) -> None:
        self.head_fed = [0] * len(self.heads)
        self.z_len = 0


def _reads_final(main: Path, config) -> bool:
    """Whether z is the final hidden state rather than the last block's input. llama.cpp's
    graph of a FINAL_HIDDEN_ARCHS architecture fills no block input (asking for one aborts
    the process), so heads that read one cannot run on it: ModelFileError, and the auto
    engine serves the model with torch."""
    arch = gguf_arch(config)  # check_export made sure main.gguf declares it
    if arch not in FINAL_HIDDEN_ARCHS:
        return config.heads_read_final
    if config.n_future_tokens > 1 and not config.heads_read_final:
        raise ModelFileError(
            main, f"llama.cpp's {arch} graph keeps no block input, which these heads read "
                  f"(heads_read_final is off): only the torch engine runs them"
        )
    return True


class LlamaEngine:
    # Heads catch up from the kept z, so a call with another k still reuses the cached prefix.
    reuses_cache_across_k = True

    def __init__(self, model_dir: Path | str, settings: LlamaSettings = LlamaSettings()):
        model_dir = Path(model_dir)
        config, tokenizer_config, _ = read_config(model_dir)
        try:
            self.tokenizer = load_tokenizer(model_dir, tokenizer_config)
        except TokenizerError as e:
            raise ModelFileError(model_dir, str(e)) from None
        exported = available_quants(model_dir)
        # A base brought by the user keeps its own quantization (q5_k_m, ...), outside our list.
        preferred = [q for q in PREFERRED_QUANTS if q in exported] + exported
        quant = settings.quant or (preferred[0] if preferred else None)
        if quant is None:
            raise ModelFileError(
                model_dir / "gguf", f"no GGUF export (run `mtp-assistant models export {model_dir} --quant q8_0`)"
            )
        files = checked_export(model_dir, quant, config)
        check_min_context(model_dir, config.max_seq_len)
        # The weights this export was made from: llama.cpp never reads them, but a directory
        # whose model.safetensors is gone or damaged cannot be re-exported or run by torch.
        check_weights_header(model_dir, config)
        exact = settings.exact
        # f32 keys and values in exact mode, else llama.cpp's default f16; exact mode's padding
        # needs a spare slot; llama.cpp rounds a context up to a multiple of 256 positions.
        main_ctx = config.max_seq_len + (1 if exact else 0)
        n_ctx = -(-main_ctx // 256) * 256
        check_context_memory(model_dir, config, n_ctx, 4 if exact else 2)
        quiet_llama_logs()
        _backend_init()
        self.quant, self.settings, self.config = quant, settings, config
        self.exact = exact  # speculative output is plain output token for token (see LlamaSettings)
        self.files = files  # main.gguf, head-2.gguf, ...
        self.n_future = config.n_future_tokens
        self.max_seq_len = config.max_seq_len
        self.warnings: list[str] = []  # see base.Engine
        self.label = f"llama.cpp {quant}"
        self.threads = resolved_threads(settings)  # see base.Engine
        reads_final = _reads_final(files[0], config)
        contexts: list[_Context] = []
        try:
            contexts.append(_Context(files[0], settings, main_ctx, exact))
            for path in files[1:]:
                contexts.append(_Context(path, settings, config.max_seq_len, exact, embd_dim=config.dim))
            self._step = _LlamaStepModel(contexts[0], contexts[1:], config.n_trunk_layers, config.max_seq_len, exact,
                                         reads_final)
        except BaseException:
            for c in contexts:
                c.close()
            raise
        self._cached: list[int] = []  # tokens whose KV (and z) is valid, in position order
        self._lock = threading.Lock()  # one generation at a time on the shared caches
        # The "auto" drafter's: acceptance learned across calls (the heads' prior from the model's
        # card), a probed cost curve per k that decoding keeps measuring.
        self._planner: DraftPlanner = planner_for(model_dir)
        self._costs: dict[int, CostCurve] = {}
        try:
            self._probe(self.tokenizer.eot_id)
        except BaseException:
            self.close()
            raise

    def _probe(self, token: int) -> None:
        """One forward of every context: NaN or inf weights (quantized ones included, whose
        values the file check cannot see) give non-finite logits, which would otherwise
        decode as garbage or empty completions."""
        main = self._step.run([token], 0, 1, capture=True)
        rows = [("logits", self._step.main.path, main.next_logits())]
        rows.append(("block input z", self._step.main.path, self._step.z[:1]))
        if self.n_future > 1:
            heads = self._step.head_logits(0, self.n_future)
            rows += [("logits", c.path, heads[i]) for i, c in enumerate(self._step.heads)]
        self._step.reset()
        for what, path, values in rows:
            if not np.isfinite(values).all():
                raise ModelFileError(
                    path, f"a one-token forward gives non-finite {what} (NaN or inf): the weights are broken"
                )

    @classmethod
    def from_dir(
        cls, model_dir, quant: str | None = None, threads: int | None = None, device: str = "cpu", exact: bool = False,
        probe_dir: Path | None = None, batch_threads: int | None = None,
    ) -> "LlamaEngine":
        gpu_layers = 0 if device == "cpu" else -1
        settings = LlamaSettings(quant=quant, threads=threads, batch_threads=batch_threads, n_gpu_layers=gpu_layers,
                                 exact=exact, probe_dir=probe_dir)
        return cls(model_dir, settings)

    def generate(
        self,
        prompt: Sequence[int],
        config: GenerationConfig = GenerationConfig(),
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        prompt = checked_prompt(prompt, self.max_seq_len, self.config.vocab_size)
        k = forward_heads(config, self.n_future)
        with self._lock:
            planner = self._planned(k) if config.drafter == "auto" else None
            # At least the last prompt token is fed again: its logits start the decoding.
            start = min(common_prefix_length(prompt, self._cached), len(prompt) - 1) if config.reuse_prefix else 0
            if k > 1:  # the heads catch up from kept z: positions decoded without it are fed again
                start = min(start, self._step.z_len)
            self._cached = []  # invalid while the caches are being written
            outcome = decode(
                self._step, prompt, start, config, k, self.max_seq_len, self.tokenizer.token_bytes, cancel, planner
            )
            self._cached = (prompt + outcome.tokens)[: outcome.cached_len]
        text = result_text(self.tokenizer, outcome.tokens, config)
        return GenerationResult(outcome.tokens, text, outcome.stop_reason, outcome.stats, outcome.token_heads)

    def _planned(self, k: int) -> DraftPlanner:
        """The planner with the cost curve of decoding with k heads: from the probe file, or
        measured now (a few llama_decode calls of 1..8 rows after a prefix: well under a second
        on the shipped model)."""
        if k not in self._costs:
            s = self.settings
            key = probe_key(self.files[0], quant=self.quant, threads=s.threads, batch_threads=s.batch_threads,
                            exact=self.exact, k=k, gpu_layers=s.n_gpu_layers, heads=[p.name for p in self.files[1:k]],
                            prefix=probe_prefix(self.max_seq_len))
            self._costs[k] = cached_probe(s.probe_dir, key, lambda: self._probe_costs(k))
        self._planner.cost = self._costs[k]
        return self._planner

    def _probe_costs(self, k: int) -> CostCurve:
        self._cached = []
        self._step.reset()
        curve = probe_costs(self._step, k, prefix=probe_prefix(self.max_seq_len), token=self.tokenizer.eot_id)
        self._step.reset()  # the probe's positions are no prompt's
        return curve

    def measurement_step(self) -> _LlamaStepModel:
        """The step model over this engine's caches, emptied, for timing forwards directly
        (assistant/step_cost.py). The next generate() starts from an empty cache."""
        self._cached = []
        self._step.reset()
        return self._step

    def head_predictions(self, tokens: Sequence[int]) -> list[list[int]]:
        """Every head's argmax at every position of `tokens`, teacher-forced: n_future lists
        of len(tokens) ids (head i at position p predicts token p + i). What the bench scores
        head accuracy with when there are no torch weights."""
        tokens = list(tokens)
        if not 0 < len(tokens) <= self.max_seq_len:
            raise ValueError(f"{len(tokens)} tokens: head predictions need 1 to {self.max_seq_len}")
        with self._lock:
            self._cached = []
            step = self._step
            step.reset()
            # k = T: logits of every position
            predictions = [step.run(tokens, 0, len(tokens), capture=True).next_logits().argmax(-1).tolist()]
            for h, head in enumerate(step.heads):
                predictions.append(head.decode(0, step.z[: len(tokens)], all_logits=True).argmax(-1).tolist())
                step.head_fed[h] = len(tokens)
            return predictions

    def capture_z(self, tokens: Sequence[int]) -> np.ndarray:
        """z (the trunk output, or with heads_read_final the final normed hidden state) of a
        fresh prefill of `tokens`: (T, D). For checks against torch."""
        with self._lock:
            self._cached = []
            self._step.run(list(tokens), 0, 1, capture=True, all_rows=False)
            return self._step.z[: len(tokens)].copy()

    def close(self) -> None:
        for c in [self._step.main, *self._step.heads]:
            c.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
