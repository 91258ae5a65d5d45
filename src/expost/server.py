"""Warm server: one process with torch and expost already imported; each command runs in a fork of it.

Every `expost` process pays for its imports before any work starts: torch (0.75-1.5 s here) and
torch._dynamo, which the first torch.optim call imports (as long again). `expost serve` pays them
once. While it runs, `expost run|build|check|render|verify` in that workspace (the thin client in
expost.client: no torch, no click) hands its command line, working directory, environment and terminal (stdin,
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

import os
import sys

from expost.client import (code_stamp, fingerprint, mismatch, path_stamp, peer_is_me, recv, request, send,
                           socket_path)
from expost.errors import ExpostError

PRELOAD = ("torch", "torch._dynamo", "numpy", "matplotlib.figure", "matplotlib.backends.backend_agg", "expost.cli", "expost.pipeline",
           "expost.runner", "expost.render", "expost.figures", "expost.html", "expost.forum", "expost.writeup",
           "expost.export", "expost.claims", "expost.results")


def private_dir(folder: str) -> None:
    """The fallback socket folder: created 0700, and refused unless it is ours and private."""
    import stat

    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ServerError(f"{folder} is not a private folder of this user (owner {st.st_uid}, mode "
                          f"{stat.filemode(st.st_mode)}); remove it, or use a shorter EXPOST_CACHE_DIR")


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


def serve(cache: os.PathLike | str, idle_s: float = 1800.0, on_ready=None) -> str:
    """Serve commands until stopped, idle for idle_s, or stale; returns why it stopped.

    One child is always forked ahead ("spare"), waiting for a command: forking a process this size
    takes ~15 ms, paid between commands rather than on one's critical path. Imported objects are
    frozen out of the garbage collector, so a child's collections never walk (and copy) them."""
    import gc
    import selectors
    import signal
    import socket
    import time

    from pathlib import Path

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = Path(socket_path(cache))
    if path.parent != cache:
        private_dir(str(path.parent))
    if request(cache, "status", timeout=2.0) is not None:
        raise ServerError(f"a server is already running for {cache} (socket {path}); "
                          "stop it with `expost serve --stop`")
    path.unlink(missing_ok=True)
    mine = fingerprint(os.environ)  # before the imports: torch._dynamo sets variables of its own
    t0 = time.perf_counter()
    missing = preload()
    gc.collect()
    gc.freeze()
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
    state = {"children": {}, "spare": None, "served": 0, "started": started, "mine": mine}
    own = [listener, wake_r, wake_w]
    last_active, reason = time.monotonic(), None
    if on_ready:  # before the first fork: a detached server's ready pipe must not live on in a spare
        on_ready({"pid": os.getpid(), "socket": str(path), "preload_s": time.perf_counter() - t0,
                  "missing": missing})
    _fork_spare(state, own, sel)
    children = state["children"]

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = children.pop(pid, None)
            if conn is not None:  # the command reports its own exit code; this covers a crash
                code = os.waitstatus_to_exitcode(status)
                with _quiet():
                    send(conn, {"exit": code if code >= 0 else 128 - code})
                with _quiet():
                    sel.unregister(conn)
                conn.close()
            if state["spare"] and state["spare"][0] == pid:  # the spare died: make another
                state["spare"][1].close()
                state["spare"] = None
                if reason is None:
                    _fork_spare(state, own, sel)

    def step() -> str | None:
        """Wait for and handle one round of events; a reason to stop accepting, if any."""
        why = None
        for key, _ in sel.select(timeout=1.0):
            if key.data == "wake":
                with _quiet():
                    wake_r.recv(4096)
            elif key.data == "accept":
                conn, _ = listener.accept()
                try:
                    why = _accept(conn, state, own, sel) or why
                except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
                    print(f"expost serve: a request failed: {type(e).__name__}: {e}", file=sys.stderr)
                    conn.close()
                state["served"] += 1  # status requests count here, but only commands keep it awake
            else:  # a message from a running command's client, or its end
                pid = key.data
                msg = _read_quiet(key.fileobj)
                if not isinstance(msg, dict):  # the client is gone: its command must not run on unattended
                    with _quiet():
                        os.killpg(pid, signal.SIGKILL)
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    children[pid] = None  # reaped later, nobody to tell
                elif msg.get("op") == "interrupt":
                    with _quiet():
                        os.killpg(pid, signal.SIGINT)
        reap()
        return why

    try:
        while reason is None:
            reason = step()
            if children:
                last_active = time.monotonic()
            elif reason is None and time.monotonic() - last_active > idle_s:
                reason = f"idle for {idle_s:g} s"
            elif reason is None and (mine["expost"] != code_stamp() or mine["packages"] != path_stamp()):
                reason = "expost or the installed packages changed on disk"
        # Stop accepting, but stay until running commands end: their clients' Ctrl-C (and their
        # clients' deaths) reach them only through this process.
        _close_listener(sel, listener, path, inode)
        if state["spare"]:
            state["spare"][1].close()  # the spare sees the end of its socket and leaves
            state["spare"] = None
        while children:
            step()
    except KeyboardInterrupt:  # Ctrl-C of a foreground server: running commands finish on their own
        reason = reason or "interrupted"
    finally:
        signal.set_wakeup_fd(-1)
        if state["spare"]:
            state["spare"][1].close()
        _close_listener(sel, listener, path, inode)
        reap()
        sel.close()
    return reason


