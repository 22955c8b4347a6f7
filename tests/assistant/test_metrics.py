"""The metrics file on resume: records past the checkpoint dropped, never a torn file."""

import json
import os

import pytest

from assistant.training.metrics import MetricsWriter, read_metrics


def write_steps(path, steps, torn_tail=False):
    text = "".join(json.dumps({"step": s, "split": "train"}) + "\n" for s in steps)
    path.write_text(text + ('{"step": 3' if torn_tail else ""))


def test_resume_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_steps(path, range(1, 31), torn_tail=True)
    writer = MetricsWriter(path, truncate_after_step=12)
    writer.write({"step": 13, "split": "train"})
    writer.close()
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 14))


def test_a_kill_during_the_rewrite_loses_no_step(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write_steps(path, range(1, 31))
    before = path.read_text()

    def killed(*args):  # the process dies after writing the new file, before it replaces the old
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricsWriter(path, truncate_after_step=12)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left behind
