"""Where runs execute: local worker processes (the default) or a Dask cluster. The one place that
decides (`choose`: --executor/--scheduler over expost.toml's [executor] table) and that connects
(`opened`).

    [executor]                    # in expost.toml; every field optional
    scheduler = "tcp://10.0.0.5:8786"   # a running `dask scheduler` ...
    cluster = "SLURMCluster"      # ... or a cluster expost starts: dask_jobqueue's SLURMCluster,
                                  # PBSCluster, SGECluster, LSFCluster, ..., LocalCluster, SSHCluster,
                                  # or any "package.module.Class"
    jobs = 4                      # how many batch jobs (workers for other clusters) to scale it to
    connect_timeout = 5           # seconds to reach the scheduler
    kind = "dask"                 # "local" keeps the table but runs locally (--executor overrides)
    [executor.options]            # the cluster's keyword arguments
    cores = 8
    memory = "16GB"
    walltime = "01:00:00"

`--executor dask` without a scheduler or cluster uses dask's own `scheduler-address` setting
(DASK_SCHEDULER_ADDRESS) if set, else a LocalCluster of -j one-thread workers for the command.
The Dask executor ships each job with its sources (runs/remote.py); a run whose config asks for
cuda asks the cluster for a GPU (`resources={"GPU": 1}`: workers offer it with `--resources GPU=1`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import inspect
import logging
import shutil
import signal
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from expost.errors import ExecutorError

if TYPE_CHECKING:
    from expost.runs.worker import Job

KINDS = ("local", "dask")
FIELDS = ("kind", "scheduler", "cluster", "jobs", "connect_timeout", "options")
CLUSTERS = {  # short names: where the class lives
    **{name: "dask_jobqueue" for name in ("SLURMCluster", "PBSCluster", "SGECluster", "LSFCluster", "OARCluster",
                                          "MoabCluster", "HTCondorCluster")},
    "LocalCluster": "distributed", "SSHCluster": "distributed",
}
CONNECT_TIMEOUT = 5.0  # seconds
START_SCHEDULER = ("start one with `dask scheduler` (it prints its address, tcp://HOST:8786) and workers with "
                   "`dask worker tcp://HOST:8786 --nthreads 1`")
INSTALL = "pip install 'expost[dask]'"


@dataclass(frozen=True)
class ExecutorChoice:
    """Where runs execute. `origin` names where the choice came from, for messages."""

    kind: str = "local"
    scheduler: str | None = None
    cluster: str | None = None
    options: dict = field(default_factory=dict)
    jobs: int | None = None
    connect_timeout: float = CONNECT_TIMEOUT
    origin: str = "--executor"
    limit: int | None = None  # -j with a scheduler or cluster: at most this many runs out at once

    @property
    def dask(self) -> bool:
        return self.kind == "dask"


def _table_error(name: str, problem: str, fix: str) -> ExecutorError:
    return ExecutorError(f"expost.toml: [executor] {name} {problem}. Fix: {fix}")


def parse_table(table) -> ExecutorChoice | None:
    """expost.toml's [executor] table, validated (every error names the field); None if absent."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ExecutorError(f"expost.toml: executor = {table!r} is not a table. Fix: write an [executor] table "
                            'with scheduler = "tcp://HOST:8786" or cluster = "SLURMCluster"')
    unknown = sorted(set(table) - set(FIELDS))
    if unknown:
        raise _table_error(unknown[0], "is not a field", f"use {', '.join(FIELDS)}; a cluster's own arguments go "
                           "in [executor.options]")
    kind, scheduler, cluster = table.get("kind"), table.get("scheduler"), table.get("cluster")
    if kind is not None and kind not in KINDS:
        raise _table_error("kind", f"= {kind!r} is not one of {', '.join(KINDS)}", 'write kind = "dask"')
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise _table_error("scheduler", f"= {scheduler!r} is not an address", 'write scheduler = "tcp://HOST:8786"')
    if cluster is not None and (not isinstance(cluster, str) or (cluster not in CLUSTERS and "." not in cluster)):
        raise _table_error("cluster", f"= {cluster!r} is not a cluster class",
                           f"name one of {', '.join(CLUSTERS)} or give its full path (\"package.module.Class\")")
    if scheduler is not None and cluster is not None:
        raise _table_error("scheduler", "and cluster are both given", "keep one: a running scheduler's address, or "
                           "the cluster class expost starts")
    jobs, timeout, options = table.get("jobs"), table.get("connect_timeout", CONNECT_TIMEOUT), table.get("options", {})
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise _table_error("jobs", f"= {jobs!r} is not a positive integer", "write jobs = 4")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise _table_error("connect_timeout", f"= {timeout!r} is not a positive number of seconds",
                           "write connect_timeout = 5")
    if not isinstance(options, dict):
        raise _table_error("options", f"= {options!r} is not a table", "write the cluster's arguments under "
                           "[executor.options], one per line (cores = 8)")
    if cluster is None and (options or jobs is not None):
        raise _table_error("options" if options else "jobs", "needs a cluster", 'add cluster = "SLURMCluster" (or '
                           "another cluster class), or remove it")
    if kind is None:
        kind = "dask" if scheduler or cluster else "local"
    return ExecutorChoice(kind, scheduler, cluster, dict(options), jobs, float(timeout), "expost.toml: [executor]")


