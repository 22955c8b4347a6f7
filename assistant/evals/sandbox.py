"""Run untrusted generated code (HumanEval completions) in an isolated child interpreter.

Each program runs in a fresh `python -I` child started inside one of three isolations,
the best the machine offers, detected at run time by starting a trial child:

* "bwrap" (bubblewrap; Debian/Ubuntu package `bubblewrap`) and
* "unshare" (util-linux, if the kernel lets this process create namespaces): the child gets
  its own network namespace (only a loopback of its own: no connection reaches the host or
  beyond, whatever API it uses - `socket`, `_socket`, ctypes), its own pid namespace
  (setsid, double forks and daemons stay inside it, and the kernel kills every process in
  it when the sandbox ends, normally or at the deadline, before `run_program` returns),
  and its own mount namespace where every filesystem is read-only except a fresh tmpfs on
  /tmp (its working directory, `limits.disk_bytes` large; nothing is left on disk). It runs
  as an unprivileged uid with no capabilities and no_new_privs set (as root: a uid of its
  own, so the process limit counts only this sandbox's processes), under rlimits for
  processes, CPU time, address space and file size.
* "rlimits": the same limits and uid change, a new session killed with killpg, and the
  Python-level socket guard - all bypassable (`_socket`, setsid, world-writable
  directories). It is weak, so it runs only with `allow_weak=True`; otherwise, and when no
  isolation works at all, `run_program` raises SandboxUnavailable saying what to install.
  (Not as root, its process limit counts all of the user's processes, not the program's.)

As root, neither tool needs user namespaces; otherwise both do (bwrap also refuses nested
ones). Whichever runs, the limits are set by _sandbox_child.py before the program's first
line, and a trial child must show no capabilities and no_new_privs before one is used.

Reading is not confined: the program can read what its uid may read (as root, the
interpreter's directory is bound in; the rest of a root-only directory like /root is
hidden) but can only report it through its own stderr, which is captured.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ISOLATIONS = ("bwrap", "unshare", "rlimits")
STRONG = ("bwrap", "unshare")
_CHILD = (Path(__file__).with_name("_sandbox_child.py")).read_text(encoding="utf-8")
_WORKDIR = "/tmp"
_MAX_PROGRAM = 100_000  # characters: the program travels as one argv string (Linux caps one at 128 KiB)
# Unused uids, one picked per run: RLIMIT_NPROC counts per uid, so a shared uid (nobody) would let
# other sandboxes running at the same time, or any other nobody process, eat into this one's limit.
_UID_BASE, _UID_SPAN = 1_900_000_000, 1_000_000


# Proves an isolation starts and leaves the program without privileges.
_TRIAL = """\
status = open("/proc/self/status").read()
assert "CapEff:\\t0000000000000000" in status and "NoNewPrivs:\\t1" in status, status
"""


class SandboxUnavailable(RuntimeError):
    """No isolation strong enough can run on this machine (the message says what to install)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10
    memory_bytes: int = 1 << 30  # address space of each process
    processes: int = 16  # processes and threads alive at once, the program included
    file_bytes: int = 1 << 24  # largest file it may write
    disk_bytes: int = 64 << 20  # its /tmp working directory, all files together


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exit status 0 within the limits
    # "passed"; "failed" (a nonzero exit status: stderr_tail has the error); "timeout" (the
    # wall clock or the CPU-time limit ran out); "crashed" (killed by a signal, e.g. SIGSEGV).
    reason: str
    stderr_tail: str
    isolation: str = ""  # which of ISOLATIONS ran it


