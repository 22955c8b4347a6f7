"""The shipped default model's recipe: which code it learns from, and how it is trained.

`make default-model` runs the whole recipe from nothing:

    python -m assistant.training.recipe gather DATA       # corpus: stdlib + pinned packages
    python -m assistant.training.recipe train DATA RUNS   # the STAGES, each an `mtp-assistant train`
    python -m assistant.training.recipe ship RUNS DATA    # copy the last stage's model into models/default

Training comes in stages so that the model can grow across sessions: each stage after the
first starts from the previous stage's model with a fresh learning-rate schedule, and a
stage that was interrupted resumes from its last checkpoint.

The shipped stage trains on an NVIDIA GPU (minutes there; days on a laptop CPU). Where the GPU
is another machine, as when this project was lent one for a few minutes: `gather` here, copy
DATA/train there, run `python -m assistant.training.recipe train DATA RUNS` with that
machine's CUDA build of torch (`--seconds S` fits a fresh schedule into S seconds of training),
copy RUNS/stage-1 back and `ship` here (the card's CPU measurements belong to this machine).

Sources are the running Python's standard library (PSF license) and the source of
permissively licensed packages fetched as pinned wheels from the package registry.
Held-out packages go to DATA/heldout and are never trained on; the model card's
held-out figures and the speed benchmark read them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from assistant.training.config import TRAIN_CONFIG_FILE, TrainConfig, start_command
from models import SHIPPED_MODEL_DIR


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    license: str


# Pinned so that the corpus (and so the model) is the same on every machine.
TRAIN_PACKAGES: tuple[Package, ...] = (
    Package("django", "5.2.19", "BSD-3-Clause"),
    Package("sqlalchemy", "2.1.9", "MIT"),
    Package("flask", "3.1.3", "BSD-3-Clause"),
    Package("werkzeug", "3.1.9", "BSD-3-Clause"),
    Package("jinja2", "3.1.6", "BSD-3-Clause"),
    Package("networkx", "3.6.1", "BSD-3-Clause"),
    Package("pydantic", "2.14.4", "MIT"),
    Package("rich", "15.0.0", "MIT"),
    Package("textual", "8.2.8", "MIT"),
    Package("pygments", "2.21.0", "BSD-2-Clause"),
    Package("setuptools", "84.2.1", "MIT"),
    Package("pytest", "9.2.0", "MIT"),
    Package("attrs", "26.1.0", "MIT"),
    Package("packaging", "26.4", "Apache-2.0 OR BSD-2-Clause"),
    Package("urllib3", "2.8.0", "MIT"),
    Package("httpx", "0.28.1", "BSD-3-Clause"),
    Package("starlette", "1.10.0", "BSD-3-Clause"),
    Package("fastapi", "0.165.0", "MIT"),
    Package("tornado", "6.6.1", "Apache-2.0"),
    Package("black", "26.10.1", "MIT"),
    Package("isort", "9.0.2", "MIT"),
    Package("more-itertools", "11.2.1", "MIT"),
    Package("toolz", "1.2.0", "BSD-3-Clause"),
    Package("marshmallow", "4.4.0", "MIT"),
    Package("markdown", "3.11.3", "BSD-3-Clause"),
    # Added for the GPU recipe (~125 MB more code, so that hundreds of millions of tokens
    # are a handful of epochs rather than dozens): scientific, tooling and web code.
    Package("pandas", "3.1.1", "BSD-3-Clause"),
    Package("scipy", "1.17.1", "BSD-3-Clause"),
    Package("scikit-learn", "1.9.1", "BSD-3-Clause"),
    Package("twisted", "26.10.0", "MIT"),
    Package("numpy", "2.4.6", "BSD-3-Clause"),
    Package("mypy", "2.4.1", "MIT"),
    Package("xarray", "2026.9.0", "Apache-2.0"),
    Package("dask", "2026.8.0", "BSD-3-Clause"),
    Package("sphinx", "9.0.4", "BSD-2-Clause"),
    Package("ipython", "9.18.1", "BSD-3-Clause"),
    Package("celery", "5.7.0", "BSD-3-Clause"),
    Package("prompt-toolkit", "3.0.53", "BSD-3-Clause"),
    Package("scrapy", "2.19.0", "BSD-3-Clause"),
    Package("aiohttp", "3.14.5", "Apache-2.0"),
    Package("alembic", "1.20.1", "MIT"),
    Package("gunicorn", "27.0.1", "MIT"),
    Package("kombu", "5.7.0", "BSD-3-Clause"),
    Package("jedi", "0.20.1", "MIT"),
    Package("openpyxl", "3.1.5", "MIT"),
    Package("babel", "2.19.0", "BSD-3-Clause"),
    Package("jsonschema", "4.26.0", "MIT"),
    Package("parso", "0.8.7", "MIT"),
    Package("pyyaml", "6.0.4", "MIT"),
    Package("sqlparse", "0.6.1", "BSD-3-Clause"),
)

# Whole packages the model never sees: the held-out set for evaluation and speed.
HELDOUT_PACKAGES: tuple[Package, ...] = (
    Package("requests", "2.34.2", "Apache-2.0"),
    Package("click", "8.5.1", "BSD-3-Clause"),
    Package("boltons", "26.2.0", "BSD-3-Clause"),
)

# Standard-library directories left out: test suites full of odd fixtures, the IDLE
# test harness, and the interpreter's own site-packages (other people's code).
STDLIB_EXCLUDED_DIRS = ("site-packages", "test", "idle_test", "tests", "__pycache__")

@dataclass(frozen=True)
class Stage:
    """One `mtp-assistant train` run on DATA/train; a stage after the first starts from the previous stage's model."""

    threads: int  # OMP_NUM_THREADS: CPU training is bit-for-bit repeatable only at a fixed thread count
    settings: dict[str, Any]  # TrainConfig fields; the recipe gives repo, out_dir and base_model
    device: str = "cpu"  # "cuda": the stage needs an NVIDIA GPU
    hardware: str = "2-core x86 CPU"  # what the shipped stage ran on, for the card

    def __post_init__(self) -> None:
        taken = {"repo", "out_dir", "base_model"} & set(self.settings)
        if taken:
            raise ValueError(f"a stage's settings cannot name {', '.join(sorted(taken))}: the recipe gives them")
        self.config(".", ".")  # a wrong name or value fails here, not when the stage's turn comes

    def config(self, repo: str | Path, out_dir: str | Path, base_model: str | Path | None = None) -> TrainConfig:
        base = str(base_model) if base_model is not None else None
        return TrainConfig.from_dict({**self.settings, "repo": str(repo), "out_dir": str(out_dir), "base_model": base})


