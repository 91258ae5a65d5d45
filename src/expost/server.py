"""Warm server: one process with torch and expost already imported; each command runs in a fork of it.

Every `expost` process pays for its imports before any work starts: torch (0.75-1.5 s here) and
torch._dynamo, which the first torch.optim call imports (as long again). `expost serve` pays them
once. While it runs, `expost run|build|check|render|verify` in that workspace (a thin client: no
torch, no click) hands its command line, working directory, environment and terminal (stdin,
stdout and stderr, passed as file descriptors) to the server, which forks a child that runs the
command exactly as the local CLI would and reports its exit code. The server itself never imports
an experiment or runs a computation, so every command starts from the same pristine state: edits
to experiments are always seen, and nothing leaks from one command into the next.

The server is used only when it is compatible: the same Python, the same expost code, the same
installed packages (site-packages unchanged since it started) and the same values of the
environment variables read at import time (OMP_*, CUDA_*, PYTHONPATH, ...). A server whose code or
packages changed on disk stops itself; with a different environment the command runs locally and
says why. `EXPOST_NO_SERVER=1` runs locally regardless.

Ctrl-C in the client is forwarded as SIGINT to the command's process group (what a terminal does
locally); if the client dies, the server kills that command's processes. Results are written by
the same workers to the same cache either way, so completed runs are never lost.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from expost.errors import ExpostError

SOCKET_NAME = "serve.sock"
COMMANDS = ("run", "build", "check", "render", "verify")  # commands a server runs; the rest stay local
NO_SERVER_ENV = "EXPOST_NO_SERVER"
PRELOAD = ("torch", "torch._dynamo", "numpy", "matplotlib.figure", "matplotlib.backends.backend_agg", "expost.cli", "expost.pipeline",
           "expost.runner", "expost.render", "expost.figures", "expost.html", "expost.forum", "expost.writeup",
           "expost.export", "expost.claims", "expost.results")
# Environment read when modules are imported (thread pools, devices, import paths, hash seed):
# a command whose values differ from the server's runs locally.
ENV_EXACT = ("PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "MPLBACKEND",
             "MPLCONFIGDIR", "EXPOST_NO_SERVER")
ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_", "CUDA_", "CUBLAS_", "CUDNN_", "NCCL_", "NVIDIA_",
                "TORCH", "PYTORCH_", "LD_")
HEADER = 8  # bytes of message length before each pickled message


# -- what must match -------------------------------------------------------------------------

def fingerprint(environ) -> dict:
    """What a server and a client must share for a forked command to behave as a local one."""
    return {"python": f"{sys.executable} {sys.version}", "expost": _code_stamp(), "packages": _path_stamp(),
            "env": {k: v for k, v in sorted(environ.items())
                    if k in ENV_EXACT or k.startswith(ENV_PREFIXES)}}


def _code_stamp() -> str:
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in pkg.rglob("*") if p.suffix in (".py", ".j2", ".tmpl", ".css", ".md")):
        st = path.stat()
        h.update(f"{path.relative_to(pkg)} {st.st_mtime_ns} {st.st_size}\n".encode())
    return h.hexdigest()


def _path_stamp() -> str:
    """Import folders and their modification times: installing or removing a package changes them."""
    h = hashlib.sha256()
    for entry in sys.path[1:]:  # [0] is the script's folder or the working directory
        try:
            h.update(f"{entry} {os.stat(entry).st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{entry} -\n".encode())
    return h.hexdigest()


def mismatch(mine: dict, theirs: dict) -> list[str]:
    out = [k for k in ("python", "expost", "packages") if mine[k] != theirs[k]]
    env_a, env_b = mine["env"], theirs["env"]
    out += [f"${k}" for k in sorted(set(env_a) | set(env_b)) if env_a.get(k) != env_b.get(k)]
    return out


def socket_path(cache: Path) -> Path:
    """In the cache folder; a unix socket's path is limited to ~107 bytes, so long ones go to /tmp."""
    path = Path(cache) / SOCKET_NAME
    if len(str(path)) <= 100:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path("/tmp") / f"expost-{os.getuid()}-{digest}.sock"


# -- messages ----------------------------------------------------------------------------------

def send(sock, obj, fds=()) -> None:
    import pickle
    import socket

    data = pickle.dumps(obj)
    data = len(data).to_bytes(HEADER, "big") + data
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    sock.sendall(data)