def choose(executor: str | None = None, scheduler: str | None = None, settings: dict | None = None) -> ExecutorChoice:
    """Where runs execute: --executor and --scheduler, over expost.toml's [executor] table, over local."""
    table = parse_table((settings or {}).get("executor"))
    if executor is not None and executor not in KINDS:
        raise ExecutorError(f"--executor {executor}: not one of {', '.join(KINDS)}")
    if scheduler is not None:
        if executor == "local":
            raise ExecutorError(f"--scheduler {scheduler} runs on a Dask cluster, but --executor local runs here: "
                                "drop one of them")
        if not scheduler.strip():
            raise ExecutorError("--scheduler: give the scheduler's address, tcp://HOST:8786")
        timeout = table.connect_timeout if table else CONNECT_TIMEOUT
        return ExecutorChoice("dask", scheduler.strip(), connect_timeout=timeout, origin="--scheduler")
    if executor == "local":
        return ExecutorChoice()
    if executor == "dask":
        if table is not None and (table.scheduler or table.cluster):
            return ExecutorChoice(**{**table.__dict__, "kind": "dask"})
        return ExecutorChoice("dask", connect_timeout=table.connect_timeout if table else CONNECT_TIMEOUT)
    return table if table is not None else ExecutorChoice()


# ------------------------------------------------------------------------------ connecting


def _distributed():
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise ExecutorError(f"running on Dask needs the distributed package, which is not installed here. Fix: "
                            f"{INSTALL} (the workers need it too), or run with --executor local") from None


def _cluster_class(choice: ExecutorChoice):
    name = choice.cluster
    module, _, attr = (CLUSTERS[name], "", name) if name in CLUSTERS else name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        fix = "pip install 'expost[dask]' (it brings dask-jobqueue)" if module == "dask_jobqueue" else \
            f"install the package that provides {module}"
        raise ExecutorError(f"{choice.origin} cluster = {name!r} needs {module}, which cannot be imported "
                            f"({e}). Fix: {fix}") from None
    except AttributeError:
        raise ExecutorError(f"{choice.origin} cluster = {name!r}: {module} has no {attr}. Fix: name a cluster "
                            "class that exists") from None


def _start_cluster(choice: ExecutorChoice, jobs: int):
    """The cluster a choice asks expost to start, scaled as asked."""
    distributed = _distributed()
    if choice.cluster is None:
        # Ctrl-C is the driver's to handle: the worker processes start with SIGINT ignored, which they
        # inherit (else each prints its own KeyboardInterrupt traceback); a Ctrl-C while they start is lost.
        main = threading.current_thread() is threading.main_thread()
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            return distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR)
        finally:
            if main:
                signal.signal(signal.SIGINT, handler)
    cls = _cluster_class(choice)
    try:
        cluster = cls(**choice.options)
    except (TypeError, ValueError) as e:  # an argument it does not take, or a value it cannot read
        first = str(e).split(". ")[0].rstrip(".:")  # dask-jobqueue adds a paragraph about its internals
        raise ExecutorError(f"expost.toml: [executor.options] does not fit {choice.cluster}: {first}. Fix: give only "
                            f"the arguments {choice.cluster} takes, with values it reads") from None
    if choice.jobs is not None:
        submit = getattr(getattr(cls, "job_cls", None), "submit_command", None)  # dask-jobqueue: sbatch, qsub, ...
        if submit and not shutil.which(submit.split()[0]):
            cluster.close()
            raise ExecutorError(f"{choice.origin} cluster = {choice.cluster!r} submits its jobs with `{submit}`, which "
                                "is not on PATH here. Fix: run expost on a machine that can submit jobs (the cluster's "
                                "login node), or name a running scheduler instead")
        if "jobs" in inspect.signature(cluster.scale).parameters:
            cluster.scale(jobs=choice.jobs)
        else:
            cluster.scale(choice.jobs)
    return cluster


