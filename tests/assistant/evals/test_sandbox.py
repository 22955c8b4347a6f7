"""Hostile programs against the sandbox: each one tries to break one guarantee and must not.

Every program first proves it really ran (it writes its own file and ends with status 0, or
reports on stderr), so a sandbox that merely failed to start cannot pass these tests.
"""

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from assistant.evals import sandbox
from assistant.evals.humaneval import load_problems, program_for
from assistant.evals.sandbox import SandboxLimits, SandboxUnavailable, run_program

FAST = SandboxLimits(timeout_s=5, cpu_s=5, processes=16)


@pytest.fixture(params=sandbox.STRONG)
def isolation(request):
    problem = sandbox._unusable(request.param)
    if problem:
        pytest.skip(f"{request.param} cannot run on this machine: {problem}")
    return request.param


@pytest.fixture
def outside(tmp_path):
    """A directory outside the sandbox that anyone may write to: only the sandbox can protect it."""
    parent = "/var/tmp" if os.access("/var/tmp", os.W_OK) else str(tmp_path)  # /tmp is the sandbox's own
    path = Path(tempfile.mkdtemp(prefix="mtp-sandbox-test-", dir=parent))
    path.chmod(0o777)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def processes_with(token: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains `token`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if token.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.mark.parametrize("module", ["_socket", "socket"])
def test_no_connection_reaches_a_listening_host_port(isolation, module):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        # `import socket` gets the Python guard's stub; reloading the module undoes that, as hostile code would.
        program = (
            f"import importlib, {module} as net\n"
            f"if net.__name__ == 'socket': importlib.reload(net)\n"
            f"s = net.socket(net.AF_INET, net.SOCK_STREAM)\n"
            f"s.connect(('127.0.0.1', {port}))\n"
            "s.sendall(b'leak')\n"
        )
        result = run_program(program, FAST, isolation)
        assert (result.passed, result.reason) == (False, "failed")
        assert "Error" in result.stderr_tail  # ConnectionRefused / NetworkUnreachable: it did try
        with pytest.raises(BlockingIOError):  # nothing ever connected
            listener.accept()


def test_no_writes_or_deletes_outside_its_directory(isolation, outside, tmp_path):
    victim = outside / "victim"
    victim.write_text("keep me")
    victim.chmod(0o666)
    targets = [outside / "written", tmp_path / "written"]
    program = (
        "import os, shutil\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try: open(path, 'w').write('escaped')\n"
        "    except OSError: pass\n"
        f"for attack in (os.remove, lambda p: open(p, 'w')):\n"
        f"    try: attack({str(victim)!r})\n"
        "    except OSError: pass\n"
        "open('mine', 'w').write('own directory is writable')\n"
        "assert open('mine').read() == 'own directory is writable'\n"
    )
    result = run_program(program, FAST, isolation)
    assert result.passed, result.stderr_tail
    assert not any(t.exists() for t in targets)
    assert victim.read_text() == "keep me"


def test_a_fork_bomb_stops_at_the_process_limit(isolation):
    # Bounded by itself (64 forks, children sleep 20 s) so that a broken sandbox cannot hurt the machine.
    program = (
        "import posix, time\n"  # posix.fork: the os.fork guard is no obstacle
        "forked = 0\n"
        "for _ in range(64):\n"
        "    try: pid = posix.fork()\n"
        "    except BlockingIOError: break\n"
        "    if pid == 0:\n"
        "        time.sleep(20); posix._exit(0)\n"
        "    forked += 1\n"
        f"assert 8 <= forked < {FAST.processes}, forked\n"
    )
    start = time.monotonic()
    result = run_program(program, FAST, isolation)
    assert result.passed, result.stderr_tail
    assert time.monotonic() - start < 4  # the sleeping children died with the sandbox


def _escapees(token: str) -> str:
    """A program that leaves two sleepers behind: a new-session Popen and a setsid'ed double fork."""
    return (
        "import posix, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', {token!r}], start_new_session=True)\n"
        "if posix.fork() == 0:\n"
        "    posix.setsid()\n"
        "    if posix.fork() == 0:\n"
        f"        posix.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {token!r}])\n"
        "    posix._exit(0)\n"
        "posix.wait()\n"
        "sys.stderr.write('started\\n')\n"
    )


def _wait_started(token: str, count: int) -> None:
    deadline = time.monotonic() + 3
    while len(processes_with(token)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_every_descendant_dies_at_the_deadline(isolation):
    token = f"mtp-sandbox-{uuid.uuid4().hex}"
    program = _escapees(token) + "while True: pass\n"
    result = run_program(program, SandboxLimits(timeout_s=2, cpu_s=5), isolation)
    assert result.reason == "timeout" and "started" in result.stderr_tail
    assert processes_with(token) == []


def test_every_descendant_dies_when_the_program_ends(isolation):
    token = f"mtp-sandbox-{uuid.uuid4().hex}"
    program = _escapees(token) + "import time\ntime.sleep(0.2)\n"
    result = run_program(program, FAST, isolation)
    assert result.passed and "started" in result.stderr_tail
    assert processes_with(token) == []


@pytest.mark.parametrize(
    "program, passed, reason",
    [
        ("assert 1 + 1 == 2", True, "passed"),
        ("assert 1 + 1 == 3", False, "failed"),
        ("raise SystemExit(3)", False, "failed"),
        ("while True: pass", False, "timeout"),
        ("import os; os.abort()", False, "crashed"),
        ("x = bytearray(4 << 30)", False, "failed"),  # over the address-space limit
        ("open('big', 'wb').write(bytes(64 << 20))", False, "failed"),  # over the file-size limit (EFBIG)
        ("x = 1\0", False, "failed"),  # a NUL (model output can hold one): not Python source
    ],
)
def test_outcomes_and_their_reasons(isolation, program, passed, reason):
    result = run_program(program, SandboxLimits(timeout_s=2, cpu_s=5), isolation)
    assert (result.passed, result.reason, result.isolation) == (passed, reason, isolation)


def test_a_humaneval_program_runs_normally(isolation):
    problem = load_problems()[0]
    assert run_program(program_for(problem, problem["canonical_solution"]), FAST, isolation).passed
    assert not run_program(program_for(problem, "    return None\n"), FAST, isolation).passed


def test_the_weak_isolation_needs_an_explicit_opt_in():
    with pytest.raises(SandboxUnavailable, match="allow_weak=True"):
        run_program("pass", FAST, isolation="rlimits")


def test_without_any_isolation_it_refuses_and_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bwrap nor unshare can be found
    sandbox._unusable.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="install bubblewrap"):
            run_program("pass", FAST)
    finally:
        sandbox._unusable.cache_clear()


def test_the_weak_isolation_still_limits_processes_when_allowed():
    problem = sandbox._unusable("rlimits")
    if problem:
        pytest.skip(f"rlimits cannot run on this machine: {problem}")
    token = f"mtp-sandbox-{uuid.uuid4().hex}"
    program = (
        "import posix, sys\n"
        "forked = 0\n"
        "for _ in range(64):\n"
        "    try: pid = posix.fork()\n"
        "    except BlockingIOError: break\n"
        "    if pid == 0:\n"
        f"        posix.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(20)', {token!r}])\n"
        "    forked += 1\n"
        f"assert forked < {FAST.processes}, forked\n"
    )
    result = run_program(program, FAST, isolation="rlimits", allow_weak=True)
    assert result.passed and result.isolation == "rlimits", result.stderr_tail
    assert processes_with(token) == []  # same process group: killed with it
