import shutil
from pathlib import Path

import pytest

from assistant.training.trainer import TrainConfig, train
from models.checkpoint import load_model
from tests.assistant.engine.helpers import repetitive_code

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def code_repo(tmp_path) -> Path:
    """A small repository of real Python code: this project's model package, copied."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    for path in sorted((PROJECT / "models").glob("*.py")):
        shutil.copy(path, repo / "pkg" / path.name)
    return repo


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A 4-head byte model trained for seconds on repetitive code: its heads agree often."""
    repo = tmp_path_factory.mktemp("repo")
    body = repetitive_code()
    (repo / "a.py").write_text(body)
    (repo / "b.py").write_text(body.replace("add", "sub").replace("+", "-"))
    out = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(
        repo=str(repo), out_dir=str(out), model_overrides={"dim": 48, "n_layers": 5, "n_heads": 4, "max_seq_len": 256},
        steps=120, batch_size=8, seq_len=96, lr=5e-3, warmup_steps=10, fim_rate=0.0, eval_every=1000,
        checkpoint_every=1000, device="cpu",
    )
    return load_model(train(config, show_progress=False)), body
