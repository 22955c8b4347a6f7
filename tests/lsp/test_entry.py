"""How the server is started: `mtp-assistant lsp`, TCP on 127.0.0.1 only, nothing on stdout."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.lsp.raw import PROJECT, connect, frame, free_port, server_env, socket_client


def start_tcp(model_dir: Path, home: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "lsp", "--tcp", str(port), "--model", str(model_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server_env(home), cwd=PROJECT,
    )


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.1)
    return path.read_text().strip()


def initialize(token=None, msg_id=1) -> dict:
    options = {"initializationOptions": {"token": token}} if token is not None else {}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": {"capabilities": {}, **options}}


def refused(port: int, first: bytes) -> dict:
    """What the server answers a connection that opens with `first`; it must then close."""
    with connect(port) as sock:
        sock.sendall(first)
        client = socket_client(sock)
        reply = client.wait_for(lambda m: "error" in m)
        assert client.wait_closed(10)  # the server hung up
        return reply


def test_tcp_needs_the_token_from_a_private_file(tiny_model_dir, tmp_path):
    port = free_port()
    token_file = tmp_path / "secret" / "token"
    log_file = tmp_path / "server.log"  # the fuzz logs far more than a pipe nobody reads holds
    proc = start_tcp(tiny_model_dir, tmp_path / "home", port, "--token-file", str(token_file), "--log-file", str(log_file))
    try:
        token = wait_for_file(token_file, proc)
        assert len(token) >= 32 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        connect(port, proc=proc).close()  # listening
        assert refused(port, frame(initialize()))["error"]["code"] == -32001
        wrong = refused(port, frame(initialize("wrong", msg_id=7)))
        assert (wrong["id"], wrong["error"]["code"]) == (7, -32001)
        assert refused(port, frame({"jsonrpc": "2.0", "id": 2, "method": "mtp/stats", "params": {"token": token}}))["error"]["code"] == -32001
        assert refused(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")["id"] is None
        assert refused(port, b"Content-Length: 1000000000000000\r\n\r\n")["error"]["code"] == -32001
        with connect(port) as sock:  # the right token: served
            client = socket_client(sock)
            client.send(initialize(token))
            reply = client.wait_for(lambda m: m.get("id") == 1)
            assert "inlineCompletionProvider" in reply["result"]["capabilities"]
            bound = [c for c in _listening(proc.pid) if c.endswith(f":{port}")]
            assert bound and all(addr.startswith("127.0.0.1:") for addr in bound)
            client.notify("initialized", {})
            figures = fuzz_briefly(client, tmp_path)
            client.send(initialize(token, msg_id="second"))  # one session per server
            assert client.wait_for(lambda m: m.get("id") == "second")["error"]["code"] == -32600
            assert client.request("bye", "shutdown")["result"] is None
            client.notify("exit")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=30)
    assert out == b""  # logs never go to stdout
    assert str(token_file).encode() in err and "listening on 127.0.0.1" in log_file.read_text()
    assert token.encode() not in err and token not in log_file.read_text()
    assert not token_file.exists()  # removed at exit
    print(f"fuzz over TCP: {figures}")


def fuzz_briefly(client, tmp_path: Path) -> dict:
    from tests.lsp.fuzzing import Fuzzer
    from tests.lsp.test_fuzz import check_answers, fuzz

    (tmp_path / "ws").mkdir()
    fuzzer = Fuzzer(7, tmp_path / "ws")
    figures = fuzz(client, fuzzer, 300)
    assert figures["unanswered"] == 0
    check_answers(client, fuzzer)
    return figures


def test_the_token_file_defaults_to_the_store_home(tiny_model_dir, tmp_path):
    port = free_port()
    proc = start_tcp(tiny_model_dir, tmp_path, port)
    try:
        token_file = tmp_path / f"lsp-{port}.token"
        wait_for_file(token_file, proc)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _listening(pid: int) -> list[str]:
    """Addresses the process listens on, from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # state LISTEN
                host, port = cols[1].split(":")
                ip = ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0)) if len(host) == 8 else host
                found.append(f"{ip}:{int(port, 16)}")
    return found


def test_assistant_never_imports_lsp():
    code = "import sys, assistant.cli, assistant.completion.service; print('lsp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, check=True).stdout
    assert out.strip() == "False"
