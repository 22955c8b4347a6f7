"""Train screen, tune key: a real tiny `mtp-assistant tune` started from the screen, its
report on screen; what it refuses; re-attaching to a tune."""

import dataclasses
import json
import subprocess
import time

import pytest

from assistant.store import ModelStore
from assistant.training.metrics import read_metrics
from assistant.training.tune import TUNE_DIR, TuneConfig, model_name
from assistant.tui import runs
from assistant.training.tune import report_rows
from assistant.tui.widgets.before_after import BeforeAfter
from assistant.tui.widgets.loss_plot import LossPlot
from tests.assistant.test_tune import make_repo

from .conftest import make_app, notifications, save_tiny, wait_for
from .test_parts import resumed_records

pytestmark = pytest.mark.asyncio

# Seconds on one core (tests/assistant/test_tune.py's tiny tune, through the CLI's options).
TINY = TuneConfig(steps=12, batch_size=4, seq_len=64, lr=3e-3, next_line_cases=4, speed_prompts=2, device="cpu")


def tune_app(home, repo, tune=TINY):
    # Polled less often than other tests: the tune process needs the CPU more than the UI.
    return make_app(home, start_mode="train", repo=str(repo), tune=tune, refresh_s=0.5)


@pytest.fixture
def tiny_default(home, tmp_path):
    return ModelStore(home).add(save_tiny(tmp_path / "tiny"), make_default=True)


def text(widget) -> str:
    return str(widget.render())


async def test_the_tune_key_tunes_the_repository_and_shows_before_and_after(home, tmp_path, tiny_default):
    repo = make_repo(tmp_path / "repo")
    app = tune_app(home, repo)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        preview = screen.query_one("#tune-preview")
        await wait_for(pilot, lambda: "first tune of repo, from tiny" in text(preview), what="the tune preview")
        assert app.active_bindings["ctrl+n"].binding.description == "Tune repo"  # in the footer
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: screen.attached is not None, what="the tune run")
        run_dir = screen.attached
        assert runs.describe_run(run_dir).kind == runs.TUNE
        table = screen.query_one("#tune-report", BeforeAfter)
        try:
            await wait_for(pilot, lambda: table.display and table.rows, timeout=600, what="the before/after table")
        except AssertionError:
            raise AssertionError(f"{runs.describe_run(run_dir)}\n{screen.query_one('#train-stats').plain}\n"
                                 f"{(run_dir / runs.LOG_FILE).read_text()}") from None

        name = model_name(repo.resolve())
        model_dir = home / "models" / name
        report = json.loads((model_dir / "tune_report.json").read_text())
        # The table is the tuned model's report, a row a head and one a measure.
        assert table.rows == report_rows(report, compact=True)
        assert [row[0] for row in table.rows[:4]] == [f"top-1 head {h}" for h in range(1, 5)]
        assert table.rows[0][1] == f"{100 * report['before']['accuracy_per_head'][0]:.1f}%"
        assert table.rows[0][2] == f"{100 * report['after']['accuracy_per_head'][0]:.1f}%"
        assert "before after" in table.plain
        stats = screen.query_one("#train-stats").plain
        assert f"{name} now serves repo" in stats and "(tune finished)" in stats
        settings = runs.describe_settings(run_dir)  # from the report, once tune's working directory is gone
        assert settings == "tune of repo from tiny (base model): 12 steps, lr 0.003, seq 64, batch 4"
        runs_table = screen.query_one("#runs-table")
        await wait_for(pilot, lambda: runs_table.get_row_at(0) == [f">{run_dir.name}", "tune finished"], what="listed")
        # The loss plot holds the tune's training, every step once.
        await wait_for(pilot, lambda: len(screen.query_one(LossPlot)._records) > 0, what="the plot")
        steps = [r["step"] for r in screen.records if r["split"] == "train"]
        assert steps == list(range(1, 13))
        assert ModelStore(home).binding_for(repo) == (str(repo.resolve()), name)
        assert not (home / TUNE_DIR / name).exists()

        # Before the next one: what changed since, and that it starts from the tuned model.
        (repo / "mod0.py").write_text((repo / "mod0.py").read_text() + "\ndef more():\n    return 3\n")
        screen.action_preview()
        await wait_for(pilot, lambda: f"from its last tune ({name}); since then 0 new, 1 edited, 0 removed"
                       in text(preview).replace("\n", " "), what="the changes")
        # Nothing changed, and no steps or minutes asked for: refused in tune's words, no process started.
        (repo / "mod0.py").write_text((repo / "mod0.py").read_text().replace("\ndef more():\n    return 3\n", ""))
        app.settings.tune = dataclasses.replace(TINY, steps=None)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: any("nothing changed since its last tune" in m for m in notifications(app)),
                       what="the refusal")
        assert len(runs.list_runs(app.runs_dir)) == 1


