"""No run sees another run's global state: the same numbers with -j 1 and -j 2, with reused and with
fresh workers; every way a run can end is that run's outcome. Real worker processes throughout."""

import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from expost.runs.plan import Selection, load_specs, plan_runs
from expost.runs.sweep import make_tasks
from expost.runs.claims import validate
from expost.layout import find_workspace
from expost.runs import runner, worker
from expost.runs.cache import Cache

from conftest import FIXTURES

CLEAN = {"third": 0.3333333432674408,  # float32(1/3): float64 would be 0.333...3
         "scale": 1.0, "threads_3": 0, "grad": 1, "on_path": 0, "deterministic": 0, "calls": 1, "helper_calls": 1}


@pytest.fixture
def leaky_ws(ws):
    for name in ("leaky.py", "_leaky_helper.py"):
        shutil.copy(FIXTURES / name, ws / "experiments" / name)
    return ws


def cached_scalars(ws, leak: str, seeds: int) -> dict:
    """seed -> scalars, read from the cache that EXPOST_CACHE_DIR names now."""
    w = find_workspace(ws)
    spec = load_specs(w, ["leaky"])[0]
    runs = plan_runs([spec], Selection(seeds=seeds, set={"leak": leak}))["leaky"]
    cache = Cache(w.cache_dir)
    return {r.seed: cache.read(r.key).scalars for r in runs}


def run_with(expost, ws, monkeypatch, cache_dir, leak: str, jobs: str, seeds: int = 4) -> dict:
    monkeypatch.setenv("EXPOST_CACHE_DIR", str(cache_dir))
    r = expost("run", "leaky", "--set", f"leak={leak}", "--seeds", seeds, "-j", jobs, "-q")
    assert r.exit_code == 0, r.output
    assert f"{seeds} ran, 0 failed" in r.stderr, r.stderr
    return cached_scalars(ws, leak, seeds)


LEAKS = ["dtype,chdir", "dtype", "chdir", "env", "threads", "grad", "path", "deterministic",
         ""]  # "": only the module globals (every run appends to a list in the module and its helper)


@pytest.mark.parametrize("leak", LEAKS, ids=[leak or "module-globals" for leak in LEAKS])
def test_a_run_that_changes_global_state_changes_no_other_run(expost, leaky_ws, tmp_path, monkeypatch, leak):
    serial = run_with(expost, leaky_ws, monkeypatch, tmp_path / "cache-j1", leak, "1")
    parallel = run_with(expost, leaky_ws, monkeypatch, tmp_path / "cache-j2", leak, "2")
    for seed in range(1, 5):
        a = {k: v for k, v in serial[seed].items() if k != "pid"}
        b = {k: v for k, v in parallel[seed].items() if k != "pid"}
        assert a == b, (seed, a, b)
        assert a == {**CLEAN, "cwd_len": len(str(leaky_ws))}, (seed, a)


def test_fresh_workers_isolate_too(expost, leaky_ws, tmp_path, monkeypatch):
    """With the fork's cost taken as nothing, an experiment's runs get a fresh worker each as soon as
    one fresh and one reused run are timed: the later seeds run in processes of their own."""
    monkeypatch.setattr(runner, "FRESH_OVERHEAD", 1e9)
    for jobs in ("1", "2"):
        seen = run_with(expost, leaky_ws, monkeypatch, tmp_path / f"cache-fresh-{jobs}", "dtype,chdir", jobs, seeds=10)
        for seed, scalars in seen.items():
            assert {k: v for k, v in scalars.items() if k != "pid"} == {**CLEAN, "cwd_len": len(str(leaky_ws))}, seed
        pids = [s["pid"] for seed, s in seen.items() if seed > 1]
        alone = [pid for pid in pids if pids.count(pid) == 1]
        assert len(alone) >= 4, seen  # up to 2 jobs per reused worker were queued before the switch


def test_the_mode_follows_the_measured_cost_of_a_fresh_process():
    pool = runner.LocalPool(2)
    job = worker.Job("/x/exp.py", "h", {}, (1,))
    assert not pool._fresh(job)  # nothing measured yet: reused, fingerprinted workers
    pool.start_cost = 0.01
    pool.timing[job.script] = {"fresh": 1.0, "reused": 0.98}
    assert pool._fresh(job)  # 10 ms fork + 20 ms warm-up <= 5% of a 0.98 s run
    pool.timing[job.script] = {"fresh": 1.3, "reused": 0.3}  # torch._dynamo imported by the first run: 1 s
    assert not pool._fresh(job)
    pool.timing[job.script] = {"fresh": 0.0012, "reused": 0.001}  # tiny runs
    assert not pool._fresh(job)
    pool.forks = False  # spawned workers: always reused
    pool.timing[job.script] = {"fresh": 1.0, "reused": 0.98}
    assert not pool._fresh(job)