# The shipped model's training: one GPU run from scratch (see models/default/CARD.md for
# the numbers that chose it). The model is as large as the 60 MB the repository allows
# (fp32 safetensors + q8_0 GGUF) and stays within the language server's CPU latency goal;
# 128 x 512-token windows a step, each row from a different file. The schedule's 5656 steps are
# what `train --seconds 400` fitted on the H200 it ran on (1.16M tokens/s measured); the lent
# time ran out at step 5340, and the shipped model is the step-5000 checkpoint (lr already
# within 1.3x of its floor), hence stop_after.
STAGES: tuple[Stage, ...] = (
    Stage(threads=4, device="cuda", hardware="1x NVIDIA H200", settings=dict(
        tokenizer="bpe", bpe_vocab_size=4096, preset="small",
        model_overrides=dict(dim=256, n_layers=10, n_heads=8, n_future_tokens=4, max_seq_len=512),
        seq_len=512, batch_size=128, lr=2e-3, warmup_steps=200, window_lanes=0, data_workers=14, device="cuda",
        eval_every=500, checkpoint_every=500, seed=0, steps=5656, stop_after=5000,
    )),
)


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


# The llama.cpp export shipped next to the safetensors (the engine every command picks).
SHIPPED_QUANT = "q8_0"


def stage_dir(runs_root: Path, index: int) -> Path:
    return runs_root / f"stage-{index + 1}"


def stage_config(index: int, data_dir: Path, runs_root: Path) -> TrainConfig:
    """The settings of stage `index` (0-based), started from nothing."""
    base = stage_dir(runs_root, index - 1) / "model" if index > 0 else None
    return STAGES[index].config(data_dir / "train", stage_dir(runs_root, index), base)


