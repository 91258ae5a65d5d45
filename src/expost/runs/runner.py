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
takes any concurrent.futures executor. The parent validates each result (`convert_outputs`) and
writes it (`Cache.write`) as it arrives. It holds each run key's lock from before the run goes out
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
import importlib.util
import io
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from expost import files
from expost.runs.cache import Cache
from expost.runs.plan import PlannedRun

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# A run gets a fresh process when that costs at most this fraction of the run (see the docstring).
FRESH_OVERHEAD = 0.05
# How often the parent tries again a run key that another build holds.
LOCK_POLL_S = 0.05


@dataclass(frozen=True)
class Job:
    """What a worker needs to execute a task: no cache folder, no log path."""

    script: str
    source_hash: str
    cfg: dict
    seeds: tuple
    batched: bool = False


@dataclass
class JobResult:
    """What a worker sends back. The parent validates `outputs` (one entry per seed; the run's return
    value with tensors as numpy arrays) and caches them."""

    outputs: object = None
    error: str | None = None
    traceback: str = ""
    output: str = ""  # what the run printed (stdout and stderr)
    wall: float = 0.0  # the run itself
    load: float = 0.0  # loading the experiment before it
    crashed: bool = False  # the worker died: no output, no log
    changed: tuple = ()  # global state the run changed (local workers): its worker was replaced


@dataclass(frozen=True)
class Task:
    run: PlannedRun
    script: str
    outputs: dict  # name -> "series" | "scalar"
    cache_root: str
    log: str

    @property
    def runs(self) -> tuple:
        return (self.run,)

    @property
    def logs(self) -> tuple:
        return (self.log,)

    def job(self) -> Job:
        return Job(self.script, self.run.source_hash, self.run.cfg, (self.run.seed,))


@dataclass(frozen=True)
class BatchTask:
    """Seeds of one config run by the experiment's run_batch(cfg, seeds) in one vectorised call."""

    runs: tuple  # PlannedRun, same config, ascending seeds
    script: str
    outputs: dict
    cache_root: str
    logs: tuple

    def job(self) -> Job:
        return Job(self.script, self.runs[0].source_hash, self.runs[0].cfg, tuple(r.seed for r in self.runs), True)


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


# ------------------------------------------------------------------------------ validation (parent)


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


