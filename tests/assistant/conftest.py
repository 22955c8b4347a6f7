import shutil
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def code_repo(tmp_path) -> Path:
    """A small repository of real Python code: this project's model package, copied."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    for path in sorted((PROJECT / "models").glob("*.py")):
        shutil.copy(path, repo / "pkg" / path.name)
    return repo
