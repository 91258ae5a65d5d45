"""Every way a run can end is that run's outcome, and no expost process outlives its command:
timeouts, subprocesses a run leaves behind, kill -9 and SIGTERM of the parent. Real processes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_workspace


@pytest.fixture
def procs_ws(tmp_path, cache_dir):
    root = make_workspace(tmp_path / "ws", ["procs.py"])
    (tmp_path / "pids").mkdir()
    return root


def environ(tmp_path, cache_dir):
    return {**os.environ, "EXPOST_CACHE_DIR": str(cache_dir), "PROCS_DIR": str(tmp_path / "pids")}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def pids(tmp_path, kind: str) -> list[int]:
    return [int(p.read_text()) for p in sorted((tmp_path / "pids").glob(f"{kind}-*")) if p.read_text()]


def all_gone(found: list[int], within: float = 10.0) -> bool:
    t0 = time.time()
    while any(alive(p) for p in found):
        if time.time() - t0 > within:
            return False
        time.sleep(0.1)
    return True


def expost(ws, env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "expost", *args], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=timeout)


def cached(cache_dir) -> int:
    return len(list((cache_dir / "runs").glob("*/*/result.json")))


@pytest.mark.parametrize("how", ["flag", "spec"])
def test_a_run_past_its_timeout_is_stopped_with_what_it_started(procs_ws, tmp_path, cache_dir, how):
    env = environ(tmp_path, cache_dir)
    args = ["run", "-q", "-j", "2", "--set", "hang_seed=2", "--set", "spawn=true"]
    if how == "flag":
        args += ["--timeout", "1.5"]
    else:
        exp = procs_ws / "experiments" / "procs.py"
        exp.write_text(exp.read_text().replace("SEEDS = 4", "SEEDS = 4\nTIMEOUT = 1.5"))
    r = expost(procs_ws, env, *args)
    assert r.returncode == 1, r.stderr
    assert "seed 2: timed out: still running after 1.5 s" in r.stderr, r.stderr
    assert "4 planned run(s): 0 cached, 3 ran, 1 failed" in r.stderr, r.stderr
    assert cached(cache_dir) == 3 and "Traceback" not in r.stderr
    assert all_gone(pids(tmp_path, "child") + pids(tmp_path, "worker")), "a process outlived its run"


def test_processes_a_finished_run_left_running_are_ended(procs_ws, tmp_path, cache_dir):
    r = expost(procs_ws, environ(tmp_path, cache_dir), "run", "-q", "-j", "1", "--set", "spawn=true")
    assert r.returncode == 0, r.stderr
    children = pids(tmp_path, "child")
    assert len(children) == 4 and all_gone(children, within=5), [p for p in children if alive(p)]


def start(ws, env, *args):
    return subprocess.Popen([sys.executable, "-m", "expost", *args], cwd=ws, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(tmp_path, kind, n, proc, within=60):
    t0 = time.time()
    while len(pids(tmp_path, kind)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < within
        time.sleep(0.05)


def test_kill_9_of_the_parent_leaves_no_worker_and_no_subprocess(procs_ws, tmp_path, cache_dir):
    proc = start(procs_ws, environ(tmp_path, cache_dir), "run", "-q", "-j", "2", "--set", "pause=60",
                 "--set", "spawn=true")
    wait_for(tmp_path, "child", 2, proc)
    proc.kill()  # SIGKILL: no handler runs in the parent
    proc.wait(10)
    assert all_gone(pids(tmp_path, "worker") + pids(tmp_path, "child")), "a worker or its subprocess outlived kill -9"


def test_sigterm_stops_with_one_line_exit_143_and_keeps_completed_runs(procs_ws, tmp_path, cache_dir):
    proc = start(procs_ws, environ(tmp_path, cache_dir), "run", "-q", "-j", "2", "--set", "hang_seed=4",
                 "--set", "spawn=true", "--seeds", "4")
    wait_for(tmp_path, "worker", 4, proc)
    time.sleep(0.5)  # seeds 1-3 finish (they do not pause), seed 4 hangs
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "terminated: completed runs are cached; run the same command again to finish."
    assert cached(cache_dir) == 3
    assert all_gone(pids(tmp_path, "worker") + pids(tmp_path, "child"))
