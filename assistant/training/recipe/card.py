"""CARD.md: the shipped model's card, rendered from its card.json (a ModelCard)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from assistant.training.recipe.model_card import CARD_FILE, CardExample, ModelCard, StageSummary

# Why this configuration, for the card (figures from BENCHMARKS.md, where each is measured).
WHY_THIS_MODEL = """\
- BPE with 4 heads, not bytes with 8 (the paper's two configurations): a line of code is ~12 BPE
  tokens against ~40 bytes, so a completion needs ~3.4x fewer forward passes, and on a CPU the BPE
  model learned from ~3,600 bytes of code a second against ~400 for a byte model of the same size.
  4 BPE heads write 2.0 tokens = ~6.6 bytes of code a forward; an 8-byte model would need
  6.6 of its 8 drafts accepted every step to match (the paper's 7B byte model reached 7.0).
- dim 256 x 10 blocks (10.1M parameters), the largest that fits the repository's 60 MB for the
  model directory (fp32 safetensors 40.5 MB + q8_0 GGUF files 14.5 MB; dim 256 x 12 blocks would
  be 59 MB) while the language server's latency stays far inside its goal (p50 under 50 ms):
  replaying an edit session, p50 4.4 ms and p95 39 ms per completion on one CPU thread.
- 512-token context: a completion's prompt (prefix, suffix, snippets) fits, and a cold prefill
  (the first completion in a file) stays under ~0.35 s on one thread (331 tokens: 0.23 s).
"""


# Ten easy cases for the card, written down before any output of the model was seen.
# "|" marks the cursor; the completion is what the language server would show there.
CARD_EXAMPLES: tuple[str, ...] = (
    'print("hello, world"|\n',
    "import os\nimport sys\n\n\ndef main():\n    args = sys.argv[1:]\n    for arg in args:\n        |\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = |\n",
    'if __name__ == "__main__":\n    |\n',
    "def read_lines(path):\n    with open(path) as f:\n        return |\n",
    'def add(a, b):\n    """|\n',
    "import os\n\n\ndef config_path(name):\n    return os.path.join(|\n",
    "def parse_int(text):\n    try:\n        return int(text)\n    except ValueError:\n        |\n",
    "numbers = [1, 2, 3, 4]\nsquares = [n * n for n in |\n",
    "import logging\n\nlogger = logging.|\n",
)


def card_examples(engine) -> list[CardExample]:
    """What the language server shows at each example's cursor: its prompt, rules and default
    settings (greedy), without the time cap, so that the card does not depend on the machine."""
    from assistant.completion.service import CompletionService
    from assistant.completion.settings import CompletionSettings

    service = CompletionService(engine, CompletionSettings(time_cap_ms=600_000, workspace_index=False))
    examples = []
    for case in CARD_EXAMPLES:
        prefix, suffix = case.split("|")
        examples.append(CardExample(prefix, suffix, service.complete(prefix, suffix).text))
    return examples


def _stage_row(number: int, stage: StageSummary) -> str:
    val = f"{stage.final_val['loss_per_head'][0]:.3f}" if stage.final_val else "-"
    rows_from = "consecutive windows" if stage.window_lanes == 1 else "one file per row"
    steps: int | str = stage.steps
    if stage.schedule_steps is not None and stage.schedule_steps != stage.steps:
        steps = f"{stage.steps} of {stage.schedule_steps}"
    return (f"| {number} | {steps} | {stage.tokens_seen / 1e6:.1f}M | {stage.wall_hours:.2f} | "
            f"{stage.hardware or '?'} | {stage.threads or '?'} | {stage.median_tokens_per_s:.0f} | {stage.lr} | {stage.seed} | "
            f"{rows_from} | {val} |")


def render_card(card: ModelCard) -> str:
    """CARD.md: what the shipped model is, what it learned from, and what it scores."""
    t, tc = card.training, card.train_config
    heads, lines, humaneval = card.heldout_heads, card.next_line, card.humaneval
    config = card.model_config
    out = [
        "# The default model",
        "",
        f"A {len(heads.loss_per_head)}-head multi-token-prediction code model (BPE vocabulary "
        f"{config.vocab_size}, dim {config.dim}, {config.n_layers} blocks in all: "
        f"{config.n_layers - config.n_future_tokens + 1} in `layers` incl. head 1, "
        f"{config.n_future_tokens - 1} extra heads), trained from scratch by this project's "
        "own command (`make default-model`; the recipe is `assistant/training/recipe/`).",
        "",
        "## Training",
        "",
        f"{t.steps} steps = {t.tokens_seen / 1e6:.1f}M tokens seen in {t.wall_hours:.2f} h "
        f"({', '.join(sorted({s.hardware or '?' for s in t.stages}))}), in {len(t.stages)} stage(s); each stage after the first starts from the previous one's model "
        "with a fresh warmup + cosine schedule (AdamW, FIM rate "
        f"{tc['fim_rate']}, half SPM, {tc['batch_size']} sequences x {tc['seq_len']} tokens a step):",
        "",
        "| stage | steps | tokens | hours | hardware | threads | median tokens/s | peak lr | seed | batch rows from | val loss head 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[_stage_row(i, stage) for i, stage in enumerate(t.stages, 1)],
        "",
        "- Determinism: the corpus is pinned (below); tokenizer training and CPU training at the stage's thread count "
        "are deterministic for a given seed on the same torch build; another CPU or thread count can round differently. "
        "GPU training (bf16 autocast) is not bit-for-bit repeatable: cuBLAS and the attention kernels' backward "
        "reduce in a varying order, so a rerun gives a model of the same quality, not the same bytes.",
        "",
        "## Why this model",
        "",
        WHY_THIS_MODEL,
        "## Data and licenses",
        "",
        "| split | source | version | license | MB of .py |",
        "|---|---|---|---|---|",
    ]
    for split in ("train", "heldout"):
        for src in getattr(card.sources, split):
            out.append(f"| {split} | {src.name} | {src.version} | {src.license} | {src.bytes / 1e6:.1f} |")
    out += [
        "",
        "Held-out packages are whole packages the model never trained on; every figure below is measured on them "
        "(HumanEval aside).",
        "",
        "## Scores (held-out)",
        "",
        "| head | predicts | loss | top-1 accuracy |",
        "|---|---|---|---|",
    ]
    for i, (loss, acc) in enumerate(zip(heads.loss_per_head, heads.accuracy_per_head)):
        out.append(f"| {i + 1} | t+{i + 1} | {loss:.3f} | {acc:.1%} |")
    out += [
        "",
        f"- Next-line exact match: **{lines.exact_match:.1%}** of {lines.cases} cursor positions at line starts (greedy, the last token before the cursor healed).",
        f"- HumanEval pass@1 (greedy, {humaneval.problems} problems): **{humaneval.pass_at_1:.1%}** "
        f"({len(humaneval.passed)} solved{': ' + ', '.join(humaneval.passed) if humaneval.passed else ''}).",
        "",
        "## Speed (greedy, held-out prompts, 64 new tokens, one thread; llama.cpp is the default engine)",
        "",
        card.bench_table,
        "",
        f"{card.bench.prompts} prompts; speculative output differed from plain in "
        f"{card.bench.mismatches} runs.",
        "",
        "## Ten examples (chosen before looking at any output)",
        "",
        "The cursor is at the end of the text shown; the completion is what the language server shows there "
        "with its default settings (greedy; one line, or several after a block opener or an opened docstring; "
        "the last token before the cursor healed), from the torch engine.",
        "",
    ]
    for i, example in enumerate(card.examples, 1):
        shown = example.prefix.rstrip("\n").split("\n")[-3:]
        out += [f"{i}. ```", *[f"   {line}" for line in shown], "   ```"]
        completion = example.completion
        if "\n" in completion:
            out += ["   -> ```", *[f"   {line}" for line in completion.split("\n")], "   ```", ""]
        else:
            out += [f"   -> `{completion}`", ""]
    return "\n".join(out) + "\n"


def rerender(model_dir: Path, recompute_examples: bool = False) -> None:
    """Write CARD.md from card.json, after recomputing the ten examples if asked."""
    card = ModelCard.read(model_dir / CARD_FILE)
    if recompute_examples:
        from assistant.engine import load_engine

        card = dataclasses.replace(card, examples=card_examples(load_engine(model_dir, "torch")))
        card.write(model_dir / CARD_FILE)
    (model_dir / "CARD.md").write_text(render_card(card))
