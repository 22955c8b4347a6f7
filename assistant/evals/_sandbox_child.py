"""The sandbox's child side: runs as `python -I -c <this file's text> CONFIG PROGRAM`.

It is never imported. sandbox.py starts it inside the isolation it chose; this code then
finishes the lock-down that has to happen inside (filesystem for the `unshare` isolation,
the unprivileged uid, the resource limits) and only then runs the untrusted program, so no
line of the program runs before every limit is in place.
"""

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 0x20, 0x400, 0x800, 0x1000, 0x4000
MS_RELATIME, MS_STRICTATIME = 0x200000, 0x1000000
# Per-mount flags a bind remount must repeat: inside a user namespace dropping one is refused.
_KEPT_FLAGS = {
    "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME,
}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        sys.stderr.write(f"sandbox setup: {what}: {os.strerror(errno)}\n")
        os._exit(125)


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, flags to keep) of every mount in this namespace, from /proc/self/mountinfo."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # "\040" is a space
            flags = 0
            for option in fields[5].split(","):
                flags |= _KEPT_FLAGS.get(option, 0)
            points.append((point, flags))
    return points


def lock_down_filesystem(workdir: str, size: int, reveal: dict[str, list[str]], keep_in_workdir: list[str]) -> None:
    """Everything read-only except a fresh tmpfs on `workdir` (we are root in a private mount
    namespace); `keep_in_workdir`: paths under `workdir` bound back read-only (the interpreter's)."""
    # A directory only root may enter hides the interpreter from the unprivileged uid: put an
    # empty tmpfs over it and bind back only what must be seen (opened first: it is hidden next).
    for hider, keep in reveal.items():
        handles = [(path, os.open(path, os.O_PATH)) for path in keep]
        _mount("tmpfs", hider, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for path, fd in handles:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    for point, flags in _mount_points():
        if point != "/proc" and not point.startswith("/proc/"):
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    points = _mount_points()
    kept = [(path, os.open(path, os.O_PATH), _flags_of(path, points)) for path in keep_in_workdir]
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    for path, fd, flags in kept:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def _flags_of(path: str, points: list[tuple[str, int]]) -> int:
    """The flags to keep of the mount that holds `path` (the longest mount point above it)."""
    above = [(point, flags) for point, flags in points if path == point or path.startswith(point.rstrip("/") + "/")]
    return max(above, key=lambda pf: len(pf[0]))[1] if above else 0


def drop_capabilities() -> None:
    """As root of our own user namespace: keep no capability, now or after any exec."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    _check(_libc.capset(ctypes.byref(Header(0x20080522, 0)), (ctypes.c_uint32 * 6)()), "capset")


def become(uid: int) -> None:
    """Root to an unprivileged uid: the kernel enforces the process limit on every uid but root's."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")  # no setuid binary gives it back
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def disable_python_network() -> None:
    """Courtesy only (the namespaces are the boundary): a clear error for well-meant socket use."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network access is disabled in the evaluation sandbox")

    socket.socket = socket.create_connection = socket.getaddrinfo = no_network
    os.fork = os.system = no_network


def main() -> None:
    config = json.loads(sys.argv[1])
    program = sys.argv[2]
    if config["lockdown"]:
        lock_down_filesystem(config["workdir"], config["disk_bytes"], config["reveal"], config["keep_in_workdir"])
    if config["uid"] is not None:
        become(config["uid"])
    elif config["drop_capabilities"]:
        drop_capabilities()
    for name, value in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    os.chdir(config["workdir"])
    disable_python_network()
    sys.argv = ["<program>"]
    exec(compile(program, "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})


main()