def recv(sock, with_fds: bool = False):
    """One message (and the file descriptors sent with it); None at end of stream."""
    import pickle
    import socket

    fds: list[int] = []
    if with_fds:
        chunk, fds, _, _ = socket.recv_fds(sock, 65536, 8)
    else:
        chunk = sock.recv(65536)
    buf = bytearray(chunk)
    if not buf:
        return (None, fds) if with_fds else None
    while len(buf) < HEADER or len(buf) < HEADER + int.from_bytes(buf[:HEADER], "big"):
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("the message was cut off")
        buf += more
    obj = pickle.loads(bytes(buf[HEADER:]))
    return (obj, fds) if with_fds else obj


# -- client ------------------------------------------------------------------------------------

def _command_and_cache(argv: list[str]) -> tuple[str, Path] | None:
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
    from expost.workspace import cache_dir

    try:
        here = Path(workspace).resolve() if workspace else Path.cwd().resolve()
        candidates = (here,) if workspace else (here, *here.parents)
        root = next((p for p in candidates if (p / "experiments").is_dir()), None)
        return (argv[i], cache_dir(root)) if root else None
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
    if not path.exists():
        return None
    try:
        for fd in (0, 1, 2):  # a closed standard stream cannot be handed over: run locally
            os.fstat(fd)
    except OSError:
        return None
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # a socket left by a server that is gone
        sock.close()
        return None
    with sock:
        umask = os.umask(0o022)
        os.umask(umask)
        send(sock, {"op": "exec", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                    "path": sys.path, "fingerprint": fingerprint(os.environ)}, fds=(0, 1, 2))
        reply = _wait(sock)
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


def _wait(sock):
    """The server's final reply; Ctrl-C is passed on as SIGINT, a second one leaves at once."""
    interrupts = 0
    while True:
        try:
            return recv(sock)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1:
                return {"exit": 130}
            send(sock, {"op": "interrupt"})