def _close_listener(sel, listener, path, inode) -> None:
    if listener.fileno() == -1:
        return
    with _quiet():
        sel.unregister(listener)
    listener.close()
    with _quiet():
        if path.stat().st_ino == inode:  # still ours, not a newer server's
            path.unlink()


def _fork_spare(state: dict, own: list, sel) -> None:
    """Fork the next command ahead of time; it waits on a private socket for its request."""
    import socket

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:  # whatever happens, this process never returns into the server's loop
            ours.close()
            inherited = [*own, *(c for c in state["children"].values() if c is not None)]
            if state["spare"]:
                inherited.append(state["spare"][1])
            _prepare_child(inherited, sel)
            msg, fds = recv(theirs, with_fds=True)
            theirs.close()
            if isinstance(msg, dict) and len(fds) == 4:  # else the server is stopping
                code = _run_command(msg, fds[:3], socket.socket(fileno=fds[3]))
        finally:
            os._exit(code)
    theirs.close()
    with _quiet():
        os.setpgid(pid, pid)  # as the child does: no window in which its group is the server's
    state["spare"] = (pid, ours)


def _accept(conn, state: dict, own: list, sel) -> str | None:
    """Answer one connection; returns a reason to stop serving, if any."""
    import selectors

    if not peer_is_me(conn):  # only this user (the socket's mode says so too)
        conn.close()
        return None
    conn.settimeout(10.0)
    try:
        msg, fds = recv(conn, with_fds=True)
    except (OSError, ValueError, EOFError, TypeError):
        conn.close()
        return None
    conn.settimeout(None)
    op = msg.get("op") if isinstance(msg, dict) else None
    children = state["children"]
    if op != "exec" or len(fds) != 3:
        for fd in fds:
            os.close(fd)
    if op == "status":
        with _quiet():
            send(conn, {"pid": os.getpid(), "since": state["started"], "served": state["served"],
                        "running": sum(c is not None for c in children.values())})
        conn.close()
        return None
    if op == "stop":
        with _quiet():
            send(conn, {"stopping": os.getpid()})
        conn.close()
        return "stopped by `expost serve --stop`"
    if op != "exec" or len(fds) != 3:
        conn.close()
        return None
    mine = state["mine"]
    differ = mismatch(mine, msg["fingerprint"])
    stale = bool([d for d in differ if not d.startswith("$")]) and (
        mine["expost"] != code_stamp() or mine["packages"] != path_stamp())
    if differ:
        for fd in fds:
            os.close(fd)
        with _quiet():
            send(conn, {"refused": differ, "stopped": stale})
        conn.close()
        return "expost or the installed packages changed on disk" if stale else None
    spare, handoff = state["spare"]
    state["spare"] = None
    try:
        send(handoff, msg, fds=[*fds, conn.fileno()])
        handed = True
    except OSError:  # the spare died unnoticed: this command runs locally, the next gets a new spare
        handed = False
    handoff.close()
    for fd in fds:  # closed before the next fork, or the next spare would hold the client's terminal
        os.close(fd)
    if handed:
        children[spare] = conn  # registered before the next fork, which closes it in the new spare
        sel.register(conn, selectors.EVENT_READ, spare)
        with _quiet():
            send(conn, {"taken": spare})
    else:
        with _quiet():
            send(conn, {"refused": ["the server's worker process"], "stopped": False})
        conn.close()
    _fork_spare(state, own, sel)
    return None


