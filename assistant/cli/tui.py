"""`mtp-assistant tui`: the terminal UI."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    from assistant.tui.screens import SCREEN_NAMES

    p = sub.add_parser("tui", help="the terminal UI: manage models, train on a repository, try completions")
    p.add_argument("--repo", default=".", help="repository the Train screen starts with (default: the current directory)")
    p.add_argument("--screen", default="models", choices=SCREEN_NAMES)
    p.set_defaults(func=cmd_tui)


def cmd_tui(args) -> int:
    from assistant.tui.app import MtpApp, TuiSettings

    repo = args.repo
    if repo == "." and Path.cwd().resolve() == Path(__file__).resolve().parents[2]:
        repo = ""  # started from this project's own checkout (`make run`): ask for the repository to learn
    app = MtpApp(TuiSettings(repo=repo, start_mode=args.screen))
    app.run()
    return app.return_code or 0