def request(cache: Path, op: str, timeout: float = 5.0):
    """A status or stop request; None when no server answers."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path(cache)))
        send(sock, {"op": op})
        return recv(sock)
    except OSError:
        return None
    finally:
        sock.close()


# -- server ------------------------------------------------------------------------------------

class ServerError(ExpostError):
    """The server could not start, or another one already serves this cache."""


def preload() -> list[str]:
    """Import what commands need, so each fork starts with it; returns what could not be imported."""
    import importlib

    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # e.g. no torch installed: commands import what they need themselves
            missing.append(name)
    return missing


def serve(cache: Path, idle_s: float = 1800.0, on_ready=None) -> str:
    """Serve commands until stopped, idle for idle_s, or stale; returns why it stopped."""
    import selectors
    import signal
    import socket
    import time

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = socket_path(cache)
    if request(cache, "status", timeout=2.0) is not None:
        raise ServerError(f"a server is already running for {cache} (socket {path}); "
                          "stop it with `expost serve --stop`")
    path.unlink(missing_ok=True)
    mine = fingerprint(os.environ)  # before the imports: torch._dynamo sets variables of its own
    t0 = time.perf_counter()
    missing = preload()
    started = time.time()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is this user's alone: whoever can connect can run code
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    inode = path.stat().st_ino
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select when a command finishes
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    children: dict[int, socket.socket] = {}  # pid of a command -> its client's connection
    served, last_active, reason = 0, time.monotonic(), None
    if on_ready:
        on_ready({"pid": os.getpid(), "socket": str(path), "preload_s": time.perf_counter() - t0,
                  "missing": missing})

    def finish(pid: int, status: int) -> None:
        conn = children.pop(pid, None)
        if conn is not None:
            code = os.waitstatus_to_exitcode(status)
            with _quiet():
                send(conn, {"exit": code if code >= 0 else 128 - code})
            with _quiet():
                sel.unregister(conn)
            conn.close()

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            finish(pid, status)

    try:
        while reason is None:
            for key, _ in sel.select(timeout=1.0):
                if key.data == "wake":
                    with _quiet():
                        wake_r.recv(4096)
                elif key.data == "accept":
                    conn, _ = listener.accept()
                    reason = _accept(conn, mine, children, sel, started, served, (listener, wake_r, wake_w))
                    served += 1  # status requests count here, but only commands keep the server awake
                else:  # a message from a running command's client, or its end
                    pid = key.data
                    msg = _read_quiet(key.fileobj)
                    if msg is None:  # the client is gone: its command must not run on unattended
                        with _quiet():
                            os.killpg(pid, signal.SIGKILL)
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        children[pid] = None  # reaped later, nobody to tell
                    elif msg.get("op") == "interrupt":
                        with _quiet():
                            os.killpg(pid, signal.SIGINT)
            reap()
            if children:
                last_active = time.monotonic()
            elif time.monotonic() - last_active > idle_s:
                reason = f"idle for {idle_s:g} s"
            elif mine["expost"] != _code_stamp() or mine["packages"] != _path_stamp():
                reason = "expost or the installed packages changed on disk"
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        signal.set_wakeup_fd(-1)
        sel.close()
        listener.close()
        with _quiet():
            if path.stat().st_ino == inode:  # still ours, not a newer server's
                path.unlink()
    return reason


def _accept(conn, mine, children, sel, started, served, own) -> str | None:
    """Answer one connection; returns a reason to stop serving, if any."""
    import selectors
    import socket
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    if struct.unpack("3i", creds)[1] != os.getuid():  # only this user (the socket's mode says so too)
        conn.close()
        return None
    conn.settimeout(10.0)
    try:
        msg, fds = recv(conn, with_fds=True)
    except (OSError, ValueError, EOFError):
        conn.close()
        return None
    conn.settimeout(None)
    op = (msg or {}).get("op")
    if op == "status":
        with _quiet():
            send(conn, {"pid": os.getpid(), "since": started, "served": served, "running": len(children)})
        conn.close()
        return None
    if op == "stop":
        with _quiet():
            send(conn, {"stopping": os.getpid()})
        conn.close()
        return "stopped by `expost serve --stop`"
    if op != "exec" or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    differ = mismatch(mine, msg["fingerprint"])
    stale = [d for d in differ if not d.startswith("$")] and (mine["expost"] != _code_stamp()
                                                              or mine["packages"] != _path_stamp())
    if differ:
        for fd in fds:
            os.close(fd)
        with _quiet():
            send(conn, {"refused": differ, "stopped": bool(stale)})
        conn.close()
        return "expost or the installed packages changed on disk" if stale else None
    pid = os.fork()
    if pid == 0:  # the command: never returns
        _child(msg, fds, [conn, *own, *(c for c in children.values() if c is not None)], sel)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    sel.register(conn, selectors.EVENT_READ, pid)
    return None


def _child(msg: dict, fds: list[int], sockets: list, sel) -> None:
    """Become the command: the client's terminal, directory and environment, then the CLI."""
    import io
    import signal

    code = 1
    try:
        os.setpgid(0, 0)  # its own group, so Ctrl-C and cleanup reach it and its workers alone
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in sockets:  # the server's: its listener, its wake-up pair, other commands' clients
            s.close()
        sel.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        enc = msg["env"].get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"
        sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding=enc)
        sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False), encoding=enc, line_buffering=os.isatty(1))
        sys.stderr = io.TextIOWrapper(io.open(2, "wb", closefd=False), encoding=enc, errors="backslashreplace",
                                      line_buffering=True)
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(msg["env"])
        os.umask(msg["umask"])
        sys.path[:] = msg["path"]
        sys.argv = ["expost", *msg["argv"]]
        from expost.cli import cli

        try:
            cli.main(args=msg["argv"], prog_name="expost")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
    except BaseException:  # noqa: BLE001 - the child must never return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with _quiet():
                stream.flush()
        os._exit(code)


def _read_quiet(conn):
    try:
        return recv(conn)
    except (OSError, ValueError, EOFError):
        return None


def _quiet():
    """Ignore OS-level errors: a peer gone, a process already reaped."""
    import contextlib

    return contextlib.suppress(OSError, ValueError)


def detach(cache: Path, idle_s: float, timeout: float = 300.0) -> dict:
    """Start a server in the background (its own session, output to serve.log); returns its ready
    message once it accepts commands."""
    import json

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "serve.log"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # intermediate: a new session, then the server in a grandchild (no terminal, no zombie)
        os.close(r)
        os.setsid()
        if os.fork():
            os._exit(0)
        code = 0
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)

            def ready(info):
                os.write(w, json.dumps(info).encode())
                os.close(w)
                print(f"expost serve: ready (pid {info['pid']}, imports took {info['preload_s']:.2f} s)", flush=True)

            why = serve(cache, idle_s, ready)
            print(f"expost serve: stopped ({why})", flush=True)
        except BaseException as e:  # noqa: BLE001 - report to the waiting parent, then leave
            with _quiet():
                os.write(w, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    import select

    data = b""
    deadline_ready, _, _ = select.select([r], [], [], timeout)
    if deadline_ready:
        while chunk := os.read(r, 65536):
            data += chunk
    os.close(r)
    if not data:
        raise ServerError(f"the server did not start within {timeout:g} s; see {log}")
    info = json.loads(data)
    if "error" in info:
        raise ServerError(info["error"])
    info["log"] = str(log)
    return info