def run_program(
    program: str,
    limits: SandboxLimits = SandboxLimits(),
    isolation: str | None = None,
    allow_weak: bool = False,
) -> SandboxResult:
    """Run `program` sandboxed; passed means it exited with status 0 within the limits.

    `isolation` forces one of ISOLATIONS (default: the best that works here). Raises
    SandboxUnavailable rather than run with a weaker isolation than allowed.
    """
    if len(program) > _MAX_PROGRAM:
        raise ValueError(f"program of {len(program)} characters is over the sandbox's {_MAX_PROGRAM}")
    chosen = isolation or best_isolation(allow_weak)
    if chosen not in ISOLATIONS:
        raise ValueError(f"unknown isolation {chosen!r}: choose one of {ISOLATIONS}")
    if chosen not in STRONG and not allow_weak:
        raise SandboxUnavailable(
            f"the {chosen!r} isolation does not stop network access, writes outside its directory or"
            " escaping processes; pass allow_weak=True to run it anyway"
        )
    problem = _unusable(chosen)
    if problem:
        raise SandboxUnavailable(f"the {chosen!r} isolation does not work here: {problem}")
    if "\0" in program:
        # Python refuses such source, and no argument vector can carry it: a model's output
        # with a NUL in it fails as a program, without being run.
        return SandboxResult(False, "failed", "SyntaxError: source code cannot contain null bytes", chosen)
    return _run(chosen, program, limits)


def best_isolation(allow_weak: bool = False) -> str:
    """The strongest isolation that works on this machine; SandboxUnavailable if none does."""
    problems = []
    for isolation in ISOLATIONS if allow_weak else STRONG:
        problem = _unusable(isolation)
        if not problem:
            return isolation
        problems.append(f"{isolation}: {problem}")
    raise SandboxUnavailable(
        "no sandbox for generated code works here (" + "; ".join(problems) + "). Install bubblewrap"
        " (apt-get install bubblewrap) and allow user namespaces, or pass allow_weak=True to accept"
        " rlimits alone"
    )


@functools.cache
def _unusable(isolation: str) -> str:
    """Why `isolation` cannot run here ("" when a trial program ran in it)."""
    tool = {"bwrap": "bwrap", "unshare": "unshare"}.get(isolation)
    if tool and not shutil.which(tool):
        hint = " (install the bubblewrap package)" if tool == "bwrap" else " (install util-linux)"
        return f"`{tool}` is not on PATH{hint}"
    if os.geteuid() == 0 and isolation == "rlimits" and _hidden_by(_interpreter_paths()):
        return "as root it must switch uid, and that uid cannot reach the interpreter at " + sys.base_prefix
    trial = _run(isolation, _TRIAL, SandboxLimits(timeout_s=30))
    return "" if trial.passed else f"a trial program {trial.reason}: {trial.stderr_tail.strip()[-300:]}"


def _run(isolation: str, program: str, limits: SandboxLimits) -> SandboxResult:
    uid = _UID_BASE + random.randrange(_UID_SPAN) if os.geteuid() == 0 else None
    config = {
        "lockdown": isolation == "unshare",
        "workdir": _WORKDIR,
        "disk_bytes": limits.disk_bytes,
        "reveal": _hidden_by(_interpreter_paths()) if uid is not None else {},
        # An interpreter under /tmp (a checkout there, as CI may make) would vanish under the
        # work tmpfs: bound back read-only.
        "keep_in_workdir": [p for p in _interpreter_paths() if Path(p).is_relative_to(_WORKDIR)],
        "uid": uid,
        "drop_capabilities": uid is None and isolation == "unshare",
        "rlimits": {
            "RLIMIT_NPROC": limits.processes,
            "RLIMIT_CPU": limits.cpu_s,
            "RLIMIT_AS": limits.memory_bytes,
            "RLIMIT_FSIZE": limits.file_bytes,
            "RLIMIT_CORE": 0,
        },
    }
    if isolation == "rlimits":
        config["workdir"] = _weak_workdir(uid)
    command = [sys.executable, "-I", "-c", _CHILD, json.dumps(config), program]
    if isolation == "bwrap":
        command = _bwrap_command(config, uid is not None) + ["--", *command]
    elif isolation == "unshare":
        command = _unshare_command(uid is not None) + ["--", *command]
    try:
        return _supervise(isolation, command, limits, config["workdir"])
    finally:
        if isolation == "rlimits":
            shutil.rmtree(config["workdir"], ignore_errors=True)


