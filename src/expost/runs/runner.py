"""Run stage: execute planned runs in worker processes and write each result to the cache.

Workers are forked where possible (spawned once this process has initialised CUDA), keep each
experiment module imported across the runs they execute (torch is imported once, not once per run),
and use one torch thread each when several run in parallel. A failing run writes its traceback and output to a log and
never stops the others; every completed run is in the cache before the command returns.
"""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from expost.runs.cache import Cache
from expost.runs.plan import PlannedRun

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Task:
    run: PlannedRun
    script: str
    outputs: dict  # name -> "series" | "scalar"
    cache_root: str
    log: str


@dataclass(frozen=True)
class BatchTask:
    """Seeds of one config run by the experiment's run_batch(cfg, seeds) in one vectorised call."""

    runs: tuple  # PlannedRun, same config, ascending seeds
    script: str
    outputs: dict
    cache_root: str
    logs: tuple


# An experiment with run_batch always runs in fixed blocks of seeds (1-10, 11-20, ...): a seed's
# numbers depend on the batch it ran in (float rounding), so the blocks never depend on -j or on
# which seeds happened to be missing.
BATCH_BLOCK = 10


@dataclass
class Outcome:
    run: PlannedRun
    ok: bool
    wall_s: float = 0.0
    error: str | None = None
    log: str | None = None
    nonfinite: list = field(default_factory=list)
    reused: bool = False  # another process computed it while this one waited for the run's lock

    # flat fields used by RunFailures messages
    @property
    def experiment(self):
        return self.run.experiment

    @property
    def config_label(self):
        return self.run.label

    @property
    def seed(self):
        return self.run.seed


@dataclass
class Report:
    planned: int
    cached: int
    outcomes: list[Outcome]
    interrupted: bool = False

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ran(self) -> int:
        return sum(o.ok for o in self.outcomes)


class OutputError(Exception):
    """The run returned outputs that do not match OUTPUTS."""


_MODULES: dict = {}
_THREADS: int | None = None


def _init_worker(threads: int | None) -> None:
    global _THREADS
    _THREADS = threads
    # Ctrl-C reaches the whole process group: the parent decides (it kills the workers), so a
    # worker never dies halfway through writing; cache writes are atomic either way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        for var in THREAD_VARS:
            os.environ[var] = str(threads)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run could touch: random, numpy, torch and CUDA."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)


def _module(script: str, source_hash: str):
    from expost.runs.spec import import_script

    key = (script, source_hash)
    if key not in _MODULES:
        _MODULES[key] = import_script(Path(script), f"expost_run_{Path(script).stem}_{source_hash[:10]}")
        torch = sys.modules.get("torch")
        if torch is not None and _THREADS:
            torch.set_num_threads(_THREADS)
    return _MODULES[key]


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def convert_outputs(returned, declared: dict) -> tuple[dict, dict, list]:
    """Split a run's return value into scalars and series, checked against OUTPUTS."""
    if not isinstance(returned, dict):
        raise OutputError(f"run() returned {type(returned).__name__}; it must return a dict of the declared OUTPUTS")
    missing = [k for k in declared if k not in returned]
    extra = [k for k in returned if k not in declared]
    if missing:
        raise OutputError(f"declared but not produced: {', '.join(missing)} (return them from run(), or remove them from OUTPUTS)")
    if extra:
        raise OutputError(f"produced but not declared: {', '.join(extra)} (declare them in OUTPUTS, or stop returning them)")
    scalars, series, nonfinite = {}, {}, []
    for name, kind in declared.items():
        arr = to_numpy(returned[name])
        if kind == "scalar":
            if arr.size != 1:
                raise OutputError(f"output {name!r} is declared 'scalar' but has shape {arr.shape}")
            v = arr.reshape(()).item()
            if isinstance(returned[name], (bool, np.bool_)):
                v = bool(returned[name])
            elif isinstance(returned[name], (int, np.integer)):
                v = int(returned[name])
            scalars[name] = v
            if not math.isfinite(float(v)):
                nonfinite.append(name)
        else:
            if arr.ndim != 1 or arr.size == 0:
                raise OutputError(f"output {name!r} is declared 'series' but has shape {arr.shape}; return a 1-D list or tensor")
            series[name] = arr
            if not np.isfinite(arr).all():
                nonfinite.append(name)
    return scalars, series, nonfinite


def _fail_log(log: Path, run: PlannedRun, output: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# {run.experiment} [{run.label}] seed {run.seed}\n# config: {run.cfg}\n\n"
                   f"{output}\n{traceback.format_exc()}")


def _store(cache_root: str, run: PlannedRun, returned, outputs: dict, wall: float, log: Path) -> Outcome:
    scalars, series, nonfinite = convert_outputs(returned, outputs)
    meta = {"experiment": run.experiment, "config": run.cfg, "point": run.point_dict, "seed": run.seed,
            "scalars": scalars, "series_len": {k: int(v.size) for k, v in series.items()},
            "nonfinite": nonfinite, "wall_s": round(wall, 4), "source_hash": run.source_hash}
    Cache(Path(cache_root)).write(run.key, meta, series)
    log.unlink(missing_ok=True)
    return Outcome(run, True, wall, nonfinite=nonfinite)


