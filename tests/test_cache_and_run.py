"""The run loop end to end through the CLI, with real worker processes and a real cache."""

import json
import re

import numpy as np

from expost.runs.plan import Selection, load_specs, plan_runs
from expost.runs.cache import Cache
from expost.runs.results import from_cache
from expost.layout import find_workspace


def cached_results(w, spec, runs):
    """The cached runs among `runs` as a ResultSet."""
    return from_cache(Cache(w.cache_dir), spec, runs)


def explain_lines(expost, *args):
    r = expost("run", "--explain", *args)
    assert r.exit_code == 0, r.output
    return [line.split("\t") for line in r.stdout.strip().splitlines()]


def test_second_invocation_runs_nothing(expost):
    first = expost("run", "toy", "-q")
    assert first.exit_code == 0, first.output
    assert len(first.ran) == 10  # 2 rates x 5 seeds
    assert "10 ran" in first.stderr
    again = expost("run", "toy", "-q")
    assert again.exit_code == 0
    assert again.ran == []
    assert "10 cached, 0 ran" in again.stderr
    assert {row[3] for row in explain_lines(expost, "toy")} == {"cached"}


def test_editing_source_reruns_only_that_experiment(expost, ws):
    assert expost("run", "-q").exit_code == 0  # toy and other
    path = ws / "experiments" / "toy.py"
    path.write_text(path.read_text().replace("0.01 * rng.random()", "0.02 * rng.random()"))  # what run computes
    reasons = explain_lines(expost)
    assert {r[3] for r in reasons if r[0] == "toy"} == {"source changed: `run` changed"}
    assert {r[3] for r in reasons if r[0] == "other"} == {"cached"}
    r = expost("run", "-q")
    assert sorted({line.split()[0] for line in r.ran}) == ["toy"]
    assert len(r.ran) == 10


def test_local_module_is_part_of_the_key(expost, ws):
    helper = ws / "experiments" / "_helper.py"
    helper.write_text("SCALE = 1\n")
    toy = ws / "experiments" / "toy.py"
    toy.write_text("import _helper\n" + toy.read_text().replace("start = 1 +", "start = _helper.SCALE +"))
    assert expost("run", "toy", "-q").exit_code == 0
    helper.write_text("SCALE = 2\n")
    assert {r[3] for r in explain_lines(expost, "toy")} == {"source changed: `SCALE` changed"}


def test_more_seeds_runs_only_the_new_ones(expost):
    assert expost("run", "toy", "--seeds", "5", "-q").exit_code == 0
    reasons = explain_lines(expost, "toy", "--seeds", "8")
    assert sum(r[3] == "new seed" for r in reasons) == 6  # seeds 6-8 for two rates
    assert sum(r[3] == "cached" for r in reasons) == 10
    r = expost("run", "toy", "--seeds", "8", "--where", "rate=0.5", "-q")
    assert sorted(r.ran) == ["toy 0.5 6", "toy 0.5 7", "toy 0.5 8"]


def test_config_change_is_explained(expost):
    assert expost("run", "toy", "-q").exit_code == 0
    reasons = explain_lines(expost, "toy", "--set", "steps=30")
    assert {r[3] for r in reasons} == {"config changed"}
    reasons = explain_lines(expost, "toy", "--set", "rate=2.0")
    assert {r[3] for r in reasons} == {"new config"}


def test_force_reruns(expost):
    assert expost("run", "toy", "-q", "--where", "rate=1.0").exit_code == 0
    r = expost("run", "toy", "-q", "--where", "rate=1.0", "--force")
    assert len(r.ran) == 5


def _results(ws):
    w = find_workspace(ws)
    spec = load_specs(w, ["toy"])[0]
    runs = plan_runs([spec], Selection())["toy"]
    return cached_results(w, spec, runs)


def test_parallel_and_serial_give_identical_results(expost, ws, cache_dir, monkeypatch):
    assert expost("run", "toy", "-j1", "-q").exit_code == 0
    serial = _results(ws)
    monkeypatch.setenv("EXPOST_CACHE_DIR", str(cache_dir.parent / "cache2"))
    assert expost("run", "toy", "-j2", "-q").exit_code == 0
    parallel = _results(ws)
    for rate in (0.5, 1.0):
        a, b = serial.where(rate=rate), parallel.where(rate=rate)
        assert np.array_equal(a.scalar("final"), b.scalar("final"))
        assert np.array_equal(a.series("curve"), b.series("curve"))


def test_a_failing_seed_does_not_stop_the_others(expost, ws):
    r = expost("run", "toy", "-q", "--set", "fail_seed=3")
    assert r.exit_code == 1
    assert len(r.ran) == 10
    assert "2 run(s) failed" in r.output
    assert re.search(r"toy \[rate=0\.5\] seed 3: RuntimeError: seed 3 fails on purpose \(log: .*seed3\.log\)", r.output)
    log = re.search(r"\(log: (.*?)\)", r.output).group(1)
    text = open(log).read()
    assert "Traceback" in text and "fails on purpose" in text
    # the 8 others are cached; the failures are retried and explained
    reasons = explain_lines(expost, "toy", "--set", "fail_seed=3")
    assert sum(x[3] == "cached" for x in reasons) == 8
    assert [x[3] for x in reasons if x[2] == "seed 3"] == ["failed last time"] * 2


