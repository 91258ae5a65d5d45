"""A full disk or a read-only cache ends a command with one `Error:` line naming the folder and
what to do: nothing half-written, nothing lost. Real filesystems: small tmpfs mounts (root only)."""

import contextlib
import os
import subprocess
import sys

import pytest

from conftest import make_workspace

BIG = '''PARAMS = {"n": 50000}
SEEDS = 12
OUTPUTS = {"curve": "series: 50000 numbers", "final": "scalar: the last"}
CLAIMS = [{"claim": "Ends below 2.", "check": lambda r: r.scalar("final") < 2}]


def run(cfg, seed):
    curve = [1.0 / (1 + t + seed) for t in range(cfg["n"])]
    return {"curve": curve, "final": curve[-1]}
'''


@contextlib.contextmanager
def small_disk(path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def expost(ws, cache, *args):
    env = {**os.environ, "EXPOST_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "expost", *args], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=300)


def one_error_line(r, *says):
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    for s in says:
        assert s in errors[0], errors[0]


def test_a_full_cache_disk_ends_the_run_with_one_line_and_keeps_what_completed(tmp_path):
    ws = tmp_path / "ws"
    (ws / "experiments").mkdir(parents=True)
    (ws / "experiments" / "big.py").write_text(BIG)
    with small_disk(tmp_path / "disk", "1m") as cache:
        r = expost(ws, cache, "run", "-q", "-j", "2")
        one_error_line(r, str(cache), "No space left on device", "free some space")
        entries = list((cache / "runs").glob("*/*/result.json"))
        assert 0 < len(entries) < 12
        assert not list((cache / "runs").glob("*/.*.tmp")), "a half-written entry was left behind"
        r = expost(ws, cache, "run", "--explain")  # every cached entry is whole: no checksum complaint
        assert r.returncode == 0 and r.stdout.count("\tcached") == len(entries), r.stdout + r.stderr


def test_a_full_publish_disk_leaves_publish_as_it_was(tmp_path):
    ws = make_workspace(tmp_path / "ws", ["tiny_torch.py"], ["tiny.md.j2"])
    cache = tmp_path / "cache"
    with small_disk(ws / "publish", "24k"):
        r = expost(ws, cache, "build", "-q", "-j", "2")
        one_error_line(r, "No space left on device")
        assert not [p for p in (ws / "publish").iterdir()], "a partial post or a stage was left in publish/"
    r = expost(ws, cache, "build", "-q")  # with room again, it finishes from the cache
    assert r.returncode == 0 and "0 ran" in r.stderr, r.stderr


def test_a_read_only_cache_still_checks_and_renders_and_refuses_to_run_with_one_line(tmp_path):
    ws = make_workspace(tmp_path / "ws", ["toy.py"], ["golden.md.j2", "_macros.md.j2"])
    with small_disk(tmp_path / "disk", "4m") as cache:
        assert expost(ws, cache, "run", "-q", "toy").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
        r = expost(ws, cache, "check", "toy")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        r = expost(ws, cache, "render")
        assert r.returncode == 0 and "rendered" in r.stdout, r.stdout + r.stderr
        r = expost(ws, cache, "run", "-q", "toy", "--seeds", "7")
        one_error_line(r, "not writable", "Read-only file system", "EXPOST_CACHE_DIR")