def _naming(choice: ExecutorChoice, address: str | None) -> str:
    """Where the scheduler's address came from, as the user wrote it, for messages."""
    if address is None:
        return f"{choice.origin} cluster = {choice.cluster!r}" if choice.cluster else "--executor dask"
    if choice.scheduler is None:
        return f"DASK_SCHEDULER_ADDRESS={address}"
    if choice.origin == "--scheduler":
        return f"--scheduler {address}"
    return f'{choice.origin} scheduler = "{address}"'


def _connect(choice: ExecutorChoice, jobs: int):
    """(client, the cluster expost started or None, where: for messages)."""
    distributed = _distributed()
    cluster = None
    address = choice.scheduler
    if address is None and choice.cluster is None:
        import dask

        address = dask.config.get("scheduler-address", None)
    where = _naming(choice, address)
    if address is None:
        cluster = _start_cluster(choice, jobs)
    try:
        client = distributed.Client(cluster if cluster is not None else address, timeout=choice.connect_timeout,
                                    set_as_default=False)
    except (OSError, ValueError, TypeError) as e:
        if cluster is not None:
            cluster.close()
            raise ExecutorError(f"{where}: could not connect to the cluster expost started ({e})") from None
        raise ExecutorError(f"{where}: no Dask scheduler answered within {choice.connect_timeout:g} s ({e}). Fix: "
                            f"check the address, or {START_SCHEDULER}; or run with --executor local") from None
    if cluster is None:
        try:
            client.wait_for_workers(1, timeout=choice.connect_timeout)
        except TimeoutError:
            client.close()
            raise ExecutorError(f"{where}: the scheduler has no workers (none joined within "
                                f"{choice.connect_timeout:g} s). Fix: start some, `dask worker {address} --nthreads 1` "
                                "on each machine (each needs python, torch, expost and what the experiments "
                                "import)") from None
    return client, cluster, where


def _probe(device: str) -> dict:
    """Run on each worker: its environment fingerprint (expost must be importable there), with the
    CPU kernels its runs will use (pinned there as here, expost.numerics)."""
    from expost import numerics
    from expost.freshness import env_fingerprint

    numerics.pin()
    return env_fingerprint(device)


def _check_workers(client, device: str, where: str) -> None:
    """Every worker present has expost and the driver's environment (the runs' cache keys hold it)."""
    from expost.freshness import env_fingerprint

    here = env_fingerprint(device)
    try:
        found = client.run(_probe, device)
    except ImportError as e:
        raise ExecutorError(f"{where}: a Dask worker cannot import expost ({e}). Fix: install expost on every "
                            f"worker ({INSTALL}), with torch and what the experiments import") from None
    for worker, env in sorted(found.items()):
        diff = [f"{k} {env.get(k)} there, {v} here" for k, v in here.items() if env.get(k) != v]
        if diff:
            raise ExecutorError(f"{where}: worker {worker} runs another environment ({'; '.join(diff)}); its numbers "
                                "would be cached under this machine's key. Fix: install the same python, torch and "
                                "numpy versions on the workers")


@contextlib.contextmanager
def opened(choice: ExecutorChoice | None, jobs: int, device: str):
    """The executor for a choice: None for local processes (runs/runner.py's LocalPool), else a
    DaskExecutor, connected for the duration of the block. `jobs`: the size of the LocalCluster that
    `--executor dask` alone starts."""
    if choice is None or not choice.dask:
        yield None
        return
    _distributed()  # its import sets its loggers' levels
    quiet = {name: logging.getLogger(name) for name in ("distributed.client", "distributed.comm")}
    levels = {name: log.level for name, log in quiet.items()}
    for log in quiet.values():  # a lost scheduler is our one error line, not their tracebacks too
        log.setLevel(logging.CRITICAL)
    try:
        with _connected(choice, jobs, device) as executor:
            yield executor
    finally:
        for name, log in quiet.items():
            log.setLevel(levels[name])


