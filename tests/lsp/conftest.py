"""End-to-end fixtures: the real server (`python -m lsp`) over stdio, a tiny real model."""

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from models.checkpoint import save_model
from models.tokenizer import ByteTokenizer
from tests.assistant.engine.helpers import random_model

MODEL_SEED = 2  # a random model whose first tokens at the test cursor are no stop token


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 4-head byte model with random weights, saved the way the store keeps models."""
    return save_model(tmp_path_factory.mktemp("model") / "tiny", random_model(seed=MODEL_SEED), ByteTokenizer())


def server_config(model_dir: Path, home: Path, *extra: str) -> ClientServerConfig:
    return ClientServerConfig(
        server_command=[sys.executable, "-m", "lsp", "--model", str(model_dir), *extra],
        server_env={**os.environ, "MTP_ASSISTANT_HOME": str(home), "OMP_NUM_THREADS": "1"},
    )


async def start_client(config: ClientServerConfig, workspace: Path, options: dict | None = None):
    client = await config.start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True)),
            root_uri=workspace.as_uri(),
            initialization_options=options,
        )
    )
    return client


async def stats(client) -> dict:
    return plain(await client.protocol.send_request_async("mtp/stats", {}))


def plain(value):
    """pygls hands custom results back as namedtuples: make them dicts and lists again."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


async def wait_ready(client, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await stats(client)
        if result["ready"] or result["model_error"]:
            return result
        await asyncio.sleep(0.1)
    raise TimeoutError("the server did not load its model")


@pytest_asyncio.fixture
async def client(tiny_model_dir, tmp_path):
    """A client talking to a fresh server whose model is loaded."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    c = await start_client(server_config(tiny_model_dir, tmp_path / "home"), workspace, {"maxTokens": 12})
    await wait_ready(c)
    c.workspace_dir = workspace
    c.home = tmp_path / "home"
    yield c
    await c.shutdown_session()
    await c.stop()
