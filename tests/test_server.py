"""`expost serve`: commands run in forks of a warm server behave exactly like local ones.

Real processes throughout: a detached server, the `expost` client in a new session, signals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from expost.cache import Cache

from conftest import make_workspace
from test_reliability import TOTAL, entries, env, press_ctrl_c, ran, start, wait_for_entries


def expost_cmd(args, ws, environ, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "expost", *args], cwd=ws, env=environ, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def slow_ws(tmp_path, cache_dir):
    return make_workspace(tmp_path / "ws", ["slow.py", "toy.py"], ["slow.md.j2"])


@pytest.fixture
def server(slow_ws, tmp_path, cache_dir):
    """A detached server for slow_ws; stopped (and checked to be gone) afterwards."""
    environ = env(tmp_path, cache_dir)
    r = expost_cmd(["serve", "--detach", "--idle", "5"], slow_ws, environ)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("server ready: pid ")
    pid = int(r.stdout.split("pid ")[1].split(",")[0])
    yield {"pid": pid, "env": environ, "ws": slow_ws}
    expost_cmd(["serve", "--stop"], slow_ws, environ)
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(") ")[1][0] != "Z"


def served(server):
    r = expost_cmd(["serve", "--status"], server["ws"], server["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    return int(r.stdout.split("; ")[1].split(" request")[0])


def test_commands_go_through_the_server_with_identical_results(server, tmp_path, cache_dir):
    ws, environ = server["ws"], server["env"]
    before = served(server)
    r = expost_cmd(["run", "slow", "-j", "2", "-q", "--set", "pause=0.01"], ws, environ)
    assert r.returncode == 0, r.stderr
    assert "0 cached, 12 ran, 0 failed" in r.stderr  # the summary reaches the client's own stderr
    assert served(server) == before + 2  # the run and the status request before it
    # the same runs without the server, in another cache: the same keys with the same numbers
    local_cache = tmp_path / "local-cache"
    r2 = expost_cmd(["run", "slow", "-j", "2", "-q", "--set", "pause=0.01"], ws,
                    {**environ, "EXPOST_CACHE_DIR": str(local_cache), "EXPOST_NO_SERVER": "1"})
    assert r2.returncode == 0, r2.stderr
    assert served(server) == before + 3  # EXPOST_NO_SERVER=1: not sent
    a, b = Cache(cache_dir), Cache(local_cache)
    keys = sorted(p.parent.name for p in entries(cache_dir))
    assert keys == sorted(p.parent.name for p in entries(local_cache)) and len(keys) == 12
    for key in keys:
        ea, eb = a.read(key), b.read(key)
        assert ea.meta["scalars"] == eb.meta["scalars"]
        assert (ea.series("curve") == eb.series("curve")).all()


def test_exit_codes_stdout_and_usage_errors_pass_through(server):
    ws, environ = server["ws"], server["env"]
    r = expost_cmd(["run", "toy", "-q", "--set", "nope=1"], ws, environ)
    assert r.returncode == 1 and "has no parameter 'nope'" in r.stderr
    r = expost_cmd(["run", "toy", "--bogus"], ws, environ)
    assert r.returncode == 2 and "No such option '--bogus'" in r.stderr
    before = served(server)
    r = expost_cmd(["run", "toy", "--explain"], ws, environ)
    assert r.returncode == 0 and "toy\trate=0.5\tseed 1\tnever run" in r.stdout  # the client's own stdout
    for extra in ([], ["--set", "steps=1"]):  # claims hold; then a claim fails (exit 1)
        assert expost_cmd(["run", "toy", "-q", *extra], ws, environ).returncode == 0
        r = expost_cmd(["check", "toy", *extra], ws, environ)  # claims evaluated in the fork
        local = expost_cmd(["check", "toy", *extra], ws, {**environ, "EXPOST_NO_SERVER": "1"})
        assert (r.returncode, r.stdout, r.stderr) == (local.returncode, local.stdout, local.stderr)
        assert "The final value is below 1." in r.stdout
    assert r.returncode == 1
    assert served(server) == before + 6


def test_an_edited_experiment_is_seen_at_once(server, cache_dir):
    """The server never imports experiments: each command imports them fresh in its fork."""
    ws, environ = server["ws"], server["env"]
    assert expost_cmd(["run", "toy", "-q", "--seeds", "2"], ws, environ).returncode == 0
    path = ws / "experiments" / "toy.py"
    source = path.read_text()
    assert source.count('"final": final}') == 1
    path.write_text(source.replace('"final": final}', '"final": 1000 + final}'))
    r = expost_cmd(["run", "toy", "-q", "--seeds", "2", "--explain"], ws, environ)
    assert "source changed" in r.stdout, r.stdout
    r = expost_cmd(["run", "toy", "-q", "--seeds", "2"], ws, environ)
    assert r.returncode == 0 and "0 cached, 4 ran" in r.stderr, r.stderr
    finals = [json.loads(p.read_text())["scalars"]["final"] for p in entries(cache_dir)]
    assert len(finals) == 8 and sum(f >= 1000 for f in finals) == 4  # 2 rates x 2 seeds, rerun with the edit


def test_ctrl_c_in_the_client_stops_the_command_and_keeps_completed_runs(server, tmp_path, cache_dir):
    environ = server["env"]
    proc = start(["run", "slow", "-j", "2", "-q", "--set", "pause=1.5"], server["ws"], environ)
    wait_for_entries(cache_dir, 2, proc)
    press_ctrl_c(proc)  # the client's process group: the command, in the server's fork, is not in it
    time.sleep(2)  # nothing of the interrupted command runs on
    kept = len(entries(cache_dir))
    assert 2 <= kept < TOTAL
    lines = ran(tmp_path)
    time.sleep(1.6)
    assert ran(tmp_path) == lines
    assert served(server) >= 1  # and the server is still there for the next command


def test_a_killed_client_takes_its_command_down_with_it(server, tmp_path, cache_dir):
    proc = start(["run", "slow", "-j", "2", "-q", "--set", "pause=1.0"], server["ws"], server["env"])
    wait_for_entries(cache_dir, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)
    n = len(ran(tmp_path))
    time.sleep(2.0)
    assert len(ran(tmp_path)) == n < TOTAL  # no worker runs on unattended
    cache = Cache(cache_dir)
    assert all(cache.read(p.parent.name) is not None for p in entries(cache_dir))
    kept = len(entries(cache_dir))
    r = expost_cmd(["run", "slow", "-j", "2", "-q", "--set", "pause=0.2"], server["ws"], server["env"])
    assert r.returncode == 0, r.stderr
    r = expost_cmd(["run", "slow", "-j", "2", "-q", "--set", "pause=1.0"], server["ws"], server["env"])
    assert r.returncode == 0 and f"{kept} cached, {TOTAL - kept} ran, 0 failed" in r.stderr, r.stderr


def test_another_environment_runs_locally_and_says_why(server):
    r = expost_cmd(["run", "toy", "-q", "--seeds", "1"], server["ws"], {**server["env"], "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "not using the server ($OMP_NUM_THREADS differ from when it started): running here" in r.stderr
    assert "0 failed" in r.stderr


def test_the_server_stops_itself_when_installed_packages_change(slow_ws, tmp_path, cache_dir):
    site = tmp_path / "site"
    site.mkdir()
    environ = {**env(tmp_path, cache_dir), "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    assert expost_cmd(["serve", "--detach", "--idle", "5"], slow_ws, environ).returncode == 0
    (site / "newpkg.py").write_text("")  # `pip install` into a folder on the path changes its mtime
    r = expost_cmd(["run", "toy", "-q", "--seeds", "1"], slow_ws, environ)
    assert r.returncode == 0, r.stderr
    assert ("not using the server (packages differ from when it started)" in r.stderr
            or "not using the server" not in r.stderr)  # or it had already noticed and stopped
    for _ in range(60):
        if expost_cmd(["serve", "--status"], slow_ws, environ).returncode == 1:
            break
        time.sleep(0.1)
    r = expost_cmd(["serve", "--status"], slow_ws, environ)
    assert r.returncode == 1 and "no server is running" in r.stdout


def test_one_server_per_cache_and_idle_exit(slow_ws, tmp_path, cache_dir):
    environ = env(tmp_path, cache_dir)
    r = expost_cmd(["serve", "--status"], slow_ws, environ)
    assert r.returncode == 1 and "no server is running" in r.stdout
    r = expost_cmd(["serve", "--detach", "--idle", "0.05"], slow_ws, environ)  # 3 s
    assert r.returncode == 0, r.stderr
    again = expost_cmd(["serve", "--detach"], slow_ws, environ)
    assert again.returncode == 1 and "a server is already running" in again.stderr
    assert "Traceback" not in again.stderr
    deadline = time.time() + 20
    while expost_cmd(["serve", "--status"], slow_ws, environ).returncode == 0:
        assert time.time() < deadline, "the idle server did not exit"
        time.sleep(0.5)
    assert "stopped (idle for 3 s)" in (cache_dir / "serve.log").read_text()
    assert not (cache_dir / "serve.sock").exists()


def test_the_client_finds_the_same_cache_as_the_cli_and_imports_little(slow_ws, tmp_path, monkeypatch):
    from expost import client
    from expost.workspace import find_workspace

    monkeypatch.chdir(slow_ws / "experiments")  # found upwards, as the CLI finds it
    for override in (str(tmp_path / "elsewhere" / ".." / "cache2"), None):
        if override:
            monkeypatch.setenv("EXPOST_CACHE_DIR", override)
        else:
            monkeypatch.delenv("EXPOST_CACHE_DIR")
        assert client._command_and_cache(["run", "slow"]) == ("run", str(find_workspace().cache_dir))
        assert client._command_and_cache(["--workspace", str(slow_ws), "build"])[1] == str(find_workspace().cache_dir)
    assert client._command_and_cache(["new", "experiment", "x"]) is None  # not a command a server runs
    assert client._command_and_cache(["--version"]) is None
    assert client._command_and_cache(["run", "--help"]) is None
    probe = ("import sys; from expost.entry import main; sys.argv = ['expost', 'serve', '--status']\n"
             "from expost.client import forward; forward(['run', 'slow'])\n"
             "print(sorted(m for m in ('click', 'torch', 'numpy', 'pathlib', 'pickle') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=slow_ws, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "EXPOST_CACHE_DIR": str(tmp_path / "cache")})
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_stopping_the_server_leaves_running_commands_attended(server, tmp_path, cache_dir):
    """--stop closes the door at once but stays until running commands end: a client's Ctrl-C
    still reaches its command."""
    environ = server["env"]
    proc = start(["run", "slow", "-j", "2", "-q", "--set", "pause=1.5"], server["ws"], environ)
    wait_for_entries(cache_dir, 2, proc)
    r = expost_cmd(["serve", "--stop"], server["ws"], environ)
    assert r.returncode == 0 and "server stopped" in r.stdout
    assert expost_cmd(["serve", "--status"], server["ws"], environ).returncode == 1  # no new commands
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    time.sleep(2)
    lines = ran(tmp_path)
    time.sleep(1.6)
    assert ran(tmp_path) == lines  # nothing runs on
    for _ in range(100):  # and the server is gone once its last command ended
        if not _alive(server["pid"]):
            break
        time.sleep(0.05)
    assert not _alive(server["pid"])


def test_a_server_started_without_stdin_still_hands_over_the_terminal(slow_ws, tmp_path, cache_dir):
    """Descriptors received from a client may be numbered 0-2 themselves."""
    environ = env(tmp_path, cache_dir)
    srv = subprocess.Popen([sys.executable, "-m", "expost", "serve", "--idle", "1"], cwd=slow_ws, env=environ,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: os.close(0))
    try:
        deadline = time.time() + 60
        while expost_cmd(["serve", "--status"], slow_ws, environ).returncode != 0:
            assert srv.poll() is None and time.time() < deadline, srv.communicate()
            time.sleep(0.2)
        r = expost_cmd(["run", "toy", "-q", "--seeds", "2"], slow_ws, environ, input="")
        assert r.returncode == 0 and "0 failed" in r.stderr, r.stderr
        assert served_count(slow_ws, environ) >= 2
    finally:
        expost_cmd(["serve", "--stop"], slow_ws, environ)
        srv.wait(timeout=30)


def served_count(ws, environ):
    r = expost_cmd(["serve", "--status"], ws, environ)
    return int(r.stdout.split("; ")[1].split(" request")[0])


def test_a_long_cache_path_puts_the_socket_in_a_private_folder(slow_ws, tmp_path):
    cache = tmp_path / ("c" * 60) / ("d" * 60)
    environ = {**env(tmp_path, cache), "EXPOST_CACHE_DIR": str(cache)}
    from expost.client import socket_path

    sock = socket_path(cache)
    assert not sock.startswith(str(cache)) and len(sock) < 100
    r = expost_cmd(["serve", "--detach", "--idle", "1"], slow_ws, environ)
    assert r.returncode == 0, r.stderr
    try:
        assert os.stat(os.path.dirname(sock)).st_mode & 0o777 == 0o700
        r = expost_cmd(["run", "toy", "-q", "--seeds", "1"], slow_ws, environ)
        assert r.returncode == 0 and "not using" not in r.stderr, r.stderr
        assert served_count(slow_ws, environ) == 1  # the run (this status request counts after its reply)
    finally:
        expost_cmd(["serve", "--stop"], slow_ws, environ)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_a_socket_owned_by_another_user_is_never_used(slow_ws, tmp_path):
    """Whoever listens at the socket path gets nothing: not the environment, not the terminal."""
    import shutil
    import tempfile
    from pathlib import Path

    shared = Path(tempfile.mkdtemp(prefix="expost-impostor-"))  # pytest's tmp_path is root's alone
    try:
        os.chmod(shared, 0o777)  # a cache folder others can write to (a shared or careless setup)
        got = shared / "got"
        impostor = (
            "import os, socket\n"
            "os.setgid(65534); os.setuid(65534)\n"
            f"s = socket.socket(socket.AF_UNIX); s.bind({str(shared / 'serve.sock')!r}); s.listen(1)\n"
            "print('ready', flush=True)\n"
            "c, _ = s.accept(); c.settimeout(5)\n"
            "try:\n    data = c.recv(1 << 20)\nexcept OSError:\n    data = b''\n"
            f"open({str(got)!r}, 'wb').write(data)\n")
        spy = subprocess.Popen([sys.executable, "-c", impostor], stdout=subprocess.PIPE, text=True)
        try:
            assert spy.stdout.readline().strip() == "ready"
            environ = {**env(tmp_path, shared), "SECRET_TOKEN": "hunter2"}
            r = expost_cmd(["run", "toy", "-q", "--seeds", "1"], slow_ws, environ)
            assert r.returncode == 0 and "belongs to another user; ignoring it and running here" in r.stderr, r.stderr
            spy.wait(timeout=10)
            assert b"hunter2" not in got.read_bytes()
        finally:
            spy.kill()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
