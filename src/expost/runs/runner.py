"""Run stage: execute planned runs in worker processes; this process (the parent) alone validates
their results and writes the cache and the failure logs.

How a run is isolated. No run sees another run's global state, whatever -j is:

- Workers are forked from the parent, which has imported torch and the experiments but never runs
  one (they are spawned instead once the parent has initialised CUDA, which cannot survive a fork),
  so every worker's first run starts from the same state.
- A worker that is reused loads the experiment afresh for each run (its module body executed again
  into a new module, the helper modules of its folder imported again) and, after each run,
  compares `fingerprint()` (default dtype and device, cwd, os.environ, sys.path, torch threads,
  grad and inference mode, deterministic-algorithm, matmul-precision and torch.backends flags,
  function modes, numpy error handling, warning filters, live threads, recursion limit) with its
  baseline. A run that changed any of it retires the worker: it exits after sending the result and
  the next run gets a new fork. What a library sets up when a run first imports it is the library's
  doing, the same in any process, and joins the baseline instead (`_ImportWatch`; the first
  torch.optim optimizer imports torch._dynamo, which adds TORCHINDUCTOR_CACHE_DIR to os.environ and
  a warnings filter); so does CUDA's own set-up, done by the worker before its first CUDA job.
  Modules stay imported, as in any process.
- A fresh worker runs one run and exits, so not even state outside the fingerprint can leak.

How the mode is chosen, per experiment, by measurement (`LocalPool._fresh`). A worker's first run is
in a fresh process anyway, so each worker times one "fresh" run (loading and running it, with
whatever a new process initialises lazily: torch._dynamo, about 1 s; CUDA) and its later runs
"reused" ones; starting a worker is timed too (fork to ready, about 10-20 ms). An experiment starts
in reused workers; once it has both timings, its runs get a fresh worker each where the start plus
the difference between the two is at most FRESH_OVERHEAD (5%) of a reused run, i.e. for long runs;
otherwise they stay in reused, fingerprinted workers. Spawned workers are always reused (a spawn
costs seconds). A reused worker holds up to two jobs (the next waits in its pipe, so it never waits
while the parent writes the cache); a fresh one holds one.

How the parent writes and locks. A worker gets a Job (script, config, seeds), never the cache folder
or a log path, runs it with `run_job` and returns a JobResult: the outputs (tensors as numpy
arrays), what the run printed, its timings, or the error and traceback. This is the seam for a
distributed executor whose workers share no filesystem with the parent: `execute(executor=...)`
takes any concurrent.futures executor (runs/cluster.py's DaskExecutor ships each job with its
sources to a Dask worker, which runs it in a LocalPool of its own: runs/remote.py). The parent
validates each result (`convert_outputs`) and writes it (`Cache.write`) as it arrives. It holds each run key's lock from before the run goes out
until its result is written, so two builds of one workspace never run a key twice: a one-byte POSIX
record lock per key in the cache's locks/run-keys.lock (`_KeyLocks`), taken without waiting; a key
another build holds is tried again later, and counts as reused if that build cached it meanwhile.

Every way a run can end is that run's outcome, and the others go on: a return value (validated, then
cached), an exception, SystemExit or KeyboardInterrupt raised by the experiment ("run() raised
SystemExit(0)"), or the death of its worker (os._exit, a segfault, out of memory). Workers ignore
Ctrl-C; on Ctrl-C the parent kills them, caches the results it has received and re-raises.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from expost.errors import DiskError, ExpostError
from expost.files import disk_problem
from expost.runs.cache import Cache
from expost.runs.outputs import convert_outputs
from expost.runs.plan import PlannedRun
from expost.runs.worker import Job, JobResult, _code, _worker, run_job

# A run gets a fresh process when that costs at most this fraction of the run (see the docstring).
FRESH_OVERHEAD = 0.05
# How often the parent tries again a run key that another build holds.
LOCK_POLL_S = 0.05


@dataclass(frozen=True)
class Task:
    run: PlannedRun
    script: str
    outputs: dict  # name -> "series" | "scalar"
    cache_root: str
    log: str
    timeout: float | None = None  # seconds

    @property
    def runs(self) -> tuple:
        return (self.run,)

    @property
    def logs(self) -> tuple:
        return (self.log,)

    def job(self) -> Job:
        return Job(self.script, self.run.source_hash, self.run.cfg, (self.run.seed,), timeout=self.timeout)


@dataclass(frozen=True)
class BatchTask:
    """Seeds of one config run by the experiment's run_batch(cfg, seeds) in one vectorised call."""

    runs: tuple  # PlannedRun, same config, ascending seeds
    script: str
    outputs: dict
    cache_root: str
    logs: tuple
    timeout: float | None = None  # seconds per seed: the block may take len(runs) times as long

    def job(self) -> Job:
        return Job(self.script, self.runs[0].source_hash, self.runs[0].cfg, tuple(r.seed for r in self.runs), True,
                   self.timeout * len(self.runs) if self.timeout else None)


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
    changed: tuple = ()  # global state the run changed (its worker was replaced afterwards)

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