async def test_too_little_code_is_tunes_one_line_message(home, tmp_path, tiny_default):
    repo = tmp_path / "one"
    repo.mkdir()
    (repo / "a.py").write_text("def f(x):\n    return x\n" * 40)
    (repo / "b.py").write_text("x = 1\n")
    app = tune_app(home, repo, dataclasses.replace(TINY, batch_size=8, seq_len=64))
    async with app.run_test(size=(80, 24)) as pilot:
        preview = app.screen.query_one("#tune-preview")
        await wait_for(pilot, lambda: "too little code to tune on" in text(preview), what="the preview")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: any("too little code to tune on (2 code files" in m for m in notifications(app)),
                       what="the refusal")
        assert runs.list_runs(app.runs_dir) == [] and app.is_running


async def test_a_re_attached_resumed_tune_shows_the_eta_of_its_current_pace(home, tmp_path, tiny_default):
    repo = make_repo(tmp_path / "repo", files=2)
    tune_dir = home / TUNE_DIR / model_name(repo.resolve())
    tune_dir.mkdir(parents=True)
    (tune_dir / "tune.json").write_text(json.dumps({
        "repo": str(repo.resolve()), "base": str(tiny_default.path), "started_from": "base model", "before": {},
        "train": {"steps": 100, "lr": 5e-4, "seq_len": 512, "batch_size": 8},
    }))
    restart = time.time() - 60
    (tune_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in resumed_records(restart)))
    run_dir = home / "runs" / "repo-0101-1200"
    run_dir.mkdir(parents=True)
    mention = f"assistant.cli tune {repo.resolve()}"
    (run_dir / runs.TUNE_JOB_FILE).write_text(json.dumps({
        "repo": str(repo.resolve()), "name": tune_dir.name, "tune_dir": str(tune_dir),
        "model_dir": str(home / "models" / tune_dir.name), "command": [],
    }))
    # A live process whose command line is a tune's of the repository: what the UI takes for it.
    proc = subprocess.Popen(["sh", "-c", "sleep 60", mention])
    try:
        (run_dir / runs.PROCESS_FILE).write_text(json.dumps(
            {"pid": proc.pid, "command": [], "started": restart, "mention": mention}))
        app = tune_app(home, repo)
        async with app.run_test(size=(80, 24)) as pilot:
            stats = app.screen.query_one("#train-stats")
            await wait_for(pilot, lambda: "90/100" in stats.plain, what="the re-attached tune")
            assert "ETA 0m05s" in stats.plain  # 10 steps at 0.5 s, not the hours the stop lasted
            assert "(tune running)" in stats.plain
            assert "tune of repo from tiny (base model): 100 steps, lr 0.0005, seq 512, batch 8" in stats.plain
            # A second tune of the same repository is refused while this one runs.
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: any("is tuning repo already" in m for m in notifications(app)),
                           what="the refusal")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_a_stopped_tune_resumes_from_its_checkpoint(home, tmp_path, tiny_default):
    from models.checkpoint import read_config

    repo = make_repo(tmp_path / "repo")
    app = tune_app(home, repo, dataclasses.replace(TINY, steps=60))
    tune_dir = home / TUNE_DIR / model_name(repo.resolve())

    def checkpoint_step() -> int:
        try:
            return read_config(tune_dir / "checkpoint")[2]["steps"]
        except Exception:
            return 0

    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: "first tune" in text(screen.query_one("#tune-preview")), what="the plan")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: screen.attached is not None, what="the tune run")
        run_dir = screen.attached
        await wait_for(pilot, lambda: checkpoint_step() >= 6, timeout=600, what="a checkpoint")
        await pilot.click("#stop")  # Ctrl+C for the process
        await wait_for(pilot, lambda: runs.run_state(run_dir) == runs.STOPPED, timeout=120, what="the stop")
        assert "tune interrupted: the checkpoint at step" in (run_dir / runs.LOG_FILE).read_text()
        await wait_for(pilot, lambda: "(tune stopped)" in screen.query_one("#train-stats").plain, what="shown")
        await pilot.click("#resume")
        table = screen.query_one("#tune-report", BeforeAfter)
        await wait_for(pilot, lambda: table.display and table.rows, timeout=600, what="the report")
    model_dir = home / "models" / tune_dir.name
    train_steps = [r["step"] for r in read_metrics(model_dir / "metrics.jsonl") if r["split"] == "train"]
    assert train_steps == list(range(1, train_steps[-1] + 1)), "every step once across the stop"
    assert "resuming the interrupted tune" in (run_dir / runs.LOG_FILE).read_text()
