"""Run untrusted generated code in a separate interpreter with time and memory limits.

Generated programs never run in the assistant's own process: each one is a fresh
`python -I` child (isolated mode: no user site, no PYTHON* variables, no cwd on sys.path)
in an empty temporary directory, with a CPU-time and address-space limit, a wall-clock
timeout, and sockets disabled before the program starts. This keeps a runaway or
careless program from hurting the machine; it is not a security boundary against code
written to escape it (use a container for that).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Runs in the child before the program: no network, no forking of further processes.
_PRELUDE = """\
import socket as _socket, os as _os
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the evaluation sandbox")
_socket.socket = _no_network
_socket.create_connection = _no_network
_socket.getaddrinfo = _no_network
_os.fork = _no_network
_os.system = _no_network
del _socket, _os, _no_network
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10
    memory_bytes: int = 1 << 30  # address space


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exit status 0 within the limits
    reason: str  # "passed", "failed", "timeout"
    stderr_tail: str


def _limit(limits: SandboxLimits):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 24, 1 << 24))

    return apply


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `program` in a sandboxed child interpreter; passed means it exited with status 0."""
    with tempfile.TemporaryDirectory(prefix="mtp-sandbox-") as workdir:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _PRELUDE + program],
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=limits.timeout_s,
                preexec_fn=_limit(limits) if sys.platform != "win32" else None,
            )
        except subprocess.TimeoutExpired:
            return SandboxResult(False, "timeout", "")
    tail = proc.stderr.decode("utf-8", "replace")[-500:]
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):  # the CPU-time limit, before the wall clock's
        return SandboxResult(False, "timeout", tail)
    return SandboxResult(proc.returncode == 0, "passed" if proc.returncode == 0 else "failed", tail)
