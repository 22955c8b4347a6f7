"""The training stages: each an `mtp-assistant train` run on DATA/train, a stage after the
first starting from the previous stage's model with a fresh learning-rate schedule."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.training.config import TRAIN_CONFIG_FILE, TrainConfig, start_command


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
