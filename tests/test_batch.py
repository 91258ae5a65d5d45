"""Batched seeds: used automatically, in fixed blocks, and in agreement with per-seed runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from expost.runs.plan import Selection, load_specs, plan_runs
from expost.runs.cache import Cache
from expost.runs.results import from_cache
from expost.layout import find_workspace

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def cached_results(w, spec, runs):
    """The cached runs among `runs` as a ResultSet."""
    return from_cache(Cache(w.cache_dir), spec, runs)


@pytest.fixture
def batch_ws(ws):
    shutil.copy(FIXTURES / "toy_batch.py", ws / "experiments" / "toy_batch.py")
    return ws


def test_run_batch_is_used_in_fixed_blocks(expost, batch_ws):
    r = expost("run", "toy_batch", "-q", "-j", "2")
    assert r.exit_code == 0, r.output
    # 5 seeds planned per rate; each rate runs one block of seeds 1-10
    assert sorted(r.ran) == ["batch 0.5 1,2,3,4,5,6,7,8,9,10", "batch 1.0 1,2,3,4,5,6,7,8,9,10"]
    assert "10 ran (+10 more seeds of their batch blocks)" in r.stderr
    # seeds 6-10 came for free
    r = expost("run", "toy_batch", "-q", "--seeds", "10")
    assert r.ran == [] and "20 cached" in r.stderr
    r = expost("run", "toy_batch", "-q", "--seeds", "12", "--where", "rate=0.5")
    assert r.ran == ["batch 0.5 11,12,13,14,15,16,17,18,19,20"]


def test_a_missing_seed_reruns_its_whole_block_with_identical_numbers(expost, batch_ws, cache_dir):
    assert expost("run", "toy_batch", "-q", "--where", "rate=0.5").exit_code == 0
    w = find_workspace(batch_ws)
    spec = load_specs(w, ["toy_batch"])[0]
    runs = plan_runs([spec], Selection(where={"rate": "0.5"}))["toy_batch"]
    before = cached_results(w, spec, runs).scalar("final")
    shutil.rmtree(cache_dir / "runs" / runs[2].key[:2] / runs[2].key)
    r = expost("run", "toy_batch", "-q", "--where", "rate=0.5")
    assert r.ran == ["batch 0.5 1,2,3,4,5,6,7,8,9,10"]
    assert np.array_equal(cached_results(w, spec, runs).scalar("final"), before)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_scurves_batched_and_per_seed_agree(device):
    """Stated tolerance: series within 1e-6 of their largest value; drop statistics identical;
    the final loss (at float32's noise floor, ~1e-9 of the initial loss) within 1e-6 of the initial loss.
    The cuda case runs where a GPU is present (bench/results.md records the run on one)."""
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import scurves
    finally:
        sys.path.remove(str(REPO / "experiments"))
    seeds = [1, 2, 3]
    for model, rank in (("factored", 1), ("factored", 2), ("vector", 1), ("scalar", 2)):
        cfg = {**scurves.PARAMS, "steps": 300, "model": model, "rank": rank, "device": device}
        singles = [scurves.run(cfg, s) for s in seeds]
        batch = scurves.run_batch(cfg, seeds)
        for a, b in zip(singles, batch):
            for name in ("loss", "top_learned", "last_learned"):
                x, y = np.asarray(a[name], dtype=float), np.asarray(b[name], dtype=float)
                assert np.max(np.abs(x - y)) <= 1e-6 * np.max(np.abs(x)), (model, rank, name)
            for name in ("drop_step", "plateau_steps", "sharpness"):
                assert a[name] == b[name], (model, rank, name)
            assert abs(a["final_loss"] - b["final_loss"]) <= 1e-6 * float(a["loss"][0])


def test_expost_run_on_cuda_in_forked_workers(tmp_path, monkeypatch):
    """`--device cuda` through the CLI with one and with two workers: workers are forked (CUDA is
    first touched inside them) and both give the same numbers."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    ws = tmp_path / "ws"
    (ws / "experiments").mkdir(parents=True)
    for name in ("scurves.py", "_lowrank.py"):
        shutil.copy(REPO / "experiments" / name, ws / "experiments" / name)
    args = ["run", "scurves", "--device", "cuda", "--where", "model=factored", "--where", "rank=1",
            "--where", "init_scale=0.001", "--set", "steps=300", "-q"]
    finals = []
    for jobs in ("1", "2"):
        environ = {**os.environ, "EXPOST_CACHE_DIR": str(tmp_path / f"cache-{jobs}")}
        r = subprocess.run([sys.executable, "-m", "expost", *args, "-j", jobs], cwd=ws, env=environ,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and "10 ran, 0 failed" in r.stderr, r.stderr
        w = find_workspace(ws)
        monkeypatch.setenv("EXPOST_CACHE_DIR", environ["EXPOST_CACHE_DIR"])
        spec = load_specs(w, ["scurves"])[0]
        runs = plan_runs([spec], Selection(where={"model": "factored", "rank": "1",
                                                                    "init_scale": "0.001"},
                                                             set={"steps": "300"}, device="cuda"))["scurves"]
        finals.append(cached_results(w, spec, runs).scalar("final_loss"))
    assert len(finals[0]) == 10 and np.array_equal(finals[0], finals[1])
