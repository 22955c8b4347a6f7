"""Snippets from other code for the prompt: open documents, the files the current one
imports, recently edited files and similar chunks from a workspace index.

Similarity is lexical: the Jaccard overlap of identifier sets between the lines just
before the cursor and a chunk of about CHUNK_LINES lines. It is cheap, needs no model,
and finds the helper being called or the sibling function being imitated.

The index covers the files git would track (.gitignore respected through pathspec),
text only, with bounded memory (max_files, max_bytes). watchdog keeps it current:
files created, changed, deleted and renamed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec

from assistant.completion.prompt import Snippet

log = logging.getLogger(__name__)

CHUNK_LINES = 20
QUERY_LINES = 20
MIN_SCORE = 0.08  # Jaccard overlap below which a chunk is unrelated
CODE_SUFFIXES = {
    ".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".hpp", ".java",
    ".kt", ".rb", ".php", ".cs", ".swift", ".scala", ".lua", ".sh", ".sql", ".md", ".toml", ".yaml", ".yml",
}
ALWAYS_IGNORED = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".mypy_cache", ".tox"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_PY_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+\(?([\w, \t]+)|import[ \t]+([\w.]+))", re.M)
_JS_IMPORT = re.compile(r"""(?:from|require\()\s*['"](\.{1,2}/[^'"]+)['"]""")


def identifiers(text: str) -> frozenset[str]:
    return frozenset(_IDENT.findall(text))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class Chunk:
    path: Path
    start_line: int
    text: str
    words: frozenset[str]


def chunk_text(path: Path, text: str, lines_per_chunk: int = CHUNK_LINES) -> list[Chunk]:
    """Non-overlapping windows of whole lines (half-overlapping would double memory)."""
    lines = text.split("\n")
    chunks = []
    for start in range(0, len(lines), lines_per_chunk):
        body = "\n".join(lines[start : start + lines_per_chunk])
        if body.strip():
            chunks.append(Chunk(path, start, body, identifiers(body)))
    return chunks


def looks_binary(data: bytes | str) -> bool:
    sample = data[:8192]
    return (b"\x00" in sample) if isinstance(sample, bytes) else ("\x00" in sample)


class WorkspaceIndex:
    """Chunks of the workspace's code files, kept current by watchdog."""

    def __init__(self, root: Path | str, max_files: int = 5000, max_bytes: int = 32 << 20, max_file_bytes: int = 512 << 10):
        self.root = Path(root).resolve()
        self.max_files, self.max_bytes, self.max_file_bytes = max_files, max_bytes, max_file_bytes
        self._files: OrderedDict[Path, list[Chunk]] = OrderedDict()
        self._sizes: dict[Path, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._spec = self._load_ignore()
        self._observer = None

    # --- which files ---

    def _load_ignore(self) -> pathspec.PathSpec:
        lines: list[str] = []
        for ignore_file in [self.root / ".gitignore", *self.root.glob("*/.gitignore")]:
            try:
                base = ignore_file.parent.relative_to(self.root).as_posix()
                for line in ignore_file.read_text(encoding="utf-8", errors="replace").splitlines():
                    line = line.strip()
                    if line and not line.startswith("#") and base != ".":
                        line = f"{base}/{line.lstrip('/')}"
                    lines.append(line)
            except OSError:
                continue
        return pathspec.PathSpec.from_lines("gitignore", lines)

    def wanted(self, path: Path) -> bool:
        try:
            rel = path.resolve().relative_to(self.root)
        except (ValueError, OSError):
            return False
        if path.suffix not in CODE_SUFFIXES or any(part in ALWAYS_IGNORED for part in rel.parts):
            return False
        return not self._spec.match_file(rel.as_posix())

    def _walk(self) -> Iterable[Path]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            base = Path(dirpath)
            dirnames[:] = [
                d for d in sorted(dirnames)
                if d not in ALWAYS_IGNORED and not self._spec.match_file((base / d).relative_to(self.root).as_posix() + "/")
            ]
            for name in sorted(filenames):
                path = base / name
                if self.wanted(path):
                    yield path

    # --- contents ---

    def build(self) -> WorkspaceIndex:
        for path in self._walk():
            if len(self._files) >= self.max_files or self._bytes >= self.max_bytes:
                log.info("workspace index full at %d files, %d bytes", len(self._files), self._bytes)
                break
            self.update(path)
        return self

    def update(self, path: Path | str) -> None:
        path = Path(path).resolve()
        if not self.wanted(path):
            return
        try:
            if path.stat().st_size > self.max_file_bytes:
                return self.remove(path)
            data = path.read_bytes()
        except OSError:
            return self.remove(path)
        if looks_binary(data):
            return self.remove(path)
        chunks = chunk_text(path, data.decode("utf-8", errors="replace"))
        with self._lock:
            self._bytes -= self._sizes.pop(path, 0)
            self._files.pop(path, None)
            # Bounded memory: the least recently updated files go first.
            while self._files and (len(self._files) >= self.max_files or self._bytes + len(data) > self.max_bytes):
                old, _ = self._files.popitem(last=False)
                self._bytes -= self._sizes.pop(old, 0)
            if len(data) <= self.max_bytes:
                self._files[path] = chunks
                self._sizes[path] = len(data)
                self._bytes += len(data)

    def remove(self, path: Path | str) -> None:
        path = Path(path).resolve()
        with self._lock:
            self._files.pop(path, None)
            self._bytes -= self._sizes.pop(path, 0)

    def __contains__(self, path: Path | str) -> bool:
        return Path(path).resolve() in self._files

    def __len__(self) -> int:
        return len(self._files)

    @property
    def bytes(self) -> int:
        return self._bytes

    def search(self, words: frozenset[str], exclude: Path | None = None, limit: int = 4) -> list[tuple[float, Chunk]]:
        with self._lock:
            files = list(self._files.items())
        scored = [
            (jaccard(words, chunk.words), chunk)
            for path, chunks in files if path != exclude
            for chunk in chunks
        ]
        scored = [(s, c) for s, c in scored if s > 0]
        scored.sort(key=lambda sc: -sc[0])
        return scored[:limit]

    # --- watching ---

    def watch(self) -> WorkspaceIndex:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        index = self

        class Handler(FileSystemEventHandler):
            def on_created(self, event):
                if not event.is_directory:
                    index.update(event.src_path)

            on_modified = on_created

            def on_deleted(self, event):
                index.remove(event.src_path)

            def on_moved(self, event):
                index.remove(event.src_path)
                if not event.is_directory:
                    index.update(event.dest_path)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.root), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        return self

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


def imported_paths(text: str, path: Path, root: Path | None) -> list[Path]:
    """Files in the workspace that `text` (the file at `path`) imports, nearest first."""
    found: list[Path] = []
    bases = [path.parent] + ([root] if root else [])
    for match in _PY_IMPORT.finditer(text[:200_000]):
        module = match.group(1) or match.group(3)
        dots = len(module) - len(module.lstrip("."))
        parts = [p for p in module.lstrip(".").split(".") if p]
        if dots:
            base = path.parent
            for _ in range(dots - 1):
                base = base.parent
            modules = [base.joinpath(*parts)]
        else:
            modules = [b.joinpath(*parts) for b in bases] if parts else []
        # `from pkg import name`: name may be a module of its own.
        names = [n.strip() for n in (match.group(2) or "").split(",") if n.strip().isidentifier()]
        candidates = [m / n for m in modules for n in names] + (modules if parts else [])
        for c in candidates:
            for file in (c.with_suffix(".py"), c / "__init__.py"):
                if file.is_file() and file not in found:
                    found.append(file)
    for match in _JS_IMPORT.finditer(text[:200_000]):
        c = (path.parent / match.group(1)).resolve()
        for file in (c, *(c.with_suffix(s) for s in (".ts", ".tsx", ".js", ".jsx"))):
            if file.is_file() and file not in found:
                found.append(file)
                break
    return found


def uri_to_path(uri: str) -> Path | None:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


class ContextCollector:
    """Picks the snippets for a request.

    The choice is remembered per document and QUERY_LINES-line band of the cursor:
    snippets open the prompt, so changing them on every keystroke would throw away
    the engine's cached prompt each time.
    """

    def __init__(
        self,
        open_documents: Callable[[], dict[str, str]] = dict,
        index: WorkspaceIndex | None = None,
        root: Path | None = None,
        max_snippets: int = 3,
        readable: Callable[[Path], bool] = lambda path: True,
    ):
        self.open_documents = open_documents
        self.readable = readable  # which files on disk may feed a prompt (the server: its workspace's)
        self.index = index
        self.root = Path(root).resolve() if root else None
        self.max_snippets = max_snippets
        self._recent: OrderedDict[str, None] = OrderedDict()  # uris, most recently edited last
        self._chosen: OrderedDict[tuple[str, int], list[Snippet]] = OrderedDict()
        # Edits arrive on the server's event loop, snippet requests in worker threads.
        self._lock = threading.Lock()

    def edited(self, uri: str) -> None:
        with self._lock:
            self._recent.pop(uri, None)
            self._recent[uri] = None
            while len(self._recent) > 20:
                self._recent.popitem(last=False)

    def forget(self, uri: str) -> None:
        with self._lock:
            for key in [k for k in self._chosen if k[0] == uri]:
                del self._chosen[key]

    def _name(self, path: Path) -> str:
        if self.root:
            try:
                return path.resolve().relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.name

    def snippets(self, uri: str, prefix: str) -> list[Snippet]:
        line = prefix.count("\n", max(0, len(prefix) - 200_000))  # bounded work on huge files
        key = (uri, line // QUERY_LINES)
        with self._lock:
            if key in self._chosen:
                self._chosen.move_to_end(key)
                return self._chosen[key]
            recent = set(self._recent)
        chosen = self._choose(uri, prefix, recent)
        with self._lock:
            self._chosen[key] = chosen
            while len(self._chosen) > 256:
                self._chosen.popitem(last=False)
        return chosen

    def _choose(self, uri: str, prefix: str, recent: set[str]) -> list[Snippet]:
        query = identifiers("\n".join(prefix[-20_000:].split("\n")[-QUERY_LINES:]))
        if not query:
            return []
        here = uri_to_path(uri)
        candidates: list[tuple[float, str, str]] = []  # score, name, text
        docs = self.open_documents()
        # Open and recently edited documents: the user is working with them now.
        for other_uri, text in docs.items():
            if other_uri == uri or looks_binary(text):
                continue
            path = uri_to_path(other_uri) or Path(other_uri)
            bonus = 0.1 if other_uri in recent else 0.05
            for chunk in chunk_text(path, text[:500_000]):
                score = jaccard(query, chunk.words)
                if score >= MIN_SCORE:
                    candidates.append((score + bonus, self._name(path), chunk.text))
        # Imported files: what the code at the cursor most likely calls.
        if here is not None:
            head = docs.get(uri, prefix)
            for path in [p for p in imported_paths(head, here, self.root) if self.readable(p)][:8]:
                try:
                    if path.stat().st_size > 512 << 10:
                        continue
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                for chunk in chunk_text(path, text):
                    score = jaccard(query, chunk.words)
                    if score >= MIN_SCORE:
                        candidates.append((score + 0.1, self._name(path), chunk.text))
        if self.index is not None:
            for score, chunk in self.index.search(query, exclude=here, limit=self.max_snippets):
                if score >= MIN_SCORE:
                    candidates.append((score, self._name(chunk.path), chunk.text))
        candidates.sort(key=lambda c: -c[0])
        seen: set[str] = set()
        result = []
        for score, name, text in candidates:
            if text in seen:
                continue
            seen.add(text)
            result.append(Snippet(name, text))
            if len(result) >= self.max_snippets:
                break
        return result