def _prepare_child(inherited: list, sel) -> None:
    """In a fresh fork: its own process group, Python's default signals, none of the server's sockets."""
    import signal

    os.setpgid(0, 0)  # its own group, so Ctrl-C and cleanup reach it and its workers alone
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it: a closed pipe is an error, not death
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in inherited:  # the listener, the wake-up pair, other commands' clients
        s.close()
    sel.close()


def _adopt_terminal(fds: list[int]) -> None:
    """The client's stdin, stdout and stderr become 0, 1 and 2 (moved out of the way first: a
    received descriptor may itself be numbered 0-2)."""
    import fcntl

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(high):
        os.dup2(fd, target)
        os.close(fd)


def _run_command(msg: dict, fds: list[int], conn) -> int:
    """Become the command: the client's terminal, directory, environment, CPU set and priority, then
    the CLI; report the exit code on the client's connection (the server also does, should this
    process crash) and return it."""
    import io
    import signal

    code = 1
    try:
        _adopt_terminal(fds)
        env = msg["env"]
        enc = env.get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"
        sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding=enc)
        sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False), encoding=enc, line_buffering=os.isatty(1))
        sys.stderr = io.TextIOWrapper(io.open(2, "wb", closefd=False), encoding=enc, errors="backslashreplace",
                                      line_buffering=True)
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(env)
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None  # found again from this command's TMPDIR
        os.umask(msg["umask"])
        if msg.get("cpus") and hasattr(os, "sched_setaffinity"):
            with _quiet():
                os.sched_setaffinity(0, msg["cpus"])  # -j's default and BLAS threads follow taskset/cgroups
        with _quiet():
            os.setpriority(os.PRIO_PROCESS, 0, msg.get("nice", 0))  # a `nice expost run` stays nice
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
    except BaseException:  # noqa: BLE001 - reported here; the caller exits with the code
        import traceback

        with _quiet():
            traceback.print_exc()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a late Ctrl-C cannot cut this short
        for stream in (sys.stdout, sys.stderr):
            with _quiet():
                stream.flush()
        with _quiet():
            send(conn, {"exit": code})
    return code


def _read_quiet(conn):
    try:
        return recv(conn)
    except (OSError, ValueError, EOFError):
        return None


def _quiet():
    """Ignore OS-level errors: a peer gone, a process already reaped."""
    import contextlib

    return contextlib.suppress(OSError, ValueError)


def detach(cache: os.PathLike | str, idle_s: float, timeout: float = 300.0) -> dict:
    """Start a server in the background (its own session, output to serve.log); returns its ready
    message once it accepts commands."""
    import json
    from pathlib import Path

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
        code, told = 0, []
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            for extra in {fd, null} - {0, 1, 2}:  # kept only as 0-2: no command inherits stray descriptors
                os.close(extra)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)

            def ready(info):
                os.write(w, json.dumps(info).encode())
                os.close(w)
                told.append(True)
                print(f"expost serve: ready (pid {info['pid']}, imports took {info['preload_s']:.2f} s)", flush=True)

            why = serve(cache, idle_s, ready)
            print(f"expost serve: stopped ({why})", flush=True)
        except BaseException as e:  # noqa: BLE001 - report to the waiting parent (or the log), then leave
            if told:  # w is closed, and its number may be someone else's now
                print(f"expost serve: failed: {type(e).__name__}: {e}", flush=True)
            else:
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