def _fail_log(log: Path, run: PlannedRun, output: str, tb: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# {run.experiment} [{run.label}] seed {run.seed}\n# config: {run.cfg}\n\n{output}\n{tb}")


def _store(cache: Cache, run: PlannedRun, returned, outputs: dict, wall: float, log: Path) -> Outcome:
    scalars, series, nonfinite = convert_outputs(returned, outputs)
    meta = {"experiment": run.experiment, "config": run.cfg, "point": run.point_dict, "seed": run.seed,
            "scalars": scalars, "series_len": {k: int(v.size) for k, v in series.items()},
            "nonfinite": nonfinite, "wall_s": round(wall, 4), "source_hash": run.source_hash}
    cache.write(run.key, meta, series)
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
            _fail_log(Path(log), r, result.output, result.traceback)
        return [Outcome(r, False, result.wall, result.error, log, changed=result.changed) for r, log in zip(runs, logs)]
    cache = Cache(Path(task.cache_root))
    wall = result.wall / len(runs)
    outcomes = []
    for r, returned, log in zip(runs, result.outputs, logs):
        try:  # each seed is validated and cached on its own
            outcomes.append(_store(cache, r, returned, task.outputs, wall, Path(log)))
        except Exception as e:
            _fail_log(Path(log), r, result.output, traceback.format_exc())
            outcomes.append(Outcome(r, False, wall, f"{type(e).__name__}: {e}", log))
        outcomes[-1].changed = result.changed
    return outcomes


# ------------------------------------------------------------------------------ a run (worker)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run could touch: random, numpy, torch and CUDA."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        if _accelerators(torch):
            torch.manual_seed(seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed)
        else:
            # All that torch.manual_seed seeds where torch has no accelerator, without the cost of its
            # lazy CUDA seeding (traceback.format_stack() on every call: 0.1-0.5 ms, most of a tiny run).
            torch.random.default_generator.manual_seed(seed)


_ACCELERATORS: list = []  # memo of _accelerators()


def _accelerators(torch) -> bool:
    """Whether torch has a device besides the CPU whose generator torch.manual_seed also seeds
    (the devices torch.random.manual_seed knows, and a registered custom one)."""
    if not _ACCELERATORS:
        try:
            found = (torch.cuda.is_available() or torch.backends.mps.is_available()
                     or any(getattr(torch, m).is_available() for m in ("xpu", "mtia") if hasattr(torch, m))
                     or hasattr(torch, torch._C._get_privateuse1_backend_name()))
        except Exception:
            found = True
        _ACCELERATORS.append(bool(found))
    return _ACCELERATORS[0]


def portable(returned):
    """A run's return value as a worker sends it back: tensors become numpy arrays (the parent never
    receives a CUDA tensor, nor needs torch) and lists become float arrays (what validation makes
    of them anyway, and cheaper to send); anything else as it is. The parent validates it."""
    if not isinstance(returned, dict):
        return returned
    out = {}
    for name, value in returned.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        elif isinstance(value, (list, tuple)):
            if value and hasattr(value[0], "detach"):
                value = [v.detach().cpu().numpy() if hasattr(v, "detach") else v for v in value]
            value = to_numpy(value)
        out[name] = value
    return out


_CODE: dict = {}  # script -> (stat signature, code object); the parent compiles before forking workers


def _code(job: Job):
    """The script's code object, compiled again when the file changes (told by its stat signature:
    the source hash does not cover comments, claims or plot functions, and the module body must
    still be the file's)."""
    signature = files.signature(job.script)
    cached = _CODE.get(job.script)
    if cached is None or cached[0] != signature:
        code = compile(Path(job.script).read_bytes(), job.script, "exec", dont_inherit=True)
        cached = _CODE[job.script] = (signature, code)
    return cached[1]


_SCANNED: dict = {}  # folder prefix -> module names already looked at by _forget_local
_LOCAL: dict = {}  # folder prefix -> those among them loaded from the folder


def _forget_local(prefix: str) -> None:
    """Drop the modules loaded from an experiment's folder (helpers such as _lowrank.py, earlier
    loads of the experiment) from sys.modules, so that this run imports them afresh. Only modules
    new since the last call are looked at: a full scan of sys.modules would cost more than a tiny run."""
    scanned = _SCANNED.setdefault(prefix, set())
    local = _LOCAL.setdefault(prefix, set())
    for name in sys.modules.keys() - scanned:
        scanned.add(name)
        file = getattr(sys.modules.get(name), "__dict__", {}).get("__file__")  # never getattr on a lazy module
        if isinstance(file, str) and file.startswith(prefix):
            local.add(name)
    for name in local:
        sys.modules.pop(name, None)
        scanned.discard(name)
    local.clear()


_FOLDERS: dict = {}  # script -> its folder, resolved as module files are


def _folder(job: Job) -> str:
    if job.script not in _FOLDERS:
        _FOLDERS[job.script] = os.path.dirname(os.path.realpath(job.script))
    return _FOLDERS[job.script]


def _load(job: Job):
    """The experiment as a new module: its module body executed again, helpers imported again."""
    folder = _folder(job)
    _forget_local(folder + os.sep)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python experiments/x.py` (and spec.import_script) does
    name = f"expost_run_{Path(job.script).stem}_{job.source_hash[:10]}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, job.script))
    sys.modules[name] = module
    exec(_code(job), module.__dict__)
    return module


def run_job(job: Job) -> JobResult:
    """Execute a job in this process and return what it produced: a worker's whole part. Never
    raises, never touches the cache. SystemExit and KeyboardInterrupt raised by the experiment are
    its failure like any exception (workers ignore Ctrl-C, so a KeyboardInterrupt here is the run's)."""
    buf = io.StringIO()
    where = "importing the script"
    t0 = t1 = time.perf_counter()
    wall = 0.0
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            module = _load(job)
            seed_everything(job.seeds[0])
            where = "run_batch()" if job.batched else "run()"
            t1 = time.perf_counter()
            try:
                if job.batched:
                    returned = module.run_batch(job.cfg, list(job.seeds))
                else:
                    returned = module.run(job.cfg, job.seeds[0])
            finally:
                wall = time.perf_counter() - t1
        if not job.batched:
            outputs = [portable(returned)]
        elif isinstance(returned, (list, tuple)):
            outputs = [portable(r) for r in returned]
        else:
            outputs = returned
        return JobResult(outputs, output=buf.getvalue(), wall=wall, load=t1 - t0)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        tb = traceback.format_exc()
    except BaseException as e:  # SystemExit, KeyboardInterrupt: the run's end, not the command's
        error = f"{where} raised {e!r}"
        tb = traceback.format_exc()
    return JobResult(None, error, tb, buf.getvalue(), wall, t1 - t0)


# ------------------------------------------------------------------------------ global state


_ABSENT = object()

# (name, getter): torch's process-global settings a run can change and a later run would feel.
_TORCH_STATE = (
    ("torch default dtype", lambda t: t.get_default_dtype()),
    ("torch default device", lambda t: str(t.get_default_device())),
    ("torch function modes", lambda t: t._C._len_torch_function_stack()),
    ("torch threads", lambda t: t.get_num_threads()),
    ("torch interop threads", lambda t: t.get_num_interop_threads()),
    ("torch grad mode", lambda t: t.is_grad_enabled()),
    ("torch inference mode", lambda t: t.is_inference_mode_enabled()),
    ("torch anomaly detection", lambda t: (t.is_anomaly_enabled(), t.is_anomaly_check_nan_enabled())),
    ("torch deterministic algorithms",
     lambda t: (t.are_deterministic_algorithms_enabled(), t.is_deterministic_algorithms_warn_only_enabled())),
    ("torch float32 matmul precision", lambda t: t.get_float32_matmul_precision()),
    ("torch autocast", lambda t: (t.is_autocast_enabled("cpu"), t.is_autocast_enabled("cuda"))),
    ("torch.backends flags", lambda t: tuple(_attr(t.backends, path) for path in _BACKEND_FLAGS)),
)
_BACKEND_FLAGS = tuple(tuple(path.split(".")) for path in (
    "fp32_precision", "cudnn.enabled", "cudnn.benchmark", "cudnn.deterministic", "cudnn.allow_tf32",
    "cudnn.fp32_precision", "cuda.matmul.allow_tf32", "cuda.matmul.fp32_precision",
    "cuda.matmul.allow_fp16_reduced_precision_reduction", "cuda.matmul.allow_bf16_reduced_precision_reduction",
    "mkldnn.enabled", "mkldnn.fp32_precision", "opt_einsum.enabled", "opt_einsum.strategy",
))


def _attr(obj, path: tuple):
    try:
        for part in path:
            obj = getattr(obj, part)
        return obj
    except Exception:
        return None


def fingerprint() -> dict:
    """The process-global state that a run can change and that a later run in the same process
    would feel, as comparable values (os.environ one entry per variable)."""
    try:
        cwd = os.getcwd()
    except OSError as e:
        cwd = f"({e.strerror})"
    fp = {"cwd": cwd, "sys.path": tuple(sys.path), "warnings filters": tuple(warnings.filters),
          "numpy error handling": tuple(sorted(np.geterr().items())), "python threads": threading.active_count(),
          "recursion limit": sys.getrecursionlimit()}
    fp.update((f"os.environ[{k!r}]", v) for k, v in os.environ.items())
    torch = sys.modules.get("torch")
    if torch is not None:
        for name, get in _TORCH_STATE:
            try:
                fp[name] = get(torch)
            except Exception:  # an older torch, or one still being imported
                pass
    return fp


def changed(base: dict, now: dict) -> list[str]:
    return sorted(k for k in base.keys() | now.keys() if base.get(k, _ABSENT) != now.get(k, _ABSENT))


class _ImportWatch:
    """A meta path finder, first in a local worker's sys.meta_path while a run executes. A library
    imported for the first time may set up global state (torch._dynamo adds TORCHINDUCTOR_CACHE_DIR
    to os.environ and a warnings filter): every process that imports it gets the same, so what
    changes while it loads is added to the worker's baseline instead of retiring the worker, unless
    the run had already changed that item itself. Modules from the experiment's folder are the
    experiment's own code: not watched."""

    def __init__(self, base: dict):
        self.base = base
        self.local = "\0"  # the experiment folder's prefix
        self.active = False
        self.depth = 0

    def find_spec(self, name, path=None, target=None):
        if not self.active or self.depth:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module") or (spec.origin or "").startswith(self.local):
            return spec
        spec.loader = _Watched(loader, self)
        return spec

    @contextlib.contextmanager
    def bracket(self):
        self.depth += 1
        before = fingerprint()
        try:
            yield
        finally:
            self.depth -= 1
            after = fingerprint()
            for k in changed(before, after):
                if before.get(k, _ABSENT) == self.base.get(k, _ABSENT):  # the run had not changed it
                    if k in after:
                        self.base[k] = after[k]
                    else:
                        self.base.pop(k, None)


class _Watched:
    """A library's loader, loading it inside a bracket of _ImportWatch (then put back in place)."""

    def __init__(self, loader, watch: _ImportWatch):
        self._loader, self._watch = loader, watch

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        with self._watch.bracket():  # extension modules initialise here
            return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with self._watch.bracket():
                self._loader.exec_module(module)
        finally:
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self._loader
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self._loader


# ------------------------------------------------------------------------------ local workers


def _worker(conn, threads: int | None, import_torch: bool) -> None:
    """A worker process: run jobs until told to stop, its fresh run is done, or a run changed its
    global state."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if threads:
        for var in THREAD_VARS:
            os.environ[var] = str(threads)
    if import_torch:  # spawned: be as warm as a fork
        importlib.import_module("torch")
    torch = sys.modules.get("torch")
    if torch is not None and threads:
        torch.set_num_threads(threads)
    base = fingerprint()
    watch = _ImportWatch(base)
    sys.meta_path.insert(0, watch)
    conn.send(time.monotonic())  # ready: the parent learns what starting a worker costs
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        job, last = msg
        t0 = time.perf_counter()
        folder = _folder(job)
        if folder not in sys.path:  # what every run of this experiment gets (spawned workers)
            sys.path.insert(0, folder)
            base["sys.path"] = tuple(sys.path)
        torch = sys.modules.get("torch")
        if torch is not None and str(job.cfg.get("device", "")).startswith("cuda") and not torch.cuda.is_initialized():
            # CUDA sets itself up once per process (CUDA_MODULE_LOADING in os.environ, ...): like a
            # library's import, that joins the baseline, and its cost counts as this job's loading.
            with contextlib.suppress(Exception), watch.bracket():
                torch.cuda.init()
        prepared = time.perf_counter() - t0
        watch.local = folder + os.sep
        watch.active = True
        try:
            result = run_job(job)
        finally:
            watch.active = False
        result.load += prepared
        result.changed = tuple(changed(base, fingerprint()))
        try:
            conn.send(result)
        except (OSError, EOFError):
            return
        except Exception as e:  # the result could not be pickled
            with contextlib.suppress(OSError, EOFError):
                conn.send(JobResult(None, f"{'run_batch' if job.batched else 'run'}() returned a value that cannot be "
                                          f"sent back from the worker ({type(e).__name__}: {e}); return numbers, "
                                          "lists, numpy arrays or tensors", "", result.output, result.wall,
                                    result.load, changed=result.changed))
        if last or result.changed:
            return


@dataclass(eq=False)
class _Worker:
    proc: object
    conn: object
    started: float
    queue: deque = field(default_factory=deque)  # (handle, job) sent to it and not answered yet
    last: bool = False  # a fresh worker: exits after its job
    runs: int = 0


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
        proc = self.ctx.Process(target=_worker, args=(child_end, self.threads, "torch" in sys.modules),
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
        ready = multiprocessing.connection.wait(list(objs), timeout)
        for w in dict.fromkeys(objs[o] for o in ready):
            done += self._collect(w, exited=w.proc.sentinel in ready)
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
                handle, job = w.queue.popleft()
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
        # it died running the job at the head of its queue
        w.proc.join(1)
        if w.proc.exitcode is None:
            w.proc.kill()
            w.proc.join(1)
        code = w.proc.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 and -code in signal.valid_signals()
               else f"exit status {code}")
        handle, _job = w.queue.popleft()
        done.append((handle, JobResult(None, f"the worker process died while running it ({how}: a crash in the "
                                             "experiment, os._exit, or out of memory)", crashed=True)))
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
            with contextlib.suppress(Exception):
                p.kill()
        for p in self.procs:
            p.join(2)

    def close(self) -> None:
        for w in list(self.workers):
            if w.queue:  # only after an error: nothing waits for it
                with contextlib.suppress(Exception):
                    w.proc.kill()
            self._retire(w)
        self.pending.clear()
        for p in self.procs:
            p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join(1)
        self.procs = []


class FuturesPool:
    """execute() over any concurrent.futures executor (a Dask client's get_executor(), ...): jobs go
    to its workers as run_job calls and come back as JobResults. Isolating runs from each other is
    then that executor's business."""

    def __init__(self, executor: Executor, capacity: int):
        self.executor = executor
        self.capacity = capacity
        self.futures: dict = {}

    def submit(self, handle, job: Job) -> None:
        self.futures[self.executor.submit(run_job, job)] = handle

    def wait(self, timeout: float | None) -> list:
        done, _ = wait_futures(self.futures, timeout, return_when=FIRST_COMPLETED)
        return [(self.futures.pop(f), self._result(f)) for f in done]

    def drain(self) -> list:
        return [(self.futures.pop(f), self._result(f)) for f in [f for f in self.futures if f.done()]]

    @staticmethod
    def _result(f) -> JobResult:
        try:
            return f.result()
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
            device: str = "cpu", executor: Executor | None = None) -> list[Outcome]:
    """Run tasks (Task or BatchTask) in worker processes, `jobs` at a time (or through `executor`, a
    concurrent.futures executor); one Outcome per run, each cached as its result arrives."""
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
            todo.extendleft(reversed(held_elsewhere))
            if not out:
                if todo:
                    time.sleep(LOCK_POLL_S)
                continue
            for handle, result in pool.wait(LOCK_POLL_S if held_elsewhere else None):
                finish(handle, result)
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
