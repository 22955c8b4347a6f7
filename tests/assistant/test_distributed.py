"""Data-parallel training under torchrun (gloo on CPU) matches one process."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from assistant.training.metrics import read_metrics
from models.checkpoint import load_model

PROJECT = Path(__file__).resolve().parents[2]
ARGS = ["--dim", "32", "--n-layers", "4", "--n-heads", "4", "--n-future", "2", "--seq-len", "32",
        "--batch-size", "4", "--lr", "3e-3", "--warmup", "1", "--steps", "4", "--eval-every", "2",
        "--checkpoint-every", "2", "--quiet", "--device", "cpu"]


def run(launcher: list[str], out: Path, repo: Path) -> None:
    cmd = [*launcher, "-m", "assistant.cli", "train", str(repo), "--out", str(out), *ARGS]
    proc = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_gloo_ranks_give_the_loss_curve_of_one_process(code_repo, tmp_path):
    run([sys.executable], tmp_path / "single", code_repo)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], tmp_path / "ddp", code_repo)

    single = read_metrics(tmp_path / "single" / "metrics.jsonl")
    ddp = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in single] == [r["step"] for r in ddp]
    for a, b in zip(single, ddp):
        assert a["split"] == b["split"]
        assert a["loss_per_head"] == pytest.approx(b["loss_per_head"], rel=1e-4), a["step"]
    a, b = load_model(tmp_path / "single" / "model").model, load_model(tmp_path / "ddp" / "model").model
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3, msg=name)
