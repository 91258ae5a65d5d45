"""The worker's side of a run: load the experiment afresh, seed every RNG, call run/run_batch,
and send back what it returned, never touching the cache; and the fingerprint of the global
state a run can change, which retires a worker whose run changed it (see runs/runner.py)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expost import files
from expost.runs.outputs import to_numpy

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    """What a worker needs to execute a task: no cache folder, no log path."""

    script: str
    source_hash: str
    cfg: dict
    seeds: tuple
    batched: bool = False
    timeout: float | None = None  # seconds, for the whole job; the parent ends a job that runs longer


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
    artifacts: dict = field(default_factory=dict)  # relative path -> bytes the run wrote to EXPOST_ARTIFACTS


ARTIFACTS_ENV = "EXPOST_ARTIFACTS"  # the folder of a run's own files (checkpoints, samples), kept with it
MAX_ARTIFACT_BYTES = 1 << 30


@contextlib.contextmanager
def artifacts_folder(into: dict):
    """A fresh folder for the run's files, named by EXPOST_ARTIFACTS while it runs (os.environ is
    restored after, so the worker's fingerprint is unchanged); what it holds then is read into `into`
    and the folder removed. Over MAX_ARTIFACT_BYTES in all is the run's failure."""
    folder = tempfile.mkdtemp(prefix="expost-artifacts-")
    before = os.environ.get(ARTIFACTS_ENV)
    os.environ[ARTIFACTS_ENV] = folder
    try:
        yield folder
        total = 0
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
                if total > MAX_ARTIFACT_BYTES:
                    raise OSError(f"the run wrote over {MAX_ARTIFACT_BYTES >> 20} MiB into {ARTIFACTS_ENV}; keep "
                                  "fewer or smaller files there (expost stores them with the run)")
                into[path.relative_to(folder).as_posix()] = path.read_bytes()
    finally:
        if before is None:
            os.environ.pop(ARTIFACTS_ENV, None)
        else:
            os.environ[ARTIFACTS_ENV] = before
        shutil.rmtree(folder, ignore_errors=True)


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
            value = to_numpy(value, name)  # refuses strings, bools, ragged lists: naming the output
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


PROGRESS_S = 0.5  # a running generator's latest values go to the parent at most this often


def drive(steps, report=None) -> dict:
    """A `run` written as a generator: each `yield {"step": t, "loss": ...}` adds one value to each
    named series, and the dict it returns holds the final scalars; the outputs are both together.
    `report(values)` hears the latest yielded values, at most every PROGRESS_S seconds."""
    series: dict[str, list] = {}
    last = 0.0
    while True:
        try:
            values = next(steps)
        except StopIteration as stop:
            final = stop.value
            break
        if not isinstance(values, dict):
            raise TypeError(f"run() yielded {type(values).__name__}; yield a dict of this step's values, "
                            'e.g. yield {"step": t, "loss": loss.item()}')
        n = len(next(iter(series.values()), ()))
        for name, value in values.items():
            if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
                value = value.item()  # a 0-d tensor or numpy number: one value
            series.setdefault(name, [None] * n).append(value)
        for name, column in series.items():
            if name not in values:
                column.append(None)
        now = time.monotonic()
        if report is not None and now - last >= PROGRESS_S:
            last = now
            report({k: v for k, v in values.items() if isinstance(v, (int, float))})
    final = {} if final is None else final
    if not isinstance(final, dict):
        raise TypeError(f"run() (a generator) returned {type(final).__name__}; return a dict of the final "
                        "scalars (or nothing)")
    both = sorted(set(series) & set(final))
    if both:
        raise ValueError(f"{', '.join(both)}: both yielded at each step and returned at the end; yield a series "
                         "and return a scalar under different names")
    gaps = [k for k, col in series.items() if any(v is None for v in col)]
    if gaps:
        raise ValueError(f"{', '.join(gaps)}: missing from some of the yielded dicts; yield the same names every "
                         "time (log every k steps with one yield holding them all)")
    return {**series, **final}


def run_job(job: Job, report=None) -> JobResult:
    """Execute a job in this process and return what it produced: a worker's whole part. Never
    raises, never touches the cache. SystemExit and KeyboardInterrupt raised by the experiment are
    its failure like any exception (workers ignore Ctrl-C, so a KeyboardInterrupt here is the run's).
    A `run` that is a generator is driven to its end (`drive`), its latest values told to `report`."""
    buf = io.StringIO()
    where = "importing the script"
    t0 = t1 = time.perf_counter()
    wall = 0.0
    files: dict = {}
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), artifacts_folder(files):
            module = _load(job)
            seed_everything(job.seeds[0])
            where = "run_batch()" if job.batched else "run()"
            t1 = time.perf_counter()
            try:
                if job.batched:
                    returned = module.run_batch(job.cfg, list(job.seeds))
                else:
                    returned = module.run(job.cfg, job.seeds[0])
                    if inspect.isgenerator(returned):
                        returned = drive(returned, report)
            finally:
                wall = time.perf_counter() - t1
        if not job.batched:
            outputs = [portable(returned)]
        elif isinstance(returned, (list, tuple)):
            outputs = [portable(r) for r in returned]
        else:
            outputs = returned
        return JobResult(outputs, output=buf.getvalue(), wall=wall, load=t1 - t0, artifacts=files)
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


# ------------------------------------------------------------------------------ process hygiene

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> None:
    """Linux prctl(2); elsewhere nothing (the parent's kill() still ends its workers)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _own_group_that_dies_with(parent: int) -> None:
    """A worker is the leader of its own process group, which the runs' subprocesses join; it is
    told (SIGTERM) when its parent dies, even by kill -9, and then takes the whole group down; and
    it adopts its orphaned descendants, so that after a run it can end what the run left behind."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, lambda *_: _end_group())
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        _end_group()


def _end_group() -> None:
    end_descendants()
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os._exit(143)


def _children() -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
    return pids


def end_descendants() -> int:
    """Kill every process this one started that is still there (orphans are adopted by it, so
    killing its children until none are left ends them all); returns how many were ended."""
    ended = 0
    for _ in range(100):
        children = _children()
        if not children:
            break
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                ended += 1
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    return ended


def _worker(conn, threads: int | None, import_torch: bool, parent: int | None = None) -> None:
    """A worker process: run jobs until told to stop, its fresh run is done, or a run changed its
    global state."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if parent is not None:
        _own_group_that_dies_with(parent)
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

        def report(values, _conn=conn):  # a generator run's latest values, on the result's pipe
            with contextlib.suppress(Exception):
                _conn.send(("progress", values))

        try:
            result = run_job(job, report)
        finally:
            watch.active = False
        ended = end_descendants()  # what the run started and left running dies with it
        if ended:
            result.output += f"\n[expost: ended {ended} process(es) the run left running]\n"
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