def test_the_fingerprint_sees_what_a_run_can_change():
    base = worker.fingerprint()
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float64)
    try:
        assert worker.changed(base, worker.fingerprint()) == ["torch default dtype"]
    finally:
        torch.set_default_dtype(torch.float32)
    assert worker.changed(base, worker.fingerprint()) == []


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sys_exit_and_keyboard_interrupt_in_run_fail_that_run(expost, ws, jobs):
    shutil.copy(FIXTURES / "exits.py", ws / "experiments" / "exits.py")
    r = expost("run", "exits", "-q", "-j", jobs)
    assert r.exit_code == 1, r.output
    assert "interrupted" not in r.output and "Traceback" not in r.output, r.output
    message = r.output[r.output.index("Error: "):]
    assert "2 run(s) failed" in message, message
    assert re.search(r"exits \[default\] seed 2: run\(\) raised SystemExit\(0\) \(log: .*seed2\.log\)", message), message
    assert re.search(r"exits \[default\] seed 3: run\(\) raised KeyboardInterrupt\(\) \(log: .*seed3\.log\)", message)
    log = re.search(r"seed 2: .*\(log: (.*?)\)", message).group(1)
    text = open(log).read()
    assert "seed 2 starting" in text and "SystemExit" in text  # what the run printed, then the traceback
    explain = expost("run", "exits", "--explain")
    cached = {line.split("\t")[2] for line in explain.output.splitlines() if line.endswith("\tcached")}
    assert cached == {"seed 1", "seed 4"}, explain.output


def test_any_concurrent_futures_executor_runs_the_jobs_and_the_parent_caches(leaky_ws, cache_dir):
    """The seam for a distributed executor: workers get jobs without the cache folder and return
    results; the parent writes the cache."""
    w = find_workspace(leaky_ws)
    spec = load_specs(w, ["leaky"])[0]
    full = validate(spec, Selection())
    runs = plan_runs([spec], Selection(set={"leak": ""}))["leaky"]
    tasks = make_tasks(full, runs, Cache(w.cache_dir))
    assert all("cache" not in repr(t.job()) for t in tasks)
    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as ex:
        outcomes = runner.execute(tasks, 2, executor=ex)
    assert sorted(o.seed for o in outcomes if o.ok) == [1, 2, 3, 4]
    assert all(Cache(w.cache_dir).read(r.key) is not None for r in runs)


LIBRARY = '''"""Sets up global state when imported, as torch._dynamo does (an environment variable, a warnings filter)."""
import os
import warnings

os.environ["FAKELIB_CACHE_DIR"] = "/tmp/fakelib"
warnings.filterwarnings("once", message="fakelib")
'''

USES_LIBRARY = '''import os

PARAMS = {"x": 1}
SEEDS = 4
OUTPUTS = {"pid": "scalar: the process that ran it", "lib_env": "scalar: 1 if the library's variable was set before the run"}


def run(cfg, seed):
    before = int("FAKELIB_CACHE_DIR" in os.environ)
    import fakelib  # noqa: F401  (first imported by a run, as the first optimizer imports torch._dynamo)
    return {"pid": os.getpid(), "lib_env": before}
'''


def test_what_a_library_sets_up_on_import_does_not_retire_the_worker(expost, ws, tmp_path, monkeypatch):
    """A library first imported by a run changes global state the same way in any process: the
    worker stays (else every run of such an experiment would pay that import again), while a run
    that changes the same kind of state itself retires its worker (test above)."""
    lib = tmp_path / "site"
    lib.mkdir()
    (lib / "fakelib.py").write_text(LIBRARY)
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.delenv("FAKELIB_CACHE_DIR", raising=False)
    (ws / "experiments" / "uses_library.py").write_text(USES_LIBRARY)
    r = expost("run", "uses_library", "-j", "1", "-q")
    assert r.exit_code == 0, r.output
    w = find_workspace(ws)
    spec = load_specs(w, ["uses_library"])[0]
    runs = plan_runs([spec], Selection())["uses_library"]
    seen = {r.seed: Cache(w.cache_dir).read(r.key).scalars for r in runs}
    assert len({s["pid"] for s in seen.values()}) == 1, seen  # one worker ran them all
    assert [seen[s]["lib_env"] for s in range(1, 5)] == [0, 1, 1, 1]  # as modules stay imported


def test_a_bracket_folds_what_changed_inside_it_unless_the_run_changed_it_first(monkeypatch):
    monkeypatch.delenv("BRACKET_A", raising=False)
    monkeypatch.delenv("BRACKET_B", raising=False)
    base = worker.fingerprint()
    watch = worker._ImportWatch(base)
    import os
    os.environ["BRACKET_A"] = "run"  # the run's own change, before the library loads
    with watch.bracket():
        os.environ["BRACKET_A"] = "library"
        os.environ["BRACKET_B"] = "library"
    assert worker.changed(base, worker.fingerprint()) == ["os.environ['BRACKET_A']"]


def _try_key(cache_root, key, answer):
    runner._KeyLocks._open.clear()  # forked: the parent's instance holds the parent's locks, not ours
    answer.put(runner._KeyLocks.open(Cache(cache_root)).take(key))


def test_a_run_key_held_by_one_process_is_busy_for_another_until_released(tmp_path):
    ctx = get_context("fork")
    held = runner._KeyLocks.open(Cache(tmp_path))
    again = runner._KeyLocks.open(Cache(tmp_path))  # a second caller in this process shares it
    a, b = "ab" * 32, "cd" * 32

    def other_takes(key) -> bool:
        answer = ctx.Queue()
        p = ctx.Process(target=_try_key, args=(tmp_path, key, answer))
        p.start()
        p.join(10)
        return answer.get(timeout=5)

    assert held.take(a)
    assert not again.take(a)  # nor by another caller in this process
    again.close()  # and that caller's closing keeps the lock
    assert not other_takes(a)
    assert other_takes(b)
    held.release(a)
    assert other_takes(a)
    held.close()
    assert not runner._KeyLocks._open
