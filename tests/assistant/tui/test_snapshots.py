"""Each screen at 80x24, compared with the committed SVGs in __snapshots__/.

Deterministic on purpose: fixed models and data, no clocks, no temporary paths on
screen. After an intended change: `pytest tests/assistant/tui/test_snapshots.py --snapshot-update`.
"""

import json

import pytest

from assistant.bench import BenchResult, BenchRow
from assistant.store import ModelStore
from assistant.tui.widgets.loss_plot import LossPlot

from .conftest import make_app, save_tiny, settle, wait_for

SIZE = (80, 24)


@pytest.fixture
def store_home(home, tmp_path):
    store = ModelStore(home)
    store.add(
        save_tiny(
            tmp_path / "src" / "tiny-a",
            provenance={"trained_by": "mtp-assistant train", "steps": 120, "tokens_seen": 92160, "val_loss": 4.83},
        ),
        make_default=True,
    )
    store.add(save_tiny(tmp_path / "src" / "tiny-b", n_future=2, seed=1))
    for quant in ("q8_0", "q4_k_m"):  # the llama.cpp export's layout
        (store.models_dir / "tiny-b" / "gguf" / quant).mkdir(parents=True)
        for name in ("main.gguf", "head-2.gguf"):
            (store.models_dir / "tiny-b" / "gguf" / quant / name).write_bytes(b"GGUF")
    return home


@pytest.fixture
def small_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(6):
        (repo / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    (repo / "logo.png").write_bytes(b"\x89PNG\0\0")
    return repo


def fake_records(steps=40, heads=4):
    records = []
    for step in range(1, steps + 1):
        losses = [5.5 * (0.97**step) + 0.3 * h for h in range(heads)]
        records.append(
            {
                "step": step,
                "split": "train",
                "loss": sum(losses),
                "loss_per_head": losses,
                "tokens_per_s": 1000.0,
                "time": float(step),
            }
        )
        if step % 10 == 0:
            val = [x + 0.1 for x in losses]
            records.append(
                {
                    "step": step,
                    "split": "val",
                    "loss": sum(val),
                    "loss_per_head": val,
                    "accuracy_per_head": [0.6, 0.4, 0.3, 0.2],
                    "time": float(step),
                }
            )
    return records


def test_models_screen(snap_compare, store_home):
    app = make_app(store_home)

    async def ready(pilot):
        await wait_for(pilot, lambda: len(app.screen.models) == 2, what="listing")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_train_screen(snap_compare, store_home, small_repo, monkeypatch):
    monkeypatch.chdir(small_repo)
    app = make_app(store_home, start_mode="train", repo=".")

    async def ready(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: len(screen._models_known) == 2, what="models")
        # The default model becomes the base, and the preview is redone for it.
        await wait_for(pilot, lambda: screen._base_value != "__scratch__", what="the default base")
        await wait_for(pilot, lambda: "train +" in str(screen.query_one("#corpus-preview").render()), what="preview")
        screen.query_one(LossPlot).show(fake_records())  # what a run's metrics look like, fixed
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_playground_screen(snap_compare, store_home):
    app = make_app(store_home, start_mode="playground")

    async def ready(pilot):
        await pilot.pause(0.2)
        app.screen.query_one("#completion").show([("n ", 1), ("* ", 2), ("fact", 3), ("orial", 4), ("(n - 1)", 1)], 4)
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_bench_screen(snap_compare, store_home):
    app = make_app(store_home, start_mode="bench")
    rows = [
        BenchRow(
            engine="torch",
            k=k,
            tokens_per_forward=1 + 0.6 * (k - 1),
            implied_tokens_per_forward=1 + 0.65 * (k - 1),
            tokens_per_s=100.0 * (1 + 0.4 * (k - 1)),
            wall_ms=100.0,
            decode_tokens_per_s=100.0 * (1 + 0.4 * (k - 1)),
            speedup=1 + 0.4 * (k - 1),
            step_cost=1.0,
            acceptance=[0.7, 0.5, 0.4][: k - 1],
            loop_overhead=0.1,
        )
        for k in range(1, 5)
    ]

    async def ready(pilot):
        await pilot.pause(0.2)
        app.screen.show_result(BenchResult(rows=rows, head_accuracy=[0.6, 0.45, 0.35, 0.3], prompts=5))
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_server_screen(snap_compare, store_home, monkeypatch):
    import time

    monkeypatch.setenv("HOME", str(store_home.parent))  # the stats directory's path on screen: ~/home/servers

    from .test_server_screen import stats

    servers = store_home / "servers"
    servers.mkdir()
    # pid 1 (init) is alive everywhere: a fixed pid on screen.
    (servers / "1.json").write_text(json.dumps(stats(1, updated=time.time() + 3600)))
    app = make_app(store_home, start_mode="server")

    async def ready(pilot):
        await wait_for(pilot, lambda: len(app.screen.servers) == 1, what="the server")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)
