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
    ModelStore(store_home).bind("/srv/project", "tiny-b")  # not a temporary path: the same on every machine
    app = make_app(store_home)

    async def ready(pilot):
        await wait_for(pilot, lambda: len(app.screen.models) == 2, what="listing")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_models_add_heads_form(snap_compare, store_home):
    app = make_app(store_home)

    async def ready(pilot):
        await wait_for(pilot, lambda: len(app.screen.models) == 2, what="listing")
        await pilot.press("h")
        await wait_for(pilot, lambda: app.screen.query("#field-base"), what="add-heads form")
        app.screen.query_one("#field-base").value = "~/bases/qwen2.5-coder-0.5b-q8_0.gguf"
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_train_screen(snap_compare, store_home, small_repo, monkeypatch):
    monkeypatch.chdir(small_repo)
    app = make_app(store_home, start_mode="train", repo=".")

    async def ready(pilot):
        screen = app.screen
        # from scratch, the default model (the base), the two models.
        await wait_for(pilot, lambda: len(screen.query_one("#base")._options) == 4, what="models")
        await wait_for(pilot, lambda: "train +" in str(screen.query_one("#corpus-preview").render()), what="preview")
        await wait_for(pilot, lambda: "first tune" in str(screen.query_one("#tune-preview").render()), what="plan")
        screen.query_one(LossPlot).show(fake_records())  # what a run's metrics look like, fixed
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def fake_tune_report(repo, base) -> dict:
    def measured(top1: list[float], loss: float, exact: float, tpf: float, p50: float) -> dict:
        return {"val_loss": loss, "accuracy_per_head": top1, "next_line": {"cases": 100, "exact_match": exact},
                "tokens_per_forward": {"k": 4, "value": tpf}, "latency_ms": {"p50": p50, "p95": 2 * p50},
                "engine": "torch"}

    return {
        "repo": str(repo), "name": "repo-1a2b3c", "base": str(base), "started_from": "base model",
        "corpus": {"train": {"files": 5, "bytes": 2500}, "val": {"files": 1, "bytes": 500}},
        "train": {"steps": 40, "lr": 5e-4, "seq_len": 64, "batch_size": 8},
        "run": {"steps": 40, "schedule_steps": 40, "best_step": 30, "stopped": "end of the schedule"},
        "before": measured([0.412, 0.201, 0.113, 0.057], 14.31, 0.12, 1.41, 31),
        "after": measured([0.583, 0.352, 0.214, 0.126], 10.87, 0.23, 1.86, 30),
    }


def test_train_screen_after_a_tune(snap_compare, store_home, small_repo, monkeypatch):
    """A tune run, ended: its before/after report beside the loss plot."""
    monkeypatch.chdir(small_repo)
    from assistant.tui import runs

    run_dir = store_home / "runs" / "repo-0101-1200"
    run_dir.mkdir(parents=True)
    model_dir = store_home / "models" / "repo-1a2b3c"
    model_dir.mkdir()
    (model_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fake_records()))
    (run_dir / runs.TUNE_JOB_FILE).write_text(json.dumps({
        "repo": str(small_repo), "name": model_dir.name, "tune_dir": str(store_home / "tune" / model_dir.name),
        "model_dir": str(model_dir), "command": [],
    }))
    (run_dir / runs.PROCESS_FILE).write_text(json.dumps({"pid": None, "command": [], "started": 1.0}))
    report = fake_tune_report(small_repo, store_home / "models" / "tiny-a")
    (run_dir / runs.LOG_FILE).write_text("measuring the tuned model on the held-out files\n" + json.dumps(report) + "\n")
    app = make_app(store_home, start_mode="train", repo=".")

    async def ready(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.query_one("#tune-report").display, what="the report")
        await wait_for(pilot, lambda: len(screen.query_one(LossPlot)._records) == len(fake_records()), what="plot")
        await wait_for(pilot, lambda: "first tune" in str(screen.query_one("#tune-preview").render()), what="plan")
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