def fitting_steps(stage: Stage, seconds: float) -> int:
    """How many of `stage`'s optimizer steps fit in `seconds` of training on this machine,
    from the measured step time of its model shape (a fifth kept back for evaluations,
    checkpoints and the data stream, which the measurement leaves out)."""
    from assistant.training.throughput import measure
    from assistant.training.trainer import resolve_device
    from models.config import PRESETS

    c = stage.config(".", ".")
    model = PRESETS[c.preset].replace(**{**c.model_overrides, "vocab_size": c.bpe_vocab_size, "max_seq_len": c.seq_len})
    result = measure(model, c.batch_size, c.seq_len, resolve_device(c.device))
    print(f"throughput: {json.dumps(result)}", file=sys.stderr)
    return max(1, int(0.8 * seconds / result["step_s"]))


def train_stages(data_dir: Path, runs_root: Path, seconds: float | None = None) -> Path:
    """Run the stages after the last finished one (resuming a started one); return the last
    stage's model. On a machine without the earlier runs, copying models/default (the last
    shipped stage's model) to RUNS/stage-N/model lets stage N + 1 start from it.

    `seconds` time-boxes a GPU lent for minutes: a stage started fresh gets as many steps as
    fit (its train_config.json records the number; copy it into STAGES to ship the result)."""
    import os

    import torch

    finished = [i for i in range(len(STAGES)) if (stage_dir(runs_root, i) / "model" / "config.json").is_file()]
    for index in range(max(finished, default=-1) + 1, len(STAGES)):
        stage, out = STAGES[index], stage_dir(runs_root, index)
        if stage.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"stage {index + 1} trains on an NVIDIA GPU and this machine has none: run "
                             f"`python -m assistant.training.recipe train` where one is and copy {out} back here")
        if (out / TRAIN_CONFIG_FILE).is_file():
            command = [sys.executable, "-m", "assistant.cli", "train", "--resume", str(out), "--quiet"]
        else:
            config = stage_config(index, data_dir, runs_root)
            if seconds is not None:  # a new schedule of the steps that fit, run to its end
                config = dataclasses.replace(config, steps=fitting_steps(stage, seconds), stop_after=None)
            command = start_command(config)
        print(f"stage {index + 1}/{len(STAGES)}: {' '.join(command[2:])}", file=sys.stderr)
        # TOKENIZERS_PARALLELISM: the data workers fork after the tokenizer's own thread pool ran.
        env = {**os.environ, "OMP_NUM_THREADS": str(stage.threads), "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run(command, env=env, check=True)
    return stage_dir(runs_root, len(STAGES) - 1) / "model"


def _copy_python_files(src: Path, dst: Path, excluded_dirs: tuple[str, ...] = ()) -> int:
    """Copy every .py file under src to dst (same relative paths); return the bytes copied."""
    total = 0
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if any(part in excluded_dirs for part in rel.parts[:-1]):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        total += path.stat().st_size
    return total


def _fetch_wheel(package: Package, download_dir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--dest", str(download_dir), f"{package.name}=={package.version}"],
        check=True,
    )
    prefix = package.name.replace("-", "_").lower() + "-" + package.version
    for wheel in download_dir.glob("*.whl"):
        if wheel.name.lower().startswith(prefix):
            return wheel
    raise FileNotFoundError(f"pip downloaded no wheel for {package.name}=={package.version}")


def _extract_python_files(wheel: Path, dst: Path) -> int:
    """Unpack the .py files of a wheel (never its binaries or metadata) into dst."""
    total = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            parts = Path(info.filename).parts
            if not info.filename.endswith(".py") or any(p.endswith(".dist-info") for p in parts):
                continue
            target = dst / Path(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            total += info.file_size
    return total


def gather(data_dir: Path) -> dict:
    """Build DATA/train and DATA/heldout from nothing; write DATA/sources.json and return it."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    train_dir, heldout_dir = data_dir / "train", data_dir / "heldout"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
    sources: dict = {"train": [], "heldout": []}
    stdlib_bytes = _copy_python_files(stdlib, train_dir / "stdlib", STDLIB_EXCLUDED_DIRS)
    sources["train"].append(
        {"name": "python-stdlib", "version": version, "license": "PSF-2.0", "bytes": stdlib_bytes,
         "excluded_dirs": list(STDLIB_EXCLUDED_DIRS)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        for split, packages, root in (("train", TRAIN_PACKAGES, train_dir), ("heldout", HELDOUT_PACKAGES, heldout_dir)):
            for package in packages:
                wheel = _fetch_wheel(package, Path(tmp))
                size = _extract_python_files(wheel, root / package.name)
                sources[split].append({**asdict(package), "bytes": size, "wheel": wheel.name})
                print(f"{split:8s} {package.name}=={package.version} {size / 1e6:.1f} MB", file=sys.stderr)
    (data_dir / "sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    return sources


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


def _card_examples(engine) -> list[dict[str, str]]:
    """What the language server shows at each example's cursor: its prompt, rules and default
    settings (greedy), without the time cap, so that the card does not depend on the machine."""
    from assistant.completion.service import CompletionService
    from assistant.completion.settings import CompletionSettings

    service = CompletionService(engine, CompletionSettings(time_cap_ms=600_000, workspace_index=False))
    examples = []
    for case in CARD_EXAMPLES:
        prefix, suffix = case.split("|")
        examples.append({"prefix": prefix, "suffix": suffix, "completion": service.complete(prefix, suffix).text})
    return examples


def _stage_summary(run_dir: Path) -> dict:
    """What one training run did, from its train_config.json and metrics.jsonl."""
    import statistics

    train_config = json.loads((run_dir / "train_config.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_records = [r for r in records if r["split"] == "train"]
    steps = train_records[-1]["step"]
    return {
        "run": run_dir.name,
        "base_model": train_config.get("base_model"),
        "steps": steps,
        "schedule_steps": train_config["steps"],  # more than steps: a run stopped early (--stop-after)
        "tokens_seen": steps * train_config["batch_size"] * train_config["seq_len"],
        "wall_hours": (train_records[-1]["time"] - train_records[0]["time"]) / 3600,
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in train_records),
        "lr": train_config["lr"],
        "seed": train_config["seed"],
        "window_lanes": train_config.get("window_lanes", 1),
        "final_val": next((r for r in reversed(records) if r["split"] == "val"), None),
    }


def ship(stage_dirs: list[Path], data_dir: Path, dest: Path = SHIPPED_MODEL_DIR, humaneval_limit: int | None = None,
         bench_limit: int = 40, next_line_cases: int = 200) -> dict:
    """Copy the last stage's model into `dest` and measure everything its card reports."""
    import time

    from assistant.bench import BenchConfig, directory_prompts, run_bench
    from assistant.engine import load_engine
    from assistant.evals.humaneval import run_humaneval
    from assistant.evals.next_line import line_cases, run_next_line
    from assistant.training.evaluation import evaluate_on_repo
    from models.gguf_export import export_model

    run_dir = stage_dirs[-1]
    model_dir = run_dir / "model"
    train_config = json.loads((run_dir / "train_config.json").read_text())
    # A stage trained on another machine (its run is gone) is described by the card shipped then.
    shipped_stages = json.loads((dest / "card.json").read_text())["training"].get("stages", []) \
        if (dest / "card.json").is_file() else []
    stages = []
    for index, stage_run in enumerate(stage_dirs):
        if (stage_run / "metrics.jsonl").is_file():
            stages.append(_stage_summary(stage_run))
        elif index < len(shipped_stages):
            stages.append(shipped_stages[index])
        else:
            raise FileNotFoundError(f"{stage_run}: no metrics.jsonl, and the shipped card does not describe stage {index + 1}")
    # Thread count and hardware are the recipe's, not in the run's files.
    recipe_stages = STAGES if len(stages) == len(STAGES) else (None,) * len(stages)
    for stage, recipe_stage in zip(stages, recipe_stages):
        stage["threads"] = recipe_stage.threads if recipe_stage else None
        stage["hardware"] = recipe_stage.hardware if recipe_stage else None
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json"):
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, dest / name)
    config = json.loads((model_dir / "config.json").read_text())
    # RoPE tables are computed, not stored: the context the model was trained at is its context.
    config["model"]["max_seq_len"] = train_config["seq_len"]
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # The llama.cpp files of the previous weights no longer match: export the new ones.
    shutil.rmtree(dest / "gguf", ignore_errors=True)
    export_model(dest, SHIPPED_QUANT)

    heldout = data_dir / "heldout"
    engine = load_engine(dest, "torch")
    started = time.time()
    heads = evaluate_on_repo(dest, heldout, "all", train_config["seq_len"], max_windows=256)
    lines = run_next_line(engine, line_cases(heldout, next_line_cases))
    humaneval = run_humaneval(engine, humaneval_limit)
    # Side by side on the same prompts: the default engine (llama.cpp) and the torch reference.
    engines = {f"llama {SHIPPED_QUANT}": load_engine(dest, "llama", quant=SHIPPED_QUANT, threads=1), "torch": engine}
    bench = run_bench(engines, engine.tokenizer, directory_prompts(heldout, bench_limit),
                      BenchConfig(max_new_tokens=64, max_prompt_tokens=256), accuracy_model=engine.model,
                      baseline="torch")
    card = {
        "sources": json.loads((data_dir / "sources.json").read_text()),
        "model_config": config["model"],
        "train_config": train_config,
        "training": {
            "steps": sum(stage["steps"] for stage in stages),
            "tokens_seen": sum(stage["tokens_seen"] for stage in stages),
            "wall_hours": sum(stage["wall_hours"] for stage in stages),
            "final_val": stages[-1]["final_val"],
            "stages": stages,
        },
        "heldout_heads": {"tokens": heads.tokens, "loss_per_head": heads.stats.loss.tolist(),
                          "accuracy_per_head": heads.stats.accuracy.tolist()},
        "next_line": {"cases": lines.total, "exact_match": lines.exact_match, "examples": lines.examples},
        "humaneval": {"problems": len(humaneval.passed) + len(humaneval.failed), "pass_at_1": humaneval.pass_at_1,
                      "passed": humaneval.passed},
        "bench": bench.to_json(),
        "bench_table": bench.table(),
        "examples": _card_examples(engine),
        "evaluation_minutes": (time.time() - started) / 60,
    }
    (dest / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (dest / "CARD.md").write_text(render_card(card))
    return card


def _stage_row(number: int, stage: dict) -> str:
    val = f"{stage['final_val']['loss_per_head'][0]:.3f}" if stage["final_val"] else "-"
    rows_from = "consecutive windows" if stage["window_lanes"] == 1 else "one file per row"
    steps = stage["steps"]
    if stage.get("schedule_steps", steps) != steps:
        steps = f"{steps} of {stage['schedule_steps']}"
    return (f"| {number} | {steps} | {stage['tokens_seen'] / 1e6:.1f}M | {stage['wall_hours']:.2f} | "
            f"{stage.get('hardware') or '?'} | {stage['threads'] or '?'} | {stage['median_tokens_per_s']:.0f} | {stage['lr']} | {stage['seed']} | "
            f"{rows_from} | {val} |")


def render_card(card: dict) -> str:
    """CARD.md: what the shipped model is, what it learned from, and what it scores."""
    t, tc = card["training"], card["train_config"]
    heads, lines, humaneval = card["heldout_heads"], card["next_line"], card["humaneval"]
    config = card["model_config"]
    out = [
        "# The default model",
        "",
        f"A {len(heads['loss_per_head'])}-head multi-token-prediction code model (BPE vocabulary "
        f"{config['vocab_size']}, dim {config['dim']}, {config['n_layers']} blocks in all: "
        f"{config['n_layers'] - config['n_future_tokens'] + 1} in `layers` incl. head 1, "
        f"{config['n_future_tokens'] - 1} extra heads), trained from scratch by this project's "
        "own command (`make default-model`; the recipe is `assistant/training/recipe.py`).",
        "",
        "## Training",
        "",
        f"{t['steps']} steps = {t['tokens_seen'] / 1e6:.1f}M tokens seen in {t['wall_hours']:.2f} h "
        f"({', '.join(sorted({s.get('hardware') or '?' for s in t['stages']}))}), in {len(t['stages'])} stage(s); each stage after the first starts from the previous one's model "
        "with a fresh warmup + cosine schedule (AdamW, FIM rate "
        f"{tc['fim_rate']}, half SPM, {tc['batch_size']} sequences x {tc['seq_len']} tokens a step):",
        "",
        "| stage | steps | tokens | hours | hardware | threads | median tokens/s | peak lr | seed | batch rows from | val loss head 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[_stage_row(i, stage) for i, stage in enumerate(t["stages"], 1)],
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
        for src in card["sources"][split]:
            out.append(f"| {split} | {src['name']} | {src['version']} | {src['license']} | {src['bytes'] / 1e6:.1f} |")
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
    for i, (loss, acc) in enumerate(zip(heads["loss_per_head"], heads["accuracy_per_head"])):
        out.append(f"| {i + 1} | t+{i + 1} | {loss:.3f} | {acc:.1%} |")
    out += [
        "",
        f"- Next-line exact match: **{lines['exact_match']:.1%}** of {lines['cases']} cursor positions at line starts (greedy, the last token before the cursor healed).",
        f"- HumanEval pass@1 (greedy, {humaneval['problems']} problems): **{humaneval['pass_at_1']:.1%}** "
        f"({len(humaneval['passed'])} solved{': ' + ', '.join(humaneval['passed']) if humaneval['passed'] else ''}).",
        "",
        "## Speed (greedy, held-out prompts, 64 new tokens, one thread; llama.cpp is the default engine)",
        "",
        card["bench_table"],
        "",
        f"{card['bench']['prompts']} prompts; speculative output differed from plain in "
        f"{card['bench']['mismatches']} runs.",
        "",
        "## Ten examples (chosen before looking at any output)",
        "",
        "The cursor is at the end of the text shown; the completion is what the language server shows there "
        "with its default settings (greedy; one line, or several after a block opener or an opened docstring; "
        "the last token before the cursor healed), from the torch engine.",
        "",
    ]
    for i, example in enumerate(card["examples"], 1):
        shown = example["prefix"].rstrip("\n").split("\n")[-3:]
        out += [f"{i}. ```", *[f"   {line}" for line in shown], "   ```"]
        completion = example["completion"]
        if "\n" in completion:
            out += ["   -> ```", *[f"   {line}" for line in completion.split("\n")], "   ```", ""]
        else:
            out += [f"   -> `{completion}`", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assistant.training.recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gather", help="download and lay out the training and held-out code")
    g.add_argument("data_dir", type=Path)
    t = sub.add_parser("train", help="run (or resume) every training stage: RUNS/stage-1, RUNS/stage-2, ...")
    t.add_argument("data_dir", type=Path)
    t.add_argument("runs_root", type=Path)
    t.add_argument("--seconds", type=float, help="time-box a fresh stage: as many steps as fit in this many seconds")
    sh = sub.add_parser("ship", help="copy the last stage's model to models/default and measure its card")
    sh.add_argument("runs_root", type=Path)
    sh.add_argument("data_dir", type=Path)
    sh.add_argument("--dest", type=Path, default=SHIPPED_MODEL_DIR)
    sh.add_argument("--humaneval-limit", type=int)
    sh.add_argument("--bench-limit", type=int, default=40)
    sh.add_argument("--next-line-cases", type=int, default=200)
    c = sub.add_parser("card", help="re-render CARD.md from card.json")
    c.add_argument("model_dir", type=Path, nargs="?", default=SHIPPED_MODEL_DIR)
    c.add_argument("--examples", action="store_true",
                   help="first recompute the ten examples (after a change to the completion rules)")
    args = parser.parse_args(argv)
    if args.command == "gather":
        sources = gather(args.data_dir)
        train_mb = sum(s["bytes"] for s in sources["train"]) / 1e6
        heldout_mb = sum(s["bytes"] for s in sources["heldout"]) / 1e6
        print(f"train {train_mb:.1f} MB, held-out {heldout_mb:.1f} MB -> {args.data_dir}")
    elif args.command == "ship":
        stage_dirs = [stage_dir(args.runs_root, i) for i in range(len(STAGES))]
        card = ship(stage_dirs, args.data_dir, args.dest, args.humaneval_limit, args.bench_limit,
                    args.next_line_cases)
        print(json.dumps({k: card[k] for k in ("heldout_heads", "next_line", "humaneval")}, indent=1)[:3000])
        print(card["bench_table"])
    elif args.command == "card":
        card = json.loads((args.model_dir / "card.json").read_text())
        if args.examples:
            from assistant.engine import load_engine

            card["examples"] = _card_examples(load_engine(args.model_dir, "torch"))
            (args.model_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        (args.model_dir / "CARD.md").write_text(render_card(card))
    elif args.command == "train":
        print(train_stages(args.data_dir, args.runs_root, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