def run_batch_task(task: BatchTask) -> list[Outcome]:
    """Execute a block of seeds through run_batch; each seed is validated and cached on its own."""
    cache = Cache(Path(task.cache_root))
    with cache.lock(task.runs[0].key):
        if all(cache.has(r.key) for r in task.runs):
            return [Outcome(r, True, reused=True) for r in task.runs]
        return _run_batch(task)


def _run_batch(task: BatchTask) -> list[Outcome]:
    runs = task.runs
    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            module = _module(task.script, runs[0].source_hash)
            seed_everything(runs[0].seed)
            t0 = time.perf_counter()
            returned = module.run_batch(runs[0].cfg, [r.seed for r in runs])
        wall = (time.perf_counter() - t0) / len(runs)
        if not isinstance(returned, (list, tuple)) or len(returned) != len(runs):
            raise OutputError(f"run_batch returned {type(returned).__name__} of length "
                              f"{len(returned) if hasattr(returned, '__len__') else '?'}; "
                              f"it must return a list with one output dict per seed ({len(runs)})")
        return [_store(task.cache_root, r, out, task.outputs, wall, Path(log))
                for r, out, log in zip(runs, returned, task.logs)]
    except Exception as e:
        wall = time.perf_counter() - t0
        for r, log in zip(runs, task.logs):
            _fail_log(Path(log), r, buf.getvalue())
        return [Outcome(r, False, wall, f"{type(e).__name__}: {e}", log) for r, log in zip(runs, task.logs)]


def run_task(task: Task) -> Outcome:
    """Execute one run in this (worker) process and cache its result. Never raises for user errors.
    Holds the run key's lock: a second build waiting on it finds the result instead of rerunning."""
    cache = Cache(Path(task.cache_root))
    with cache.lock(task.run.key):
        if cache.has(task.run.key):
            return Outcome(task.run, True, reused=True)
        return _run_one(task)


def _run_one(task: Task) -> Outcome:
    run = task.run
    buf = io.StringIO()
    log = Path(task.log)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            module = _module(task.script, run.source_hash)
            seed_everything(run.seed)
            t0 = time.perf_counter()
            returned = module.run(run.cfg, run.seed)
        wall = time.perf_counter() - t0
        return _store(task.cache_root, run, returned, task.outputs, wall, log)
    except Exception as e:
        _fail_log(log, run, buf.getvalue())
        return Outcome(run, False, time.perf_counter() - t0, f"{type(e).__name__}: {e}", str(log))


def make_executor(jobs: int, device: str = "cpu", threads: int | None = None) -> Executor:
    """Local worker processes; a distributed executor with the same interface can replace this.

    Where fork exists (Linux), workers are forked: they inherit the imported torch instead of
    paying its import again (as torch's own DataLoader workers do). A CUDA context cannot survive
    a fork, so once this process has initialised CUDA, workers are spawned instead; experiments are
    only imported here, never run, so normally CUDA is first touched inside a worker."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(start_method(device)),
                               initializer=_init_worker, initargs=(threads,))


def start_method(device: str) -> str:
    if "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    torch = sys.modules.get("torch")
    if device.startswith("cpu") or torch is None:
        return "fork"
    return "spawn" if torch.cuda.is_initialized() else "fork"


def execute(tasks: list, jobs: int, on_done: Callable[[Outcome], None] | None = None,
            device: str = "cpu") -> list[Outcome]:
    """Run tasks (Task or BatchTask) in worker processes; one Outcome per run.

    A worker that dies (a crash in experiment code, out of memory, os._exit) never takes the
    command down: the tasks it left unfinished run again one per fresh worker, so the one that
    kills its worker is identified and reported as failed while every other run completes.
    """
    outcomes: list[Outcome] = []

    def emit(result) -> None:
        for outcome in result if isinstance(result, list) else [result]:
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)

    # One torch thread per worker whenever the user asked for parallel work (-j > 1), even if
    # fewer tasks than workers remain: the other cores are theirs to share.
    threads = 1 if jobs > 1 else None
    unfinished = _run_pool(tasks, max(1, min(jobs, len(tasks))), device, emit, threads) if tasks else []
    for task in unfinished:  # after a crash: alone in a worker, so a crash is this task's own
        if _run_pool([task], 1, device, emit, threads):
            runs = task.runs if isinstance(task, BatchTask) else (task.run,)
            emit([Outcome(r, False, error="the worker process died while running it (a crash in the "
                          "experiment, os._exit, or out of memory)") for r in runs])
    return outcomes


def _run_pool(tasks: list, workers: int, device: str, emit, threads: int | None) -> list:
    """Run tasks in one pool; returns the tasks left unfinished because a worker died."""
    pool = make_executor(workers, device, threads)
    unfinished = []
    try:
        pending = {pool.submit(run_batch_task if isinstance(t, BatchTask) else run_task, t): t for t in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                try:
                    emit(fut.result())
                except BrokenProcessPool:
                    unfinished.append(task)
    except KeyboardInterrupt:
        _kill(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return unfinished


def _kill(pool) -> None:
    for proc in list(getattr(pool, "_processes", {}).values() or []):
        with contextlib.suppress(Exception):
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
