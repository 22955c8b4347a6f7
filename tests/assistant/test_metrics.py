"""The metrics file: its records' format, and on resume records past the checkpoint dropped,
never a torn file."""

import json
import os

import pytest

from assistant.training.metrics import MetricsRecord, MetricsWriter, read_metrics, read_records


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


# Two lines as the trainer has always written them (a train step, then an evaluation).
TRAIN_LINE = ('{"step": 20, "split": "train", "lr": 0.003, "loss": 9.5, "loss_per_head": [2.0, 2.25, 2.5, 2.75], '
              '"accuracy_per_head": [0.5, 0.25, 0.125, 0.0625], "grad_norm": 1.5, "tokens_per_s": 1234.5, '
              '"time": 1700000000.25}')
VAL_LINE = ('{"step": 20, "split": "val", "loss": 9.0, "loss_per_head": [2.0, 2.0, 2.5, 2.5], '
            '"accuracy_per_head": [0.5, 0.5, 0.25, 0.25], "time": 1700000001.5}')


def test_records_read_and_write_the_lines_of_an_existing_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(TRAIN_LINE + "\n" + VAL_LINE + "\n" + '{"step": 21, "spl')  # torn last line: skipped
    train, val = read_records(path)
    assert (train.split, train.step, train.lr, train.tokens_per_s) == ("train", 20, 0.003, 1234.5)
    assert train.accuracy_per_head == [0.5, 0.25, 0.125, 0.0625]
    assert (val.split, val.loss, val.lr, val.grad_norm, val.tokens_per_s) == ("val", 9.0, None, None, None)
    copy = tmp_path / "copy.jsonl"
    writer = MetricsWriter(copy)
    for record in (train, val):
        writer.write(record.to_dict())
    writer.close()
    assert copy.read_text() == TRAIN_LINE + "\n" + VAL_LINE + "\n"  # the same bytes, keys in the same order


def test_a_record_that_is_not_a_training_record_is_named(tmp_path):
    assert MetricsRecord.from_dict({**json.loads(VAL_LINE), "extra": 1}) == MetricsRecord.from_dict(json.loads(VAL_LINE))
    path = tmp_path / "metrics.jsonl"
    path.write_text(VAL_LINE + "\n" + '{"step": 1, "split": "train", "loss_per_head": [1.0], "seconds": 2.0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: record 2: not a training record: no loss, accuracy_per_head"):
        read_records(path)