def _fail_log(log: Path, run: PlannedRun, output: str, tb: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# {run.title}\n# config: {run.cfg}\n\n{output}\n{tb}")


def _store(cache: Cache, run: PlannedRun, returned, outputs: dict, wall: float, log: Path,
           printed: str | None = None, artifacts: dict | None = None) -> Outcome:
    scalars, series, nonfinite = convert_outputs(returned, outputs)
    meta = {"experiment": run.experiment, "config": run.cfg, "point": run.point_dict, "seed": run.seed,
            "scalars": scalars, "series_len": {k: int(v.size) for k, v in series.items()},
            "nonfinite": nonfinite, "wall_s": round(wall, 4), "source_hash": run.source_hash}
    cache.write(run.key, meta, series, printed, artifacts)
    log.unlink(missing_ok=True)
    return Outcome(run, True, wall, nonfinite=nonfinite)


def _finish(task, result: JobResult) -> list[Outcome]:
    """The parent's part of a task: validate each seed's outputs, cache them, log the failures."""
    runs, logs = task.runs, task.logs
    if result.crashed:
        return [Outcome(r, False, result.wall, result.error) for r in runs]
    if result.error is None and isinstance(task, BatchTask):
        outs = result.outputs
        if not isinstance(outs, list) or len(outs) != len(runs):
            result.error = (f"OutputError: run_batch returned {type(outs).__name__} of length "
                            f"{len(outs) if hasattr(outs, '__len__') else '?'}; it must return a list with one "
                            f"output dict per seed ({len(runs)})")
    if result.error is not None:
        for r, log in zip(runs, logs):
            try:
                _fail_log(Path(log), r, result.output, result.traceback)
            except OSError as e:
                if not disk_problem(e):
                    raise
                raise DiskError.writing(e, Path(log).parent, "a failed run's log") from None
        return [Outcome(r, False, result.wall, result.error, log, changed=result.changed) for r, log in zip(runs, logs)]
    cache = Cache(Path(task.cache_root))
    wall = result.wall / len(runs)
    printed = result.output or ""
    if len(runs) > 1:  # one run_batch call printed this for its whole block
        printed = f"# printed by run_batch for seeds {runs[0].seed}-{runs[-1].seed} together\n{printed}"
    outcomes = []
    for r, returned, log in zip(runs, result.outputs, logs):
        try:  # each seed is validated and cached on its own
            outcomes.append(_store(cache, r, returned, task.outputs, wall, Path(log), printed, getattr(result, "artifacts", None)))
        except OSError as e:
            if disk_problem(e):  # the disk, not the run: stop here, with every run cached so far
                raise DiskError.writing(e, cache.root, "the cache") from None
            _fail_log(Path(log), r, result.output, traceback.format_exc())
            outcomes.append(Outcome(r, False, wall, f"{type(e).__name__}: {e}", log))
        except Exception as e:
            _fail_log(Path(log), r, result.output, traceback.format_exc())
            outcomes.append(Outcome(r, False, wall, f"{type(e).__name__}: {e}", log))
        outcomes[-1].changed = result.changed
    return outcomes


# ------------------------------------------------------------------------------ a run (worker)


@dataclass(eq=False)
class _Worker:
    proc: object
    conn: object
    started: float
    queue: deque = field(default_factory=deque)  # (handle, job) sent to it and not answered yet
    last: bool = False  # a fresh worker: exits after its job
    runs: int = 0
    since: float = 0.0  # when the job at the head of its queue started (about: when the one before ended)
    timed_out: float | None = None  # it was ended because its job ran longer than this many seconds

    def deadline(self) -> float | None:
        timeout = self.queue[0][1].timeout if self.queue else None
        return self.since + timeout if timeout else None

    def end(self) -> None:
        """Kill it and every process its runs started (its process group)."""
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.kill()


def start_method(device: str) -> str:
    if "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    torch = sys.modules.get("torch")
    if device.startswith("cpu") or torch is None:
        return "fork"
    return "spawn" if torch.cuda.is_initialized() else "fork"


class LocalPool:
    """Up to `size` worker processes, forked (or spawned) on demand and replaced as the docstring
    of this module says. A reused worker holds up to PREFETCH jobs (the next one waits in its pipe,
    so a worker never waits while the parent writes the cache); a fresh worker holds one."""

    PREFETCH = 2

    def __init__(self, size: int, device: str = "cpu", threads: int | None = None):
        method = start_method(device)
        self.ctx = multiprocessing.get_context(method)
        self.forks = method == "fork"
        self.size, self.threads = size, threads
        self.capacity = self.PREFETCH * size  # jobs the caller may have out at once
        self.workers: list[_Worker] = []  # live, not retired
        self.pending: deque = deque()  # (handle, job) waiting for a worker
        self.procs: list = []  # every process started and not yet reaped
        self.start_cost: float | None = None
        self.progress: list = []  # (handle, values) a running generator reported since the last look
        self.timing: dict = {}  # script -> {"fresh": s, "reused": s}: load + run of its latest runs

    def _fresh(self, job: Job) -> bool:
        t = self.timing.get(job.script, {})
        if not self.forks or self.start_cost is None or "fresh" not in t or "reused" not in t:
            return False
        return self.start_cost + max(0.0, t["fresh"] - t["reused"]) <= FRESH_OVERHEAD * t["reused"]

    def submit(self, handle, job: Job) -> None:
        _code(job)  # compiled here once: forks inherit it
        self.pending.append((handle, job))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.pending:
            handle, job = self.pending[0]
            worker = self._worker_for(job)
            if worker is None:
                return  # every slot is taken: wait() dispatches again as results come in
            self.pending.popleft()
            try:
                worker.conn.send((job, worker.last))
                if not worker.queue:
                    worker.since = time.monotonic()
                worker.queue.append((handle, job))
            except OSError:  # it died
                self.pending.appendleft((handle, job))
                if worker.queue:
                    return  # wait() reports the job it died running
                self._retire(worker)

    def _worker_for(self, job: Job) -> _Worker | None:
        if self._fresh(job):
            if len(self.workers) >= self.size:
                idle = next((w for w in self.workers if not w.queue), None)
                if idle is None:
                    return None
                self._retire(idle)
            worker = self._start()
            worker.last = True
            return worker
        reusable = [w for w in self.workers if not w.last]
        idle = next((w for w in reusable if not w.queue), None)
        if idle is not None:
            return idle
        if len(self.workers) < self.size:
            return self._start()
        shortest = min(reusable, key=lambda w: len(w.queue), default=None)
        return shortest if shortest is not None and len(shortest.queue) < self.PREFETCH else None

    def _start(self) -> _Worker:
        parent_end, child_end = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child_end, self.threads, "torch" in sys.modules, os.getpid()),
                                name="expost-worker")
        self.procs = [p for p in self.procs if p.exitcode is None]  # reap those that exited
        # SIGINT stays blocked until the worker has set it to be ignored: a Ctrl-C during the fork
        # never shows a traceback from a half-started worker.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            worker = _Worker(proc, parent_end, time.monotonic())
            proc.start()
            self.procs.append(proc)  # before a Ctrl-C can interrupt: kill() must find it
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_end.close()
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        """Out of service: told to stop if idle (it exits by itself otherwise); jobs it had not
        started go back to the front of the queue."""
        if worker in self.workers:
            self.workers.remove(worker)
        if not worker.queue:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        worker.conn.close()
        self.pending.extendleft(reversed(worker.queue))
        worker.queue.clear()

    def wait(self, timeout: float | None) -> list:
        """(handle, JobResult) for each job that finished within `timeout` seconds."""
        objs = {}
        for w in self.workers:
            if w.queue:
                objs[w.conn] = objs[w.proc.sentinel] = w
        if not objs:
            self._dispatch()
            return []
        done = []
        deadlines = [d for d in (w.deadline() for w in self.workers) if d is not None]
        if deadlines:
            left = max(0.0, min(deadlines) - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        ready = multiprocessing.connection.wait(list(objs), timeout)
        for w in dict.fromkeys(objs[o] for o in ready):
            done += self._collect(w, exited=w.proc.sentinel in ready)
        now = time.monotonic()
        for w in list(self.workers):
            deadline = w.deadline()
            if deadline is not None and now >= deadline and w.queue and not w.conn.poll():
                w.timed_out = w.queue[0][1].timeout
                w.end()
                done += self._collect(w, exited=True)
        self._dispatch()
        return done

    def _collect(self, w: _Worker, exited: bool) -> list:
        done = []
        try:
            while w.queue and w.conn.poll():
                msg = w.conn.recv()
                if isinstance(msg, float):  # ready
                    self.start_cost = msg - w.started
                    continue
                if isinstance(msg, tuple) and msg[:1] == ("progress",):  # the running job's latest values
                    self.progress.append((w.queue[0][0], msg[1]))
                    continue
                handle, job = w.queue.popleft()
                w.since = time.monotonic()
                done.append((handle, msg))
                w.runs += 1
                if msg.error is None:
                    self.timing.setdefault(job.script, {})["fresh" if w.runs == 1 else "reused"] = msg.load + msg.wall
                if w.last or msg.changed:  # it exits by itself
                    self._retire(w)
                    return done
            if not w.queue or not exited:
                return done  # idle, or still running
        except (EOFError, OSError):
            pass
        # it died running the job at the head of its queue (or was ended for running too long)
        w.proc.join(1)
        if w.proc.exitcode is None:
            w.end()
            w.proc.join(1)
        code = w.proc.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 and -code in signal.valid_signals()
               else f"exit status {code}")
        handle, _job = w.queue.popleft()
        if w.timed_out:
            error = (f"timed out: still running after {w.timed_out:g} s, so it was stopped with the processes it "
                     "started (raise TIMEOUT in the experiment or pass --timeout)")
        else:
            error = f"the worker process died while running it ({how}: a crash in the experiment, os._exit, or out of memory)"
        done.append((handle, JobResult(None, error, crashed=True)))
        self._retire(w)
        return done

    def drain(self) -> list:
        """After kill(): results the workers had sent before they died."""
        done = []
        for w in self.workers:
            with contextlib.suppress(EOFError, OSError):
                while w.queue and w.conn.poll():
                    msg = w.conn.recv()
                    if isinstance(msg, JobResult):
                        done.append((w.queue.popleft()[0], msg))
        return done

    def kill(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)  # the worker and the processes its run started
            with contextlib.suppress(Exception):
                p.kill()
        for p in self.procs:
            p.join(2)

    def close(self) -> None:
        for w in list(self.workers):
            if w.queue:  # only after an error: nothing waits for it
                w.end()
            self._retire(w)
        self.pending.clear()
        for p in self.procs:
            p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join(1)
        self.procs = []


