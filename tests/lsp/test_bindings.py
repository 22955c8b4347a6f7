"""The language server serves a workspace with the model bound to its repository."""

import os
import sys

import pytest
from pytest_lsp import ClientServerConfig

from assistant.store import ModelStore
from models.checkpoint import save_model
from models.tokenizer import ByteTokenizer
from tests.assistant.engine.helpers import random_model
from tests.lsp.conftest import start_client, wait_ready

pytestmark = pytest.mark.asyncio


def _config(home, *extra) -> ClientServerConfig:
    # No --model: the server picks the model itself.
    return ClientServerConfig(
        server_command=[sys.executable, "-m", "lsp", *extra],
        server_env={**os.environ, "MTP_ASSISTANT_HOME": str(home), "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture
def bound_store(tmp_path, tiny_model_dir):
    store = ModelStore(tmp_path / "home")
    store.add(tiny_model_dir, "tiny", make_default=True)
    store.add(save_model(tmp_path / "mine", random_model(seed=5), ByteTokenizer()), "mine")
    workspace = tmp_path / "repo"
    (workspace / "sub").mkdir(parents=True)
    store.bind(workspace, "mine")
    return store, workspace


async def _served_model(home, workspace, options=None, *extra) -> str:
    client = await start_client(_config(home, *extra), workspace, options)
    try:
        result = await wait_ready(client)
        assert result["model_error"] is None
        return result["model"]
    finally:
        await client.shutdown_session()
        await client.stop()


async def test_the_workspace_binding_serves_and_an_explicit_model_wins(bound_store):
    store, workspace = bound_store
    # A folder inside the repository is served by the repository's model.
    assert await _served_model(store.root, workspace / "sub") == str(store.models_dir / "mine")
    # The editor's `model` setting wins.
    assert await _served_model(store.root, workspace, {"model": "tiny"}) == str(store.models_dir / "tiny")


async def test_an_unbound_workspace_gets_the_default(bound_store, tmp_path):
    store, _ = bound_store
    (tmp_path / "other").mkdir()
    assert await _served_model(store.root, tmp_path / "other") == str(store.models_dir / "tiny")
