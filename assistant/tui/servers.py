"""Language servers' live stats, as they write them to `<store home>/servers/<pid>.json`.

The format is the contract between the language server and the TUI (see lsp/): one JSON
object per running server, rewritten atomically every ~2 s, deleted on a clean exit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from assistant.tui.runs import pid_alive

STALE_AFTER_S = 10.0  # no update for this long: the server is stuck or was killed


def read_servers(servers_dir: Path) -> list[dict[str, Any]]:
    """Stats of the servers that are alive, by pid; files that fail to parse are skipped."""
    found = []
    if not servers_dir.is_dir():
        return found
    for path in sorted(servers_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(data, dict) or not pid_alive(pid):
            continue
        data["stale"] = time.time() - float(data.get("updated") or 0) > STALE_AFTER_S
        found.append(data)
    return sorted(found, key=lambda d: d["pid"])


def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    """A number for the table, '-' when the server has none yet."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:{spec}}{suffix}"
    return f"{value}{suffix}"
