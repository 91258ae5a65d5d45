"""The client side of `expost serve`, and the protocol both sides speak.

It runs before every `expost` command (expost.entry), so it imports no more than os, sys, socket
and marshal: finding no server costs a stat. With a compatible server for this workspace, the
command line, working directory, environment and terminal go to it (see expost.server).
"""

from __future__ import annotations

import marshal
import os
import sys

SOCKET_NAME = "serve.sock"
COMMANDS = ("run", "build", "check", "render", "verify")  # commands a server runs; the rest stay local
NO_SERVER_ENV = "EXPOST_NO_SERVER"
# Environment read when modules are imported (thread pools, devices, import paths, hash seed):
# a command whose values differ from the server's runs locally.
ENV_EXACT = ("LANG", "MPLBACKEND", "MPLCONFIGDIR")
ENV_PREFIXES = ("PYTHON", "LC_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_", "CUDA_", "CUBLAS_", "CUDNN_", "NCCL_",
                "NVIDIA_", "TORCH", "PYTORCH_", "LD_")
HEADER = 8  # bytes of message length before each message


# -- what must match -------------------------------------------------------------------------

def fingerprint(environ) -> dict:
    """What a server and a client must share for a forked command to behave as a local one."""
    return {"python": f"{os.path.realpath(sys.executable)} {sys.prefix} {sys.version}", "expost": code_stamp(),
            "packages": path_stamp(),
            "env": {k: v for k, v in sorted(environ.items())
                    if k in ENV_EXACT or k.startswith(ENV_PREFIXES)}}


def code_stamp() -> list:
    """expost's own files with their modification times and sizes."""
    pkg = os.path.dirname(os.path.realpath(__file__))
    out = []
    for folder, dirs, files in os.walk(pkg):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".j2", ".tmpl", ".css", ".md")):
                st = os.stat(os.path.join(folder, name))
                out.append((os.path.relpath(os.path.join(folder, name), pkg), st.st_mtime_ns, st.st_size))
    return out


def path_stamp() -> list:
    """Import folders and their modification times: installing or removing a package changes them."""
    out = []
    for entry in sys.path[1:]:  # [0] is the script's folder or the working directory
        try:
            out.append((entry, os.stat(entry).st_mtime_ns))
        except OSError:
            out.append((entry, None))
    return out


def mismatch(mine: dict, theirs: dict) -> list[str]:
    out = [k for k in ("python", "expost", "packages") if mine[k] != theirs[k]]
    env_a, env_b = mine["env"], theirs["env"]
    out += [f"${k}" for k in sorted(set(env_a) | set(env_b)) if env_a.get(k) != env_b.get(k)]
    return out


def socket_path(cache) -> str:
    """In the cache folder; a unix socket's path is limited to ~107 bytes, so long ones go to a
    folder of this user's alone under /tmp (created 0700; see private_dir)."""
    path = os.path.join(str(cache), SOCKET_NAME)
    if len(path) <= 100:
        return path
    import hashlib

    return os.path.join(f"/tmp/expost-{os.getuid()}", hashlib.sha256(path.encode()).hexdigest()[:16] + ".sock")


def peer_is_me(sock) -> bool:
    """The process at the other end runs as this user (a socket path alone proves nothing)."""
    import socket
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1] == os.getuid()


# -- messages: length-prefixed marshal (plain data only; the socket is this user's alone) ------

def send(sock, obj, fds=()) -> None:
    import socket

    data = marshal.dumps(obj)
    data = len(data).to_bytes(HEADER, "big") + data
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    sock.sendall(data)


def recv(sock, with_fds: bool = False):
    """One message (and the file descriptors sent with it); None at end of stream."""
    import socket

    fds: list[int] = []
    try:
        if with_fds:
            chunk, fds, _, _ = socket.recv_fds(sock, 65536, 8)
        else:
            chunk = sock.recv(65536)
        obj = Reader(sock, chunk).next() if chunk else None
    except BaseException:
        for fd in fds:  # never keep a client's terminal open by accident
            os.close(fd)
        raise
    return (obj, fds) if with_fds else obj


class CutOff(ConnectionError):
    """The stream ended inside a message."""


