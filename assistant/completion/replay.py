"""Replay an edit session against the real language server, over stdio.

    python -m assistant.completion.replay FILE [FILE...] --model DIR [--lines 40] [--every keystroke|line]
        [--settings JSON [--settings JSON ...]]

For each file a block of lines in its middle is taken out; the "user" then types it
back one character at a time (incremental didChange, as an editor sends), asking for
an inline completion after every keystroke (or only at the start of each line). When a
suggestion is what the user is about to type, the client reports it shown and
accepted (mtp/shown, mtp/accepted), the way an editor would.

Reports client-side latency per request (p50/p95, split into single- and multi-line
requests), the server's cache hit rate, tokens per forward and acceptance per draft position,
and how often a suggestion was right.

With several --settings, one server runs per settings and every keystroke goes to each
in turn (its change, then its request), so the servers type the same session side by
side and a busy moment on a shared machine falls on all of them alike; the summary gives
each server's figures and, per settings after the first, its latency per request against
the first one's on the same keystrokes.

The server is started as `python -m lsp` (a separate process; the assistant package
imports nothing from lsp).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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
    order: list[float] = field(default_factory=list)  # every request's latency, in the order asked

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
            # Of the requests the cache did not serve: what the model did, and where its time went.
            "model_calls": s.get("model_calls"),
            "new_tokens_per_call": s["new_tokens"] / s["model_calls"] if s.get("model_calls") else None,
            "prefill_ms": s.get("prefill_ms"),
            "decode_ms": s.get("decode_ms"),
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


async def _start(server_cmd: list[str], root: Path, options: dict, env: dict) -> LanguageClient:
    client = LanguageClient("mtp-replay", "0.1")
    await client.start_io(*server_cmd, env=env)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=root.as_uri(), initialization_options=options,
    ))
    client.initialized(types.InitializedParams())
    while not (s := await _stats(client))["ready"]:
        if s["model_error"]:
            raise RuntimeError(f"the server cannot load its model: {s['model_error']}")
        await asyncio.sleep(0.2)
    return client


async def _stop(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


async def replay(files: list[Path], server_cmd: list[str], lines: int, every: str, options: dict | list[dict],
                 env: dict) -> ReplayResult | list[ReplayResult]:
    """One ReplayResult per options (a list of them when given a list), the servers fed
    each keystroke in turn."""
    settings = options if isinstance(options, list) else [options]
    root = Path(os.path.commonpath([f.resolve().parent for f in files]))
    clients = [await _start(server_cmd, root, o, env) for o in settings]
    results = [ReplayResult() for _ in settings]
    try:
        for path in files:
            text = path.read_text(encoding="utf-8")
            all_lines = text.split("\n")
            start = max(0, len(all_lines) // 2 - lines // 2)
            block = "\n".join(all_lines[start : start + lines]) + "\n"
            before = "\n".join(all_lines[:start]) + ("\n" if start else "")
            after = "\n".join(all_lines[start + lines :])
            uri = path.resolve().as_uri()
            for client in clients:
                client.text_document_did_open(types.DidOpenTextDocumentParams(
                    types.TextDocumentItem(uri, "python", 1, before + after)))
            version, line, col = 1, start, 0
            for i, ch in enumerate(block):
                position = types.Position(line, utf16_length(block[i - col : i]))
                for client, result, opts in zip(clients, results, settings):
                    if every == "keystroke" or col == 0:
                        await _ask(client, result, opts, uri, position, before + block[:i], block[i:] + after)
                    client.text_document_did_change(types.DidChangeTextDocumentParams(  # type the character
                        types.VersionedTextDocumentIdentifier(version=version + 1, uri=uri),
                        [types.TextDocumentContentChangePartial(types.Range(position, position), ch)],
                    ))
                    result.chars_typed += 1
                version += 1
                line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
            for client in clients:
                client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
        for client, result in zip(clients, results):
            result.server = await _stats(client)
    finally:
        for client in clients:
            await _stop(client)
    return results if isinstance(options, list) else results[0]


async def _ask(client: LanguageClient, result: ReplayResult, options: dict, uri: str, position: types.Position,
               typed: str, rest: str) -> None:
    """An inline completion at the cursor, timed; a suggestion that is what comes next is
    reported shown and accepted, as an editor would."""
    the_plan = plan(typed, rest, options.get("multiline", "auto"))
    began = time.perf_counter()
    reply = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic),
        text_document=types.TextDocumentIdentifier(uri),
        position=position,
    ))
    ms = (time.perf_counter() - began) * 1e3
    result.latencies_ms["multi" if the_plan.multiline else "single"].append(ms)
    result.order.append(ms)
    suggestion = reply.items[0].insert_text if reply and reply.items else ""
    if suggestion:
        result.suggestions += 1
        client.protocol.notify("mtp/shown", {"uri": uri})
        if rest.startswith(suggestion):
            result.useful += 1
            client.protocol.notify("mtp/accepted", {"uri": uri})


def paired(result: ReplayResult, reference: ReplayResult) -> dict:
    """result's latency against reference's on the same requests: the median and mean of
    the per-request ratios, and the ratio of the total times."""
    pairs = [(a, b) for a, b in zip(result.order, reference.order) if b > 0]
    ratios = sorted(a / b for a, b in pairs)
    return {
        "median_ratio": statistics.median(ratios) if ratios else None,
        "total_ratio": sum(a for a, _ in pairs) / sum(b for _, b in pairs) if pairs else None,
        "p95_ratio": (percentile(result.order, 95) / percentile(reference.order, 95)) if pairs else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m assistant.completion.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--model", help="model directory or store name (default: the store's default)")
    p.add_argument("--engine", default="auto")
    p.add_argument("--lines", type=int, default=40, help="lines typed per file")
    p.add_argument("--every", choices=("keystroke", "line"), default="keystroke", help="when to ask for a completion")
    p.add_argument("--settings", action="append",
                   help="initializationOptions as JSON, e.g. '{\"maxTokens\": 32}'; given more than once, a server for "
                        "each, fed the same keystrokes in turn (default: {})")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "lsp", "--engine", args.engine] + (["--model", args.model] if args.model else [])
    settings = [json.loads(s) for s in args.settings or ["{}"]]
    results = asyncio.run(replay(args.files, cmd, args.lines, args.every, settings, dict(os.environ)))
    common = {"files": [str(f) for f in args.files], "lines": args.lines, "every": args.every}
    summaries = [r.summary() | common | {"settings": o, "chars_typed": r.chars_typed} for r, o in zip(results, settings)]
    for r, summary in zip(results[1:], summaries[1:]):
        summary["vs_first"] = paired(r, results[0])
    summary = summaries[0] if len(summaries) == 1 else {"servers": summaries}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
