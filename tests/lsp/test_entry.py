"""How the server is started: `mtp-assistant lsp`, TCP on 127.0.0.1 only, nothing on stdout."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def read_message(sock: socket.socket) -> dict:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.split(b"Content-Length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return json.loads(body[:length])


def test_cli_starts_the_server_on_localhost_tcp(tiny_model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "MTP_ASSISTANT_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "lsp", "--tcp", str(port), "--model", str(tiny_model_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=PROJECT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.2)
        with sock:
            sock.sendall(frame({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}))
            reply = read_message(sock)
            assert reply["id"] == 1 and "inlineCompletionProvider" in reply["result"]["capabilities"]
            bound = [c for c in _listening(proc.pid) if c.endswith(f":{port}")]
            assert bound and all(addr.startswith("127.0.0.1:") for addr in bound)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out == b""  # logs never go to stdout
    assert b"listening on 127.0.0.1" in err


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
