"""`mtp-assistant doctor`: check an editor's set-up and print its snippet."""

from __future__ import annotations

from pathlib import Path

from assistant.cli.common import CliError


def register(sub) -> None:
    from assistant.editors import EDITORS

    p = sub.add_parser("doctor", help="check what an editor will run (model, engine, a completion round trip) "
                                      "and print the editor's set-up with the right path")
    p.add_argument("--model", help="model directory or store name (default: the one the repository is bound to, "
                                   "else the store's default)")
    p.add_argument("--repo", default=".", help="the repository the editor opens (default: the current directory)")
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "llama"))
    p.add_argument("--editor", default="neovim", choices=EDITORS, help="whose set-up to print")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from assistant.doctor import DoctorError, DoctorSettings, run_doctor

    try:
        return run_doctor(DoctorSettings(model=args.model, repo=Path(args.repo), engine=args.engine, editor=args.editor))
    except DoctorError as e:
        raise CliError(f"doctor: {e}") from None
