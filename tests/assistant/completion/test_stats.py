import json
import os

import pytest

from assistant.completion.stats import ServerStats, StatsFileWriter, percentile
from assistant.engine.base import DecodeStats


@pytest.mark.parametrize(
    "values, q, expected",
    [([], 50, None), ([5.0], 95, 5.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), (list(range(101)), 95, 95.0)],
)
def test_percentile(values, q, expected):
    assert percentile(values, q) == expected


def test_snapshot_follows_the_contract():
    stats = ServerStats(model="m", engine="torch")
    stats.request()
    decoded = DecodeStats(new_tokens=6, forward_passes=3, draft_proposed=[3, 3], draft_accepted=[2, 1], prefill_s=0.004,
                          decode_s=0.005)
    stats.completed(0.010, cached=False, decode_stats=decoded)
    stats.request()
    stats.completed(0.002, cached=True)
    stats.suggestion_shown()
    stats.suggestion_shown()
    stats.suggestion_accepted()
    snap = stats.snapshot()
    assert set(snap) == {
        "pid", "started", "updated", "model", "engine", "requests", "completions", "cancelled", "errors",
        "latency_ms", "tokens_per_forward", "acceptance_per_position", "cache_hits", "cache_hit_rate",
        "shown", "accepted", "acceptance_rate", "warnings", "threads", "model_calls", "new_tokens", "prefill_ms",
        "decode_ms",
    }
    assert snap["latency_ms"]["p50"] == pytest.approx(6.0)
    assert snap["tokens_per_forward"] == 2.0
    assert (snap["model_calls"], snap["new_tokens"]) == (1, 6)  # the cache hit made no model call
    assert (snap["prefill_ms"], snap["decode_ms"]) == (pytest.approx(4.0), pytest.approx(5.0))
    assert snap["acceptance_per_position"] == pytest.approx([2 / 3, 1 / 3])
    assert (snap["cache_hits"], snap["cache_hit_rate"], snap["acceptance_rate"]) == (1, 0.5, 0.5)
    json.dumps(snap)  # plain JSON


def test_stats_file_is_written_and_removed(tmp_path):
    writer = StatsFileWriter(ServerStats(model="m"), tmp_path, interval_s=0.05).start()
    path = tmp_path / "servers" / f"{os.getpid()}.json"
    writer.write()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    writer.stop()
    assert not path.exists()


def test_the_tui_reads_what_the_server_writes(tmp_path):
    from assistant.tui.servers import read_servers

    stats = ServerStats(model="m", engine="torch")
    stats.completed(0.02, cached=False)
    writer = StatsFileWriter(stats, tmp_path)
    writer.write()
    [server] = read_servers(tmp_path / "servers")
    assert (server["pid"], server["completions"], server["stale"]) == (os.getpid(), 1, False)
    writer.stop()
    assert read_servers(tmp_path / "servers") == []
