"""Train screen: a real background training run, followed live; stop, re-attach, resume."""

import json
import time

import pytest
from textual.widgets import Input, ProgressBar

from assistant.training.metrics import read_metrics
from assistant.tui import runs
from assistant.tui.widgets.loss_plot import LossPlot

from .conftest import make_app, notifications, wait_for

pytestmark = pytest.mark.asyncio


def train_app(home, repo, steps):
    return make_app(
        home,
        start_mode="train",
        repo=str(repo),
        train_steps=steps,
        train_seq_len=32,
        train_batch_size=2,
        train_device="cpu",
    )


def wait_process_end(run_dir, timeout=60.0):
    deadline = time.monotonic() + timeout
    while runs.is_running(run_dir):
        assert time.monotonic() < deadline, "the training process did not end"
        time.sleep(0.1)


async def test_short_run_plots_live_metrics(home, code_repo):
    app = train_app(home, code_repo, steps=30)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(
            pilot, lambda: "train +" in str(screen.query_one("#corpus-preview").render()), what="corpus preview"
        )
        await pilot.pause(0.5)  # the base picker's options and the tune line settle the layout first
        await pilot.click("#start")
        await wait_for(pilot, lambda: screen.attached is not None, what="the run")
        run_dir = screen.attached
        seen = []
        plot = screen.query_one(LossPlot)

        def finished():
            seen.append(len(plot._records))
            return runs.run_state(run_dir) == runs.FINISHED and any(
                r["split"] == "val" and r["step"] == 30 for r in screen.records
            )

        await wait_for(pilot, finished, timeout=120, what="the run to finish")
        await pilot.pause(0.3)
        # The plot grew while the run went on, and holds every record of the file.
        assert len(set(seen)) >= 2, seen
        records = read_metrics(run_dir / "metrics.jsonl")
        assert plot._records == records
        assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 31))
        assert len(records[-1]["loss_per_head"]) == 4
        stats = screen.query_one("#train-stats").plain
        assert "30/30" in stats and "tok/s" in stats and "h4" in stats
        assert screen.query_one("#train-progress", ProgressBar).progress == 30
        assert (run_dir / "model" / "config.json").is_file()
        process = json.loads((run_dir / runs.PROCESS_FILE).read_text())
        assert process["pid"] > 0
        assert process["command"][4:6] == ["--config", str(run_dir / runs.START_CONFIG_FILE)]  # one TrainConfig


async def test_bad_repo_and_settings_are_notifications(home, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.bin").write_bytes(b"\0\1\2")
    app = train_app(home, empty, steps=5)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: any("no code files" in m for m in notifications(app)), what="corpus error")
        app.screen.query_one("#steps", Input).value = "0"
        await pilot.click("#start")
        await wait_for(pilot, lambda: any("must be positive" in m for m in notifications(app)), what="settings error")
        # A repository without code is refused before any process starts.
        app.screen.query_one("#steps", Input).value = "5"
        await pilot.click("#start")
        await wait_for(pilot, lambda: sum("no code files" in m for m in notifications(app)) >= 2, what="refusal")
        await pilot.pause(0.3)
        assert runs.list_runs(app.runs_dir) == []
        assert app.is_running


async def test_the_base_is_the_default_model_and_the_preview_follows_the_repo_typed(home, tmp_path, code_repo):
    from assistant.store import ModelStore
    from assistant.tui.widgets.model_picker import DEFAULT_MODEL, ModelPicker

    from .conftest import save_tiny

    store = ModelStore(home)
    store.add(save_tiny(tmp_path / "other"))
    default = store.add(save_tiny(tmp_path / "mine"), make_default=True)
    other_repo = tmp_path / "two"
    other_repo.mkdir()
    (other_repo / "a.py").write_text("def f(x):\n    return x\n")
    (other_repo / "b.py").write_text("def g(x):\n    return 2 * x\n")
    app = train_app(home, code_repo, steps=5)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        base = screen.query_one("#base", ModelPicker)
        await wait_for(pilot, lambda: len(base._options) == 4, what="the models listed")
        # "from scratch", "default model" (chosen), the two models.
        assert [value for _, value in base._options][:2] == ["__scratch__", DEFAULT_MODEL]
        assert base.value == DEFAULT_MODEL and screen._base_model() == str(default.path)
        preview = screen.query_one("#corpus-preview")
        await wait_for(pilot, lambda: "train +" in str(preview.render()), what="preview")
        before = str(preview.render())
        screen.query_one("#repo", Input).value = str(other_repo)  # typed, no Enter
        await wait_for(pilot, lambda: "train +" in str(preview.render()) and str(preview.render()) != before,
                       what="the preview of the repository typed")
        assert str(preview.render()).startswith("1 train + 1 val files")


