"""Crash safety, interrupts and concurrent builds, with real processes and signals."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expost.runs.cache import Cache

from conftest import make_workspace

TOTAL = 12  # 2 rates x 6 seeds


@pytest.fixture
def slow_ws(tmp_path, cache_dir):
    return make_workspace(tmp_path / "ws", ["slow.py"], ["slow.md.j2"])


def env(tmp_path, cache_dir, log="ran.log"):
    return {**os.environ, "EXPOST_CACHE_DIR": str(cache_dir), "TOY_RAN_LOG": str(tmp_path / log)}


def start(args, ws, environ):
    return subprocess.Popen([sys.executable, "-m", "expost", *args], cwd=ws, env=environ, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def entries(cache_dir) -> list[Path]:
    return sorted((cache_dir / "runs").glob("*/*/result.json"))


def wait_for_entries(cache_dir, n, proc, timeout=60):
    t0 = time.time()
    while len(entries(cache_dir)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def ran(tmp_path, log="ran.log"):
    p = tmp_path / log
    return p.read_text().splitlines() if p.exists() else []


def press_ctrl_c(proc) -> None:
    """What a terminal's Ctrl-C does (SIGINT to the whole process group), and what must follow:
    out within 2 s, exit 130, one line saying completed runs are kept, no traceback."""
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.time() - t0 < 2.0
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted: completed runs are cached; run the same command "
                                           "again to finish.")


def test_kill_9_leaves_no_corrupt_entry_and_resumes(slow_ws, tmp_path, cache_dir):
    proc = start(["run", "slow", "-j", "2", "-q"], slow_ws, env(tmp_path, cache_dir))
    wait_for_entries(cache_dir, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)
    cache = Cache(cache_dir)
    done = [p.parent.name for p in entries(cache_dir)]
    assert 3 <= len(done) < TOTAL
    for key in done:  # every entry that exists is complete and passes its checksums
        assert cache.read(key) is not None
    assert cache.quarantined == []
    (tmp_path / "ran.log").unlink()
    r = subprocess.run([sys.executable, "-m", "expost", "run", "slow", "-j", "2", "-q"], cwd=slow_ws,
                       env=env(tmp_path, cache_dir), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(ran(tmp_path)) == TOTAL - len(done)  # only the missing runs
    assert f"{len(done)} cached, {TOTAL - len(done)} ran" in r.stderr


def test_ctrl_c_stops_quickly_and_keeps_completed_runs(slow_ws, tmp_path, cache_dir):
    environ = env(tmp_path, cache_dir)
    proc = start(["run", "slow", "-j", "2", "-q", "--set", "pause=1.5"], slow_ws, environ)
    wait_for_entries(cache_dir, 2, proc)
    press_ctrl_c(proc)
    kept = len(entries(cache_dir))
    assert kept >= 2
    (tmp_path / "ran.log").unlink()
    r = subprocess.run([sys.executable, "-m", "expost", "run", "slow", "-j", "2", "-q", "--set", "pause=0.01"],
                       cwd=slow_ws, env=environ, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    # the runs with pause=1.5 that completed are cached under their own keys
    r = subprocess.run([sys.executable, "-m", "expost", "run", "slow", "--explain", "--set", "pause=1.5"],
                       cwd=slow_ws, env=environ, capture_output=True, text=True, timeout=60)
    assert sum(line.endswith("\tcached") for line in r.stdout.splitlines()) == kept


def test_two_builds_at_once_both_finish_without_running_a_key_twice(slow_ws, tmp_path, cache_dir):
    a = start(["build", "-j", "2", "-q"], slow_ws, env(tmp_path, cache_dir))
    b = start(["build", "-j", "2", "-q"], slow_ws, env(tmp_path, cache_dir))
    out_a, err_a = a.communicate(timeout=120)
    out_b, err_b = b.communicate(timeout=120)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    lines = [" ".join(line.split()[:3]) for line in ran(tmp_path)]
    assert sorted(lines) == sorted(set(lines)) and len(lines) == TOTAL  # every run exactly once
    assert len(entries(cache_dir)) == TOTAL
    check = subprocess.run([sys.executable, "-m", "expost", "build", "--check", "-q"], cwd=slow_ws,
                           env=env(tmp_path, cache_dir), capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not [p for p in (slow_ws / "publish").iterdir() if p.name.startswith(".")]


def test_a_corrupt_entry_is_reported_and_rerun(slow_ws, tmp_path, cache_dir):
    environ = env(tmp_path, cache_dir)
    args = [sys.executable, "-m", "expost", "run", "slow", "-j", "2", "-q", "--set", "pause=0"]
    assert subprocess.run(args, cwd=slow_ws, env=environ, capture_output=True, timeout=120).returncode == 0
    victim = entries(cache_dir)[0].parent / "curve.npy"
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    (tmp_path / "ran.log").unlink()
    r = subprocess.run(args, cwd=slow_ws, env=environ, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "1 corrupt cache entry (checksum mismatch or truncated) set aside" in r.stderr
    assert len(ran(tmp_path)) == 1
