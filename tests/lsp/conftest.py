"""End-to-end fixtures: the real server (`python -m lsp`) over stdio, a tiny real model."""

import asyncio
import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from models.checkpoint import save_model
from models.config import ModelConfig
from models.tokenizer import ByteTokenizer
from models.transformer import MTPTransformer
from tests.assistant.engine.helpers import random_model

MODEL_SEED = 2  # a random model whose first tokens at the test cursor are no stop token


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 4-head byte model with random weights, saved the way the store keeps models."""
    return save_model(tmp_path_factory.mktemp("model") / "tiny", random_model(seed=MODEL_SEED), ByteTokenizer())


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory) -> Path:
    """A wider random model with a long context: its prefill of a long document takes
    long enough (about a second on one thread) to cancel a request during it."""
    import torch

    torch.manual_seed(0)
    config = ModelConfig(dim=256, n_layers=6, n_heads=4, vocab_size=261, n_future_tokens=4, max_seq_len=4096)
    return save_model(tmp_path_factory.mktemp("model") / "slow", MTPTransformer(config).eval(), ByteTokenizer())


def server_config(model_dir: Path, home: Path, *extra: str) -> ClientServerConfig:
    return ClientServerConfig(
        server_command=[sys.executable, "-m", "lsp", "--model", str(model_dir), *extra],
        server_env={**os.environ, "MTP_ASSISTANT_HOME": str(home), "OMP_NUM_THREADS": "1"},
    )


async def start_client(config: ClientServerConfig, workspace: Path, options: dict | None = None, encodings=None):
    client = await config.start()
    client.initialize_result = await client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(
                window=types.WindowClientCapabilities(work_done_progress=True),
                general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
            ),
            root_uri=workspace.as_uri(),
            initialization_options=options,
        )
    )
    return client


async def stats(client) -> dict:
    return plain(await client.protocol.send_request_async("mtp/stats", {}))


async def send_raw(client, method: str, params) -> object:
    """A request with params exactly as given (the client would refuse malformed ones)."""
    import uuid
    from concurrent.futures import Future

    msg_id = str(uuid.uuid4())
    future: Future = Future()
    client.protocol._request_futures[msg_id] = future
    client.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    return await asyncio.wrap_future(future)


def plain(value):
    """pygls hands custom results back as namedtuples: make them dicts and lists again."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# A deadline, not a measurement: a loaded machine (a test run beside other work) can take a minute to import torch and load.
async def wait_ready(client, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await stats(client)
        if result["ready"] or result["model_error"]:
            return result
        await asyncio.sleep(0.1)
    raise TimeoutError("the server did not load its model")


OPTIONS = {"maxTokens": 12, "timeCapMs": 600_000}  # the settings the `client` fixture's server runs with
# A long prompt for the slow model: its prefill takes about a second.
LONG_OPTIONS = {"maxTokens": 64, "contextTokens": 3000, "timeCapMs": 60000}


@asynccontextmanager
async def running_server(model_dir: Path, tmp: Path, options: dict | None, encodings=None):
    """A fresh server whose model is loaded, and a client talking to it."""
    workspace = tmp / "ws"
    workspace.mkdir()
    c = await start_client(server_config(model_dir, tmp / "home"), workspace, options, encodings)
    await wait_ready(c)
    c.workspace_dir, c.home = workspace, tmp / "home"
    try:
        yield c
    finally:
        await c.shutdown_session()
        await c.stop()


# One server per module and kind: starting one (Python, torch, the model) takes seconds.
# Tests open documents of their own and compare stats before and after.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_model_dir, tmp_path_factory):
    async with running_server(tiny_model_dir, tmp_path_factory.mktemp("server"), OPTIONS) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_client(slow_model_dir, tmp_path_factory):
    async with running_server(slow_model_dir, tmp_path_factory.mktemp("server"), LONG_OPTIONS) as c:
        yield c