class Reader:
    """Messages from a stream, in order, however the bytes arrive (two may come in one read)."""

    def __init__(self, sock, first: bytes = b""):
        self.sock, self.buf = sock, bytearray(first)

    def next(self):
        """The next message; None at end of stream; CutOff if the stream ends inside one."""
        while True:
            if len(self.buf) >= HEADER:
                size = int.from_bytes(self.buf[:HEADER], "big")
                if len(self.buf) >= HEADER + size:
                    obj = marshal.loads(bytes(self.buf[HEADER:HEADER + size]))
                    del self.buf[:HEADER + size]
                    return obj
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    raise CutOff("the message was cut off")
                return None
            self.buf += chunk


# -- client ------------------------------------------------------------------------------------

def _cache_dir(root: str) -> str:
    """workspace.cache_dir's answer, without importing pathlib (checked equal by a test)."""
    env = os.environ.get("EXPOST_CACHE_DIR")
    return os.path.realpath(env) if env else os.path.join(root, ".expost")


def _command_and_cache(argv: list[str]) -> tuple[str, str] | None:
    """The command name and this workspace's cache folder, for argv worth sending; else None."""
    i, workspace = 0, None
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "--workspace" and i + 1 < len(argv):
            workspace, i = argv[i + 1], i + 2
        elif argv[i].startswith("--workspace="):
            workspace, i = argv[i].split("=", 1)[1], i + 1
        else:
            return None  # --help, --version, anything unknown: the local CLI answers
    if i >= len(argv) or argv[i] not in COMMANDS or "--help" in argv[i + 1:]:
        return None
    try:
        here = os.path.realpath(workspace if workspace else os.getcwd())
        while True:
            if os.path.isdir(os.path.join(here, "experiments")):
                return argv[i], _cache_dir(here)
            parent = os.path.dirname(here)
            if workspace or parent == here:
                return None
            here = parent
    except Exception:  # any problem with the workspace: the local CLI reports it properly
        return None


def forward(argv: list[str]) -> int | None:
    """Run this command line in a compatible server; its exit code, or None to run locally."""
    if os.environ.get(NO_SERVER_ENV, "") not in ("", "0"):
        return None
    found = _command_and_cache(argv)
    if not found:
        return None
    path = socket_path(found[1])
    if not os.path.exists(path):
        return None
    try:
        for fd in (0, 1, 2):  # a closed standard stream cannot be handed over: run locally
            os.fstat(fd)
    except OSError:
        return None
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        if not peer_is_me(sock):  # someone else's socket: never hand it our terminal or environment
            sock.close()
            print(f"expost: {path} belongs to another user; ignoring it and running here.", file=sys.stderr)
            return None
    except OSError:  # a socket left by a server that is gone
        sock.close()
        return None
    with sock:
        umask = os.umask(0o022)
        os.umask(umask)
        try:
            send(sock, {"op": "exec", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                        "path": sys.path, "fingerprint": fingerprint(os.environ),
                        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                        "nice": os.getpriority(os.PRIO_PROCESS, 0)}, fds=(0, 1, 2))
        except OSError:  # the server went away before it had the command: run it here
            return None
        try:
            taken, reply = _wait(sock)
        except OSError:
            taken, reply = True, None
    if reply is None and not taken:  # the server stopped before taking it: nothing ran
        return None
    if reply is None:
        print("expost: the server closed the connection before the command finished; completed runs are "
              "cached. Run the command again (EXPOST_NO_SERVER=1 runs it without the server).", file=sys.stderr)
        return 1
    if "refused" in reply:
        why = ", ".join(reply["refused"])
        note = ("it has stopped; `expost serve --detach` starts a fresh one" if reply.get("stopped")
                else "start one from this environment to use it")
        print(f"expost: not using the server ({why} differ from when it started): running here; {note}.",
              file=sys.stderr)
        return None
    return reply["exit"]


def _wait(sock) -> tuple[bool, dict | None]:
    """(whether the server took the command, its final reply). Ctrl-C is passed on as SIGINT; a
    second one leaves at once (the server then kills the command)."""
    interrupts, taken, reader = 0, False, Reader(sock)
    while True:
        try:
            msg = reader.next()
        except CutOff:  # as if the stream had ended where the message began
            msg = None
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1:
                return taken, {"exit": 130}
            send(sock, {"op": "interrupt"})
            continue
        if msg is None or "taken" not in msg:
            return taken, msg
        taken = True


def request(cache: os.PathLike | str, op: str, timeout: float = 5.0):
    """A status or stop request; None when no server answers."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path(cache))
        send(sock, {"op": op})
        return recv(sock)
    except OSError:
        return None
    finally:
        sock.close()