def _bwrap_command(config: dict, as_root: bool) -> list[str]:
    command = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for hider, keep in config["reveal"].items():  # see lock_down_filesystem in _sandbox_child.py
        command += ["--tmpfs", hider]
        for path in keep:
            for parent in reversed(Path(path).relative_to(hider).parents[:-1]):
                command += ["--perms", "0755", "--dir", str(Path(hider, parent))]  # bwrap's default is 0700
            command += ["--ro-bind", path, path]
    command += ["--perms", "1777", "--size", str(config["disk_bytes"]), "--tmpfs", _WORKDIR]
    for path in config["keep_in_workdir"]:
        for parent in reversed(Path(path).relative_to(_WORKDIR).parents[:-1]):
            command += ["--perms", "0755", "--dir", str(Path(_WORKDIR, parent))]
        command += ["--ro-bind", path, path]
    command += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    command += ["--die-with-parent", "--new-session", "--chdir", _WORKDIR]
    if as_root:  # no user namespace: the child keeps only what it needs to switch to its own uid
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        command += ["--unshare-user", "--disable-userns"]
    return command


def _unshare_command(as_root: bool) -> list[str]:
    command = ["unshare", "--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child"]
    command += ["--mount-proc", "--propagation", "private"]
    return command if as_root else command + ["--user", "--map-root-user"]


def _weak_workdir(uid: int | None) -> str:
    workdir = tempfile.mkdtemp(prefix="mtp-sandbox-")
    if uid is not None:
        os.chown(workdir, uid, uid)
    return workdir


def _interpreter_paths() -> list[str]:
    """What the child's interpreter must be able to read."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(sys.executable))}
    return sorted(paths)


def _hidden_by(paths: list[str]) -> dict[str, list[str]]:
    """{directory only root may enter: the paths under it} for those of `paths` behind one."""
    hidden: dict[str, list[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts) + 1):
            ancestor = str(Path(*parts[:i]))
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                hidden.setdefault(ancestor, []).append(path)
                break
    return hidden


def _supervise(isolation: str, command: list[str], limits: SandboxLimits, workdir: str) -> SandboxResult:
    # stderr goes to a file, not a pipe: a pipe's end held by a process that escaped a weak
    # sandbox would keep us waiting for its end-of-file.
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            command,
            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": workdir, "TMPDIR": workdir},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, for killpg (all an "rlimits" sandbox has)
        )
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_all(proc, isolation)
        if isolation == "rlimits":  # the program may have left processes in its group
            _killpg(proc.pid)
        stderr.seek(max(0, os.fstat(stderr.fileno()).st_size - 2000))
        tail = stderr.read().decode("utf-8", "replace")[-500:]
    return _result(proc.returncode, timed_out, tail, isolation)


def _kill_all(proc: subprocess.Popen, isolation: str) -> None:
    """Kill the sandbox and every process in it; return once they are gone."""
    if isolation in STRONG:
        # Killing the namespace's first process makes the kernel kill all the others, and its
        # parent (bwrap or unshare, our child) is only told of its death once they are all gone.
        for pid in _children(proc.pid):
            _signal(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            pass
    _killpg(proc.pid)
    proc.kill()
    proc.wait()


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state is the ppid
                children.append(int(entry))
    return children


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _result(returncode: int, timed_out: bool, tail: str, isolation: str) -> SandboxResult:
    if timed_out or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return SandboxResult(False, "timeout", tail, isolation)
    if returncode == 0:
        return SandboxResult(True, "passed", tail, isolation)
    if returncode < 0 or returncode > 128:  # a signal, reported by us or by bwrap/unshare as 128 + n
        return SandboxResult(False, "crashed", tail, isolation)
    return SandboxResult(False, "failed", tail, isolation)