class FuturesPool:
    """execute() over any concurrent.futures executor (runs/cluster.py's DaskExecutor, ...): jobs go
    to its workers as run_job calls and come back as JobResults. Isolating runs from each other is
    then that executor's business. Futures report to a queue as they finish, so a wait costs the
    same with ten runs out as with ten thousand."""

    def __init__(self, executor: Executor, capacity: int):
        self.executor = executor
        self._capacity = capacity
        self.futures: dict = {}
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.progress: list = []  # generator runs report on local workers only: stays empty

    @property
    def capacity(self) -> int:
        """Jobs out at once: the executor's own `capacity` (a cluster's size can change) if it has one."""
        return getattr(self.executor, "capacity", None) or self._capacity

    def submit(self, handle, job: Job) -> None:
        future = self.executor.submit(run_job, job)
        self.futures[future] = handle
        future.add_done_callback(self.finished.put)

    def wait(self, timeout: float | None) -> list:
        try:
            done = [self.finished.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                done.append(self.finished.get_nowait())
        return [(self.futures.pop(f), self._result(f)) for f in done if f in self.futures]

    def drain(self) -> list:
        done = [f for f in self.futures if f.done() and not f.cancelled()]  # cancelled: never ran
        return [(self.futures.pop(f), self._result(f)) for f in done]

    @staticmethod
    def _result(f) -> JobResult:
        try:
            return f.result()
        except ExpostError:
            raise  # the executor's own failure (runs/cluster.py): one clear error, not a failed run each
        except Exception as e:
            return JobResult(None, f"the executor lost it ({type(e).__name__}: {e})", crashed=True)

    def kill(self) -> None:
        for f in self.futures:
            f.cancel()

    def close(self) -> None:
        pass  # the executor is the caller's


# ------------------------------------------------------------------------------ the parent's loop


class _KeyLocks:
    """Run-key locks of one cache folder, held by the parent from before a run goes out until its
    result is written: two builds of one workspace never run a key twice. A key is a one-byte POSIX
    record lock (fcntl) in locks/run-keys.lock at an offset taken from the key, so taking one is a
    single system call and creates no file (a file per key cost more than a tiny run on a slow
    disk). Record locks belong to the process: forked workers do not inherit them, the kernel
    releases them when the process dies, and closing any descriptor of the file releases them all,
    so a process shares one instance per file (`open`), which also excludes its own callers. Never
    waits: a key held elsewhere is tried again later."""

    _open: dict = {}  # lock file -> the instance this process shares
    _mutex = threading.Lock()

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self.held: set[int] = set()
        self.users = 0

    @classmethod
    def open(cls, cache: Cache) -> _KeyLocks:
        path = cache.paths.lock("run-keys")  # posts lock "post-NAME"; keys are hex
        with cls._mutex:
            locks = cls._open.get(path) or cls._open.setdefault(path, cls(path))
            locks.users += 1
            return locks

    @staticmethod
    def _offset(key: str) -> int:
        return int(key[:15], 16)  # 60 bits of the key's hash: two keys share a byte by chance only

    def take(self, key: str) -> bool:
        at = self._offset(key)
        with self._mutex:
            if at in self.held:  # record locks do not exclude their own process: this does
                return False
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, at)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EAGAIN):  # another process holds it
                    return False
                raise
            self.held.add(at)
            return True

    def release(self, key: str) -> None:
        at = self._offset(key)
        with self._mutex:
            self.held.discard(at)
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, at)

    def close(self) -> None:
        with self._mutex:
            self.users -= 1
            if self.users == 0:
                del self._open[self.path]
                os.close(self.fd)