@contextlib.contextmanager
def _connected(choice: ExecutorChoice, jobs: int, device: str):
    client, cluster, where = _connect(choice, jobs)
    executor = None
    try:
        _check_workers(client, device, where)
        implicit = cluster is not None and choice.cluster is None  # the LocalCluster of -j workers
        executor = DaskExecutor(client, device, None if implicit else choice.limit, where)
        yield executor
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)  # Ctrl-C or an error: nothing left queued
        raise
    finally:
        with contextlib.suppress(Exception):  # closing must not hide what happened
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


# ------------------------------------------------------------------------------ the executor


class DaskExecutor(Executor):
    """A concurrent.futures executor over a Dask client for runs/runner.py's FuturesPool: submit(run_job,
    job) ships the job with its sources to a worker (remote.run_shipped); a cuda run asks for a GPU."""

    def __init__(self, client, device: str, limit: int | None = None, where: str = "the Dask scheduler"):
        from expost.freshness import env_fingerprint

        self.client, self.device, self.limit, self.where = client, device, limit, where
        self.env = env_fingerprint(device)
        self.files: dict = {}  # script -> its shipped files, read once per command
        self.futures: dict = {}  # concurrent future -> Dask future, while not done
        self.lock = threading.Lock()
        self.gpu_checked = False
        self.size, self.sized_at = 64, float("-inf")

    @property
    def capacity(self) -> int:
        """Runs out at once: -j if given, else enough to keep every worker thread busy (the scheduler
        holds the rest, and a worker that dies takes only its own with it)."""
        if self.limit is not None:
            return self.limit
        now = time.monotonic()
        if now - self.sized_at > 1.0:  # asking the scheduler is a round trip: once a second at most
            self.sized_at = now
            with contextlib.suppress(Exception):
                threads = sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values())
                self.size = max(64, 2 * threads)
        return self.size

    def submit(self, fn, job: Job, /):
        from expost.runs.remote import run_shipped, ship, sources
        from expost.runs.worker import run_job

        if fn is not run_job:
            raise TypeError("DaskExecutor runs expost jobs only: submit(run_job, job)")
        if job.script not in self.files:
            self.files[job.script] = sources(job.script)
        gpu = str(job.cfg.get("device", "")).startswith("cuda")
        if gpu and not self.gpu_checked:
            self._check_gpu()
        future = self.client.submit(run_shipped, ship(job, self.files[job.script], self.env, self.device),
                                    pure=False, resources={"GPU": 1} if gpu else None)
        handle: cf.Future = cf.Future()
        with self.lock:
            self.futures[handle] = future
        future.add_done_callback(lambda f: self._settle(handle, f))
        return handle

    def _check_gpu(self) -> None:
        workers = self.client.scheduler_info()["workers"]
        if workers and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
            raise ExecutorError(f"{self.where}: a run asks for cuda, but no worker offers a GPU, so it would wait "
                                "forever. Fix: start the GPU workers with `dask worker ADDRESS --nthreads 1 "
                                "--resources GPU=1` (one per GPU, CUDA_VISIBLE_DEVICES set), or run with "
                                "--device cpu")
        self.gpu_checked = True

    def _settle(self, handle: cf.Future, future) -> None:
        """In Dask's callback thread: the Dask future's outcome onto the concurrent one."""
        with self.lock:
            self.futures.pop(handle, None)
        if handle.cancelled():
            return
        try:
            if future.status == "finished":
                handle.set_result(future.result())
            elif future.status == "cancelled":
                handle.set_exception(ExecutorError(f"{self.where}: the cluster dropped the runs still out (the "
                                                   "scheduler was lost or restarted). Completed runs are cached: run "
                                                   "the same command again once the scheduler is back"))
            else:
                handle.set_exception(future.exception())
        except cf.InvalidStateError:  # cancelled meanwhile (Ctrl-C)
            pass
        except Exception as e:  # fetching the result failed: the run is not done
            with contextlib.suppress(cf.InvalidStateError):
                handle.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self.lock:
            pending = list(self.futures.values())
            self.futures.clear()
        if cancel_futures and pending:
            with contextlib.suppress(Exception):
                self.client.cancel(pending)