async def test_a_re_attached_resumed_run_shows_the_eta_of_its_current_pace(home, tmp_path):
    import subprocess

    from .test_parts import resumed_records

    run_dir = home / "runs" / "repo-0101-1200"
    run_dir.mkdir(parents=True)
    # A live process whose command line names the run: what the UI takes for the trainer.
    proc = subprocess.Popen(["sh", "-c", "sleep 60", str(run_dir)])
    try:
        restart = time.time() - 60
        (run_dir / runs.PROCESS_FILE).write_text(json.dumps({"pid": proc.pid, "command": [], "started": restart}))
        (run_dir / "train_config.json").write_text(json.dumps(
            {"steps": 100, "repo": str(tmp_path), "preset": "tiny", "base_model": None, "lr": 1e-3, "seq_len": 64, "batch_size": 4}
        ))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in resumed_records(restart)))
        app = train_app(home, tmp_path, steps=100)
        async with app.run_test(size=(80, 24)) as pilot:
            stats = app.screen.query_one("#train-stats")
            await wait_for(pilot, lambda: "90/100" in stats.plain, what="the re-attached run")
            assert "ETA 0m05s" in stats.plain  # 10 steps at 0.5 s, not the hours the stop lasted
            # What it was started with, though another UI started it.
            assert "tiny from scratch on" in stats.plain and "100 steps, lr 0.001, seq 64, batch 4" in stats.plain
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_run_survives_the_ui_and_resumes_exactly(home, code_repo):
    steps = 400
    app = train_app(home, code_repo, steps=steps)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await pilot.click("#start")
        await wait_for(pilot, lambda: screen.attached is not None, what="the run")
        run_dir = screen.attached
        await wait_for(pilot, lambda: len(screen.records) > 5, timeout=120, what="first steps")
        # Quitting asks, and leaves the run going in the background.
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: app.screen.query("#leave"), what="quit dialog")
        await pilot.click("#leave")
    assert runs.is_running(run_dir)

    # A new UI re-attaches to it, stops it after a checkpoint, and resumes it.
    app = train_app(home, code_repo, steps=steps)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.attached == run_dir, what="re-attaching")
        await wait_for(pilot, lambda: runs.last_step(run_dir) > 100, timeout=180, what="a checkpoint")
        await pilot.click("#stop")
        await wait_for(pilot, lambda: runs.run_state(run_dir) == runs.STOPPED, timeout=60, what="the stop")
        stopped_at = runs.last_step(run_dir)
        assert stopped_at < steps
        await pilot.click("#resume")
        await wait_for(pilot, lambda: runs.run_state(run_dir) == runs.FINISHED, timeout=300, what="the resumed run")
        await wait_for(pilot, lambda: screen.records and screen.records[-1]["step"] == steps, what="the last records")
    records = read_metrics(run_dir / "metrics.jsonl")
    # One uninterrupted record of the steps: those after the last checkpoint were redone once.
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, steps + 1))


async def test_the_loss_plot_legend_is_a_row_under_the_curves(home, tmp_path):
    from .test_snapshots import fake_records

    app = train_app(home, tmp_path, steps=5)
    async with app.run_test(size=(80, 24)) as pilot:
        plot = app.screen.query_one(LossPlot)
        plot.show(fake_records())
        await pilot.pause()
        rows = plot.render().plain.split("\n")
        assert len(rows) == plot.size.height
        assert all(f"h{h}" in rows[-1] for h in range(1, 5))
        assert not any("h1" in row for row in rows[:-1])  # nothing drawn over the canvas


async def test_no_repository_typed_asks_for_one(home):
    """Started from this project's own checkout the repo field is empty: nothing is read or started."""
    app = make_app(home, repo="", start_mode="train")
    async with app.run_test(size=(80, 24)) as pilot:
        preview = app.screen.query_one("#corpus-preview")
        await wait_for(pilot, lambda: "path of the repository" in preview.render().plain, what="the prompt")
        await pilot.click("#start")
        await wait_for(pilot, lambda: any("path of the repository" in m for m in notifications(app)), what="refusal")
        assert runs.list_runs(app.runs_dir) == [] and app.is_running
