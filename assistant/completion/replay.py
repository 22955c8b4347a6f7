"""Replay an edit session against the real language server, over stdio.

    python -m assistant.completion.replay FILE [FILE...] --model DIR [--lines 40] [--every keystroke|line]

For each file a block of lines in its middle is taken out; the "user" then types it
back one character at a time (incremental didChange, as an editor sends), asking for
an inline completion after every keystroke (or only at the start of each line). When a
suggestion is what the user is about to type, the client reports it shown and
accepted (mtp/shown, mtp/accepted), the way an editor would.

Reports client-side latency per request (p50/p95, split into single- and multi-line
requests), the server's cache hit rate, tokens per forward and acceptance per draft position,
and how often a suggestion was right.

The server is started as `python -m lsp` (a separate process; the assistant package
imports nothing from lsp).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from assistant.completion.positions import utf16_length
from assistant.completion.rules import plan
from assistant.completion.stats import percentile


@dataclass
class ReplayResult:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {"single": [], "multi": []})
    suggestions: int = 0  # requests answered with some text
    useful: int = 0  # suggestions that are a prefix of what the user typed next (non-empty)
    chars_typed: int = 0
    server: dict = field(default_factory=dict)

    def summary(self) -> dict:
        every = self.latencies_ms["single"] + self.latencies_ms["multi"]

        def pct(values):
            return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=None)}

        s = self.server
        return {
            "engine": s.get("engine"),
            "requests": len(every),
            "latency_ms": pct(every),
            "latency_ms_single_line": pct(self.latencies_ms["single"]),
            "latency_ms_multi_line": pct(self.latencies_ms["multi"]),
            "server_latency_ms": s.get("latency_ms"),
            "cache_hit_rate": s.get("cache_hit_rate"),
            "tokens_per_forward": s.get("tokens_per_forward"),
            "acceptance_per_position": s.get("acceptance_per_position"),
            "suggestion_rate": self.suggestions / len(every) if every else None,
            "useful_rate": self.useful / self.suggestions if self.suggestions else None,
            "cancelled": s.get("cancelled"),
            "errors": s.get("errors"),
        }


def _plain(value):
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


async def _stats(client: LanguageClient) -> dict:
    return _plain(await client.protocol.send_request_async("mtp/stats", {}))


async def replay(files: list[Path], server_cmd: list[str], lines: int, every: str, options: dict, env: dict) -> ReplayResult:
    client = LanguageClient("mtp-replay", "0.1")
    await client.start_io(*server_cmd, env=env)
    root = Path(os.path.commonpath([f.resolve().parent for f in files]))
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=root.as_uri(), initialization_options=options,
    ))
    client.initialized(types.InitializedParams())
    while not (s := await _stats(client))["ready"]:
        if s["model_error"]:
            raise RuntimeError(f"the server cannot load its model: {s['model_error']}")
        await asyncio.sleep(0.2)

    result = ReplayResult()
    for path in files:
        text = path.read_text(encoding="utf-8")
        all_lines = text.split("\n")
        start = max(0, len(all_lines) // 2 - lines // 2)
        block = "\n".join(all_lines[start : start + lines]) + "\n"
        before = "\n".join(all_lines[:start]) + ("\n" if start else "")
        after = "\n".join(all_lines[start + lines :])
        uri = path.resolve().as_uri()
        doc = before + after
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 1, doc)))
        version, line, col = 1, start, 0
        for i, ch in enumerate(block):
            at_line_start = col == 0
            if every == "keystroke" or at_line_start:
                typed_prefix = before + block[:i]
                the_plan = plan(typed_prefix, block[i:] + after, options.get("multiline", "auto"))
                began = time.perf_counter()
                reply = await client.text_document_inline_completion_async(types.InlineCompletionParams(
                    context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic),
                    text_document=types.TextDocumentIdentifier(uri),
                    position=types.Position(line, utf16_length(block[i - col : i])),
                ))
                result.latencies_ms["multi" if the_plan.multiline else "single"].append((time.perf_counter() - began) * 1e3)
                suggestion = reply.items[0].insert_text if reply and reply.items else ""
                if suggestion:
                    result.suggestions += 1
                    client.protocol.notify("mtp/shown", {"uri": uri})
                    if block[i:].startswith(suggestion):
                        result.useful += 1
                        client.protocol.notify("mtp/accepted", {"uri": uri})
            # Type the character.
            pos = types.Position(line, utf16_length(block[i - col : i]))
            version += 1
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=version, uri=uri),
                [types.TextDocumentContentChangePartial(types.Range(pos, pos), ch)],
            ))
            result.chars_typed += 1
            line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
        client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    result.server = await _stats(client)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m assistant.completion.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--model", help="model directory or store name (default: the store's default)")
    p.add_argument("--engine", default="auto")
    p.add_argument("--lines", type=int, default=40, help="lines typed per file")
    p.add_argument("--every", choices=("keystroke", "line"), default="keystroke", help="when to ask for a completion")
    p.add_argument("--settings", default="{}", help="initializationOptions as JSON, e.g. '{\"maxTokens\": 32}'")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "lsp", "--engine", args.engine] + (["--model", args.model] if args.model else [])
    options = json.loads(args.settings)
    result = asyncio.run(replay(args.files, cmd, args.lines, args.every, options, dict(os.environ)))
    summary = result.summary() | {"files": [str(f) for f in args.files], "lines": args.lines, "every": args.every,
                                  "settings": options, "chars_typed": result.chars_typed}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