def test_nan_outputs_are_kept_and_flagged(expost, ws):
    r = expost("run", "toy", "-q", "--set", "nan_seed=2")
    assert r.exit_code == 0
    assert "flagged: toy [rate=0.5] seed 2 produced NaN/inf in final" in r.stderr
    w = find_workspace(ws)
    spec = load_specs(w, ["toy"])[0]
    runs = plan_runs([spec], Selection(set={"nan_seed": "2"}))["toy"]
    rs = cached_results(w, spec, runs).where(rate=0.5)
    assert np.isnan(rs.scalar("final")[1])
    assert [rec.seed for rec in rs.nonfinite_runs] == [2]


def test_cache_entries_are_complete_and_corruption_is_detected(expost, ws, cache_dir):
    assert expost("run", "toy", "-q", "--where", "rate=0.5").exit_code == 0
    entries = sorted(cache_dir.glob("runs/*/*/result.json"))
    assert len(entries) == 5
    assert not list(cache_dir.glob("runs/*/.*tmp"))
    meta = json.loads(entries[0].read_text())
    assert set(meta["scalars"]) == {"final"}
    arr = np.load(entries[0].parent / "curve.npy")
    assert arr.dtype == np.float32 and arr.shape == (20,)
    (entries[0].parent / "curve.npy").write_bytes(b"garbage")
    assert len(_results(ws).where(rate=0.5)) == 4
    r = expost("run", "toy", "-q", "--where", "rate=0.5")
    assert len(r.ran) == 1


def _age(paths, seconds=10):
    """Move files' mtimes into the past, out of the racy window (as time passing would)."""
    import os
    import time

    for p in paths:
        t = time.time() - seconds
        os.utime(p, (t, t))


def test_static_specs_are_remembered_by_file_stats(ws, monkeypatch):
    """A no-op build parses no source: load_static's result comes back from the cache while every
    file that decides it is unchanged (and old enough to trust its stats)."""
    from expost.runs import spec as spec_mod

    w = find_workspace(ws)
    first = load_specs(w, ["toy", "other"])
    _age((ws / "experiments").glob("*.py"))
    load_specs(w, ["toy", "other"])  # written again now that the files are trusted

    def no_parse(path):
        raise AssertionError(f"{path} was parsed again")

    real_load_static = spec_mod.load_static
    monkeypatch.setattr(spec_mod, "load_static", no_parse)
    again = load_specs(w, ["toy", "other"])
    assert [(s.name, s.source_hash, s.params, s.sweep, s.seeds, s.outputs, s.batched) for s in again] == \
           [(s.name, s.source_hash, s.params, s.sweep, s.seeds, s.outputs, s.batched) for s in first]
    monkeypatch.setattr(spec_mod, "load_static", real_load_static)
    
    # an edit is seen at once, even within the same second and with the same size
    path = ws / "experiments" / "toy.py"
    path.write_text(path.read_text().replace('"rate": 0.5,', '"rate": 0.7,'))
    edited = load_specs(w, ["toy"])[0]
    assert edited.params["rate"] == 0.7 and edited.file_hash != first[0].file_hash


def test_a_new_local_module_changes_the_remembered_source_hash(ws):
    """`import helper` resolved to nothing local; creating experiments/helper.py must count."""
    w = find_workspace(ws)
    path = ws / "experiments" / "toy.py"
    guarded = ("import math\ntry:\n    import helper_mod_x\n    BONUS = helper_mod_x.X\n"
               "except ImportError:\n    BONUS = 0\n")
    path.write_text(path.read_text().replace("import math\n", guarded, 1).replace("start = 1 +", "start = 1 + BONUS +"))
    _age([path])
    before = load_specs(w, ["toy"])[0].source_hash
    assert load_specs(w, ["toy"])[0].source_hash == before
    helper = ws / "experiments" / "helper_mod_x.py"
    helper.write_text("X = 1\n")
    _age([helper])  # even an old-looking new file: its presence alone changes the answer
    after = load_specs(w, ["toy"])[0].source_hash
    assert after != before
    helper.write_text("X = 22\n")
    _age([helper], 5)
    assert load_specs(w, ["toy"])[0].source_hash not in (before, after)


def test_a_corrupt_static_spec_store_is_ignored(ws, cache_dir):
    w = find_workspace(ws)
    good = load_specs(w, ["toy"])[0].source_hash
    (cache_dir / "specs.marshal").write_bytes(b"\x00garbage")
    assert load_specs(w, ["toy"])[0].source_hash == good