def execute(tasks: list, jobs: int, on_done: Callable[[Outcome], None] | None = None,
            device: str = "cpu", executor: Executor | None = None,
            on_submit: Callable[[tuple], None] | None = None,
            on_progress: Callable[[PlannedRun, dict], None] | None = None) -> list[Outcome]:
    """Run tasks (Task or BatchTask) in worker processes, `jobs` at a time (or through `executor`, a
    concurrent.futures executor); one Outcome per run, each cached as its result arrives.
    `on_submit(runs)` is told each task's runs as they go out to a worker (running, or next in its
    queue)."""
    outcomes: list[Outcome] = []

    def emit(new: list[Outcome]) -> None:
        for outcome in new:
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)

    if not tasks:
        return outcomes
    width = max(1, min(jobs, len(tasks)))
    # One torch thread per worker whenever the user asked for parallel work (-j > 1), even if
    # fewer tasks than workers remain: the other cores are theirs to share.
    pool = (FuturesPool(executor, LocalPool.PREFETCH * width) if executor is not None
            else LocalPool(width, device, 1 if jobs > 1 else None))
    todo = deque(tasks)
    out: dict = {}  # handle -> task
    handles = iter(range(len(tasks)))
    locks: dict[str, _KeyLocks] = {}  # cache root -> its key locks

    def finish(handle, result) -> None:
        task = out.pop(handle)
        try:
            emit(_finish(task, result))
        finally:
            locks[task.cache_root].release(task.runs[0].key)

    try:
        while todo or out:
            held_elsewhere = []
            while todo and len(out) < pool.capacity:
                task = todo.popleft()
                cache = Cache(Path(task.cache_root))
                if task.cache_root not in locks:
                    locks[task.cache_root] = _KeyLocks.open(cache)
                key = task.runs[0].key
                if not locks[task.cache_root].take(key):  # another build is running it
                    held_elsewhere.append(task)
                    continue
                if all(cache.has(r.key) for r in task.runs):  # ... and has cached it
                    locks[task.cache_root].release(key)
                    emit([Outcome(r, True, reused=True) for r in task.runs])
                    continue
                handle = next(handles)
                out[handle] = task
                pool.submit(handle, task.job())
                if on_submit:
                    on_submit(task.runs)
            todo.extendleft(reversed(held_elsewhere))
            if not out:
                if todo:
                    time.sleep(LOCK_POLL_S)
                continue
            for handle, result in pool.wait(LOCK_POLL_S if held_elsewhere else None):
                finish(handle, result)
            for handle, values in pool.progress:
                if on_progress and handle in out:
                    on_progress(out[handle].runs[0], values)
            pool.progress.clear()
    except BaseException:
        pool.kill()
        with contextlib.suppress(BaseException):  # what arrived before a Ctrl-C is cached too
            for handle, result in pool.drain():
                finish(handle, result)
        raise
    finally:
        pool.close()
        for key_locks in locks.values():
            key_locks.close()
    return outcomes
