"""A run on a remote worker (a Dask worker) that has no copy of the workspace.

The driver ships each job with the experiment's source and the workspace-local modules it imports
(`ship`): the worker needs Python, torch, expost and the packages the experiment imports, nothing
else. On the worker (`run_shipped`) the files are written under a temporary folder of the worker
process, at their driver paths below it, and the job runs exactly as a local run does: in a worker
process forked from the Dask worker by a `LocalPool` of size one (fresh or reused and
fingerprinted, timed out, its crash reported as locally: runs/runner.py), seeded by `run_job`.
The temporary prefix is taken out of what the run printed and of its traceback, so a failure reads
as it does locally. Results go back to the driver, which alone validates them and writes the cache.

A run's cache key holds the driver's environment fingerprint (python and torch minor, machine,
device kind); a worker whose own differs refuses the job rather than have its numbers cached
under the driver's key.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from expost.runs.worker import Job, JobResult


@dataclass(frozen=True)
class Shipped:
    """A job as it travels to a remote worker: with the files its script needs."""

    job: Job
    files: tuple  # ((absolute path on the driver, bytes), ...): the script first, then its local modules
    digest: str  # of the paths and bytes: the folder the worker writes them to
    env: dict  # the driver's freshness.env_fingerprint(device): what the run's cache key holds
    device: str  # the --device of the sweep (the fingerprint's device kind)


def sources(script: str) -> tuple:
    """(path, bytes) of the script and the workspace-local modules it imports (the cache key's files)."""
    from expost.runs.spec import local_sources

    path = Path(os.path.abspath(script))  # as the driver names it (symlinks kept): its tracebacks' paths
    paths = dict.fromkeys(local_sources(path, path.parent))  # the script first
    return tuple((str(p), p.read_bytes()) for p in paths)


def ship(job: Job, files: tuple, env: dict, device: str) -> Shipped:
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return Shipped(job, files, h.hexdigest()[:20], env, device)


# ------------------------------------------------------------------------------ on the worker

WATCH_S = 0.2  # how often a waiting task asks whether it was cancelled
_POOLS: dict = {}  # start method -> LocalPool of one worker process; used by the _serve thread only
_REQUESTS: queue.SimpleQueue = queue.SimpleQueue()  # (job, device, torch threads, reply queue)
_SERVER: list = []  # the thread that runs jobs, started once per process
_RUNNING: list = []  # the reply queue of the job it runs now
_SWITCH = threading.Lock()  # held while _RUNNING changes, and while a cancelled job's run is ended
_START = threading.Lock()
_ROOT: list = []  # this process's folder for shipped files


def _root() -> Path:
    """This process's folder for shipped files: in the Dask worker's own scratch folder, which Dask
    removes (also after a crash, when a worker next starts), else a temporary folder."""
    if not _ROOT:
        worker, _ = _task()
        scratch = getattr(worker, "local_directory", None)
        root = tempfile.mkdtemp(prefix="expost-shipped-", dir=scratch if scratch and os.path.isdir(scratch) else None)
        atexit.register(shutil.rmtree, root, True)
        _ROOT.append(Path(root))
    return _ROOT[0]


def _materialise(shipped: Shipped) -> str:
    """Write the shipped files under this process's folder (once per digest); the prefix that maps
    a driver path to its copy here."""
    base = _root() / shipped.digest
    if not base.exists():
        part = base.with_name(base.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        for name, data in shipped.files:
            target = part / name.lstrip(os.sep)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        part.rename(base)
    return str(base)


def _env_mismatch(shipped: Shipped) -> str | None:
    from expost.freshness import env_fingerprint

    here = env_fingerprint(shipped.device)
    diff = [f"{k} {here.get(k)} here, {v} on the driver" for k, v in shipped.env.items() if here.get(k) != v]
    if not diff:
        return None
    return (f"this worker's environment differs from the driver's ({'; '.join(diff)}), so its numbers would be "
            "cached under the driver's key: install the same python, torch and numpy versions on the workers "
            "as on the machine that runs expost")


def _threads() -> int | None:
    """Torch threads for the run: the Dask worker's thread count (a thread per core it was given).
    Asked from the task's thread: Dask knows its worker there only."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):  # not in a Dask worker, or another version
        return None


def _task():
    """(Dask worker, key of the task this thread runs), or (None, None) outside a Dask task."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return worker, worker.get_current_task()
    except (ImportError, ValueError, AttributeError):
        return None, None


def _wait(reply: queue.SimpleQueue) -> JobResult:
    """The job's result. Dask cannot stop a task's thread: when the task is cancelled (the driver's
    Ctrl-C) or the worker closes, the run's process is ended here, so that the cluster is free at once."""
    worker, key = _task()
    while True:
        try:
            return reply.get(timeout=None if worker is None else WATCH_S)
        except queue.Empty:
            pass
        task = worker.state.tasks.get(key)
        if task is None or task.state in ("cancelled", "released", "forgotten") or worker.status.name not in (
                "running", "paused"):
            with _SWITCH:
                if _RUNNING and _RUNNING[0] is reply:  # still this job's run, not the next one's
                    for pool in _POOLS.values():
                        for proc in list(pool.procs):  # the run and what it started; _serve reports it ended
                            with contextlib.suppress(OSError):
                                os.killpg(proc.pid, signal.SIGKILL)


def _pool(device: str, threads: int | None):
    from expost.runs.runner import LocalPool, start_method

    method = start_method(device)
    if method not in _POOLS:
        if "torch" not in sys.modules:  # forks are warm, as the local parent's are
            import torch  # noqa: F401
        # Dask runs its workers as daemonic processes, which multiprocessing forbids to start
        # children; the run's process dies with this one anyway (runs/worker.py: PDEATHSIG).
        multiprocessing.current_process()._config.pop("daemon", None)
        _POOLS[method] = LocalPool(1, device, threads)
    return _POOLS[method]


def _serve() -> None:
    """Run jobs one at a time (global state, the RNGs and stdout among it, is per process), all from
    this one thread, which lives as long as the process: a run's process is told to end when the
    thread that forked it ends (PR_SET_PDEATHSIG), and Dask's task threads come and go."""
    while True:
        job, device, threads, reply = _REQUESTS.get()
        with _SWITCH:
            _RUNNING[:] = [reply]
        try:
            pool = _pool(device, threads)
            pool.submit(0, job)
            results: list = []
            while not results:
                results = pool.wait(None)
                pool.progress.clear()  # a generator run's progress stays on the worker (not sent back)
            result = results[0][1]
        except Exception as e:  # the pool itself failed (no process could be started, ...): the task must
            for pool in _POOLS.values():  # still get an answer, and the next job a new pool
                pool.kill()
            _POOLS.clear()
            result = JobResult(None, f"the worker could not start a process for the run ({type(e).__name__}: {e})",
                               crashed=True)
        with _SWITCH:
            _RUNNING.clear()
        reply.put(result)


def run_shipped(shipped: Shipped) -> JobResult:
    """Run a shipped job here, in a local worker process, and return its JobResult. Never raises."""
    from expost import numerics

    numerics.pin()  # the run's worker process, forked below, imports torch with the same kernels as a local run
    problem = _env_mismatch(shipped)
    if problem is not None:
        return JobResult(None, problem, crashed=True)
    with _START:
        if not _SERVER:
            _SERVER.append(threading.Thread(target=_serve, name="expost-runs", daemon=True))
            _SERVER[0].start()
        base = _materialise(shipped)
    reply: queue.SimpleQueue = queue.SimpleQueue()
    _REQUESTS.put((replace(shipped.job, script=base + shipped.files[0][0]), shipped.device, _threads(), reply))
    result = _wait(reply)
    result.output = result.output.replace(base, "")
    result.traceback = result.traceback.replace(base, "")
    if result.error:
        result.error = result.error.replace(base, "")
    return result
