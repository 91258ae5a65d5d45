"""Logs of successful runs are kept with their cache entry and shown by `expost log`."""

import shutil

from conftest import FIXTURES


def test_log_shows_what_cached_and_failed_runs_printed(expost, cache_dir):
    r = expost("run", "toy", "--seeds", "2", "--set", "fail_seed=2", "-j", "1")
    assert r.exit_code == 1
    r = expost("log", "toy", "--set", "fail_seed=2", "--where", "rate=0.5", "--seeds", "3")
    assert r.exit_code == 0, r.output
    assert "==> toy [rate=0.5] seed 1: cached\nseed 1: final " in r.stdout
    assert "==> toy [rate=0.5] seed 2: failed" in r.stdout and "RuntimeError: seed 2 fails on purpose" in r.stdout
    assert "==> toy [rate=0.5] seed 3: not run" in r.stdout
    r = expost("log", "toy", "--set", "fail_seed=2", "--seed", "1", "--seeds", "2")
    assert r.stdout.count("==> ") == 2 and "seed 2" not in r.stdout.replace("fail_seed", "")  # both configs, seed 1
    r = expost("log", "toy", "--seed", "9", "--seeds", "2")
    assert r.exit_code == 1 and "--seed 9: toy plans seeds 1-2" in r.output


def test_a_damaged_log_says_so_and_the_result_stays_valid(expost, cache_dir):
    assert expost("run", "toy", "--seeds", "1", "--where", "rate=0.5", "-j", "1").exit_code == 0
    [out] = list(cache_dir.glob("runs/*/*/output.txt"))
    out.write_text("seed 1: final 42 (edited)\n")
    r = expost("log", "toy", "--seeds", "1", "--where", "rate=0.5")
    assert "(this run's log is damaged)" in r.stdout and "edited" not in r.stdout
    assert expost("run", "toy", "--seeds", "1", "--where", "rate=0.5").ran == []  # the result itself is intact


def test_a_batch_blocks_output_is_kept_for_each_seed(ws, expost, cache_dir):
    shutil.copy(FIXTURES / "toy_batch.py", ws / "experiments" / "toy_batch.py")
    assert expost("run", "toy_batch", "--seeds", "2", "-j", "1").exit_code == 0
    r = expost("log", "toy_batch", "--seeds", "2", "--seed", "2")
    assert "# printed by run_batch for seeds 1-10 together" in r.stdout
