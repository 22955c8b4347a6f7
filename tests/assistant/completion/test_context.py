import time
from pathlib import Path

from assistant.completion.context import (
    ContextCollector,
    WorkspaceIndex,
    identifiers,
    imported_paths,
)

HELPER = "def parse_header(line):\n    key, value = line.split(':', 1)\n    return key.strip(), value.strip()\n"


def make_repo(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "headers.py").write_text(HELPER)
    (root / "pkg" / "unrelated.py").write_text("class Colour:\n    red = 1\n    green = 2\n")
    (root / "build").mkdir()
    (root / "build" / "copy.py").write_text(HELPER)
    (root / "notes.bin.py").write_bytes(b"\x00\x01binary")
    (root / ".gitignore").write_text("build/\n")
    return root


def test_index_respects_gitignore_and_skips_binaries(tmp_path):
    index = WorkspaceIndex(make_repo(tmp_path)).build()
    assert tmp_path / "pkg" / "headers.py" in index
    assert tmp_path / "build" / "copy.py" not in index
    assert tmp_path / "notes.bin.py" not in index
    best = index.search(identifiers("key, value = parse_header(line)"))[0][1]
    assert best.path.name == "headers.py"


def test_index_memory_is_bounded(tmp_path):
    for i in range(10):
        (tmp_path / f"m{i}.py").write_text(f"value_{i} = {i}\n" * 50)  # 650 bytes or so each
    index = WorkspaceIndex(tmp_path, max_bytes=2000).build()
    assert index.bytes <= 2000 and 0 < len(index) < 10


def wait_until(condition, timeout_s=10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_watchdog_keeps_the_index_current(tmp_path):
    index = WorkspaceIndex(make_repo(tmp_path)).build().watch()
    try:
        new = tmp_path / "pkg" / "fresh.py"
        new.write_text("def fresh_helper():\n    return 42\n")
        assert wait_until(lambda: new in index)  # created
        new.write_text("def renamed_helper():\n    return 43\n")
        assert wait_until(lambda: any(c.path == new.resolve() for _, c in index.search(identifiers("renamed_helper"))))
        moved = tmp_path / "pkg" / "moved.py"
        new.rename(moved)
        assert wait_until(lambda: moved in index and new not in index)  # renamed
        moved.unlink()
        assert wait_until(lambda: moved not in index)  # deleted
        ignored = tmp_path / "build" / "late.py"
        ignored.write_text(HELPER)
        time.sleep(0.3)
        assert ignored not in index
    finally:
        index.stop()


def test_imported_paths(tmp_path):
    make_repo(tmp_path)
    here = tmp_path / "pkg" / "main.py"
    text = "import os\nfrom pkg import headers\nfrom .unrelated import Colour\nfrom . import headers\n"
    found = imported_paths(text, here, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["pkg/headers.py", "pkg/__init__.py", "pkg/unrelated.py"]


def test_collector_prefers_related_code_and_keeps_its_choice(tmp_path):
    make_repo(tmp_path)
    index = WorkspaceIndex(tmp_path).build()
    uri = (tmp_path / "pkg" / "main.py").as_uri()
    collector = ContextCollector(lambda: {uri: "import os\n"}, index, tmp_path)
    prefix = "for line in lines:\n    key, value = parse_header(line)\n    "
    snippets = collector.snippets(uri, prefix)
    assert snippets and snippets[0].path == "pkg/headers.py" and "def parse_header" in snippets[0].text
    # Typing on the same lines does not change the snippets (the prompt stays cached).
    assert collector.snippets(uri, prefix + "print(key)") is snippets
    other = (tmp_path / "pkg" / "other.py").as_uri()
    assert collector.snippets(other, "unrelated words only") == []
