"""Sweeps on a Dask cluster (issue 15), with real processes: a `dask scheduler` and two `dask worker`
processes on localhost, one thread each, in folders of their own without the workspace and with a
PYTHONPATH that does not hold it. The cache must hold what a local run of the same seeds holds;
a worker killed mid-sweep, Ctrl-C and a stopped scheduler must end as the issue says."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, make_workspace

distributed = pytest.importorskip("distributed")

from expost.errors import ExecutorError  # noqa: E402
from expost.runs import cluster  # noqa: E402

DASK = str(Path(sys.executable).parent / "dask")
WAIT_S = 120  # the most any condition below is waited for: a bound for a broken setup, not a timing claim

# Blocks until cfg["gate"]/release exists (seeds above `free`), after leaving a marker that names the
# process that runs it and that process's parent, the Dask worker.
GATE = '''"""A run that waits for a file: lets a test act while runs are in flight."""

import os
import random
import time

PARAMS = {"gate": "", "free": 0}
SEEDS = 4
OUTPUTS = {"value": "scalar: a number from the seed", "curve": "series: numbers from the seed"}


def run(cfg, seed):
    with open(os.path.join(cfg["gate"], f"started-{seed}-{os.getpid()}"), "w") as f:
        f.write(str(os.getppid()))
    while seed > cfg["free"] and not os.path.exists(os.path.join(cfg["gate"], "release")):
        time.sleep(0.01)
    rng = random.Random(seed)
    return {"value": rng.random(), "curve": [rng.random() for _ in range(5)]}
'''


def until(condition, what: str, proc=None):
    """Wait for a condition (never a fixed sleep); fail naming it if it never comes."""
    t0 = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the expost process ended before {what}: {proc.communicate()}")
        if time.monotonic() - t0 > WAIT_S:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def stop(proc) -> None:
    with_group = [lambda: os.killpg(proc.pid, signal.SIGTERM), lambda: os.killpg(proc.pid, signal.SIGKILL)]
    for end in with_group:
        try:
            end()
            proc.wait(15)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs = []
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        scheduler_file = root / "scheduler.json"
        self.procs.append(subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
             str(scheduler_file)], cwd=root, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=open(root / "scheduler.log", "w")))
        until(lambda: scheduler_file.exists() and json.loads(scheduler_file.read_text() or "{}").get("address"),
              "the scheduler's address")
        self.address = json.loads(scheduler_file.read_text())["address"]
        for name in ("a", "b"):
            home = root / f"worker-{name}"
            (home / "tmp").mkdir(parents=True)
            self.procs.append(subprocess.Popen(
                [DASK, "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                 "--local-directory", str(home)], cwd=home, env={**env, "TMPDIR": str(home / "tmp")},
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(home / "worker.log", "w")))
        self.client = distributed.Client(self.address, timeout=WAIT_S, set_as_default=False)

    def ready(self) -> "Cluster":
        """Both workers up (one killed by a test comes back: its nanny starts it again)."""
        self.client.wait_for_workers(2, timeout=WAIT_S)
        return self

    def close(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        yield c.ready()
    finally:
        c.close()


@pytest.fixture
def dask(dask_cluster):
    return dask_cluster.ready()


@pytest.fixture
def gate_ws(tmp_path):
    root = make_workspace(tmp_path / "ws", ["toy.py"])
    (root / "experiments" / "gate.py").write_text(GATE)
    (tmp_path / "gate").mkdir()
    return root


def expost_env(cache: Path) -> dict:
    return {**os.environ, "EXPOST_CACHE_DIR": str(cache)}


def expost(ws: Path, cache: Path, *args, check: int | None = 0):
    r = subprocess.run([sys.executable, "-m", "expost", *args], cwd=ws, env=expost_env(cache), capture_output=True,
                       text=True, timeout=600)
    if check is not None:
        assert r.returncode == check, r.stderr
    return r


def start(ws: Path, cache: Path, *args):
    return subprocess.Popen([sys.executable, "-m", "expost", *args], cwd=ws, env=expost_env(cache),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def entries(cache: Path) -> dict:
    """key -> (what result.json says of the run, bytes of each series): all but its wall time."""
    out = {}
    for meta_file in (cache / "runs").glob("*/*/result.json"):
        meta = json.loads(meta_file.read_text())
        kept = {k: meta[k] for k in ("experiment", "config", "seed", "scalars", "series_len", "nonfinite",
                                     "source_hash")}
        series = {p.name: p.read_bytes() for p in sorted(meta_file.parent.glob("*.npy"))}
        out[meta_file.parent.name] = (kept, series)
    return out


def markers(gate: Path) -> list[tuple[int, int, int]]:
    """(seed, pid, parent pid) of each run started."""
    found = []
    for p in gate.glob("started-*"):
        text = p.read_text()
        if text:
            _, seed, pid = p.name.split("-")
            found.append((int(seed), int(pid), int(text)))
    return sorted(found)


# ------------------------------------------------------------------------------ same results as local


def test_a_sweep_on_dask_caches_what_a_local_run_caches(dask, tmp_path):
    """toy.py; toy_batch.py, whose blocks of ten seeds are one task each; and leaky.py, whose helper
    module lives only in the workspace (workers get the sources with each task), and whose first
    run changes global state that the next runs must not see."""
    ws = make_workspace(tmp_path / "ws", ["toy.py", "toy_batch.py", "leaky.py", "_leaky_helper.py"])
    remote, local = tmp_path / "remote", tmp_path / "local"
    r = expost(ws, remote, "run", "-q", "--scheduler", dask.address, "--seeds", "3")
    assert "15 planned run(s): 0 cached, 15 ran (+14 more seeds of their batch blocks), 0 failed" in r.stderr, r.stderr
    expost(ws, local, "run", "-q", "-j", "2", "--seeds", "3")
    a, b = entries(remote), entries(local)
    assert a.keys() == b.keys() and len(a) == 29
    for key, (meta, series) in a.items():
        if meta["experiment"] == "leaky":  # where and by whom it ran differs; what it saw must not
            for k in ("pid", "cwd_len"):
                meta["scalars"].pop(k), b[key][0]["scalars"].pop(k)
            assert meta["scalars"]["calls"] == meta["scalars"]["helper_calls"] == 1  # loaded afresh
        assert (meta, series) == b[key], meta
    # a second command has everything cached and needs no cluster at all
    r = expost(ws, remote, "run", "-q", "--scheduler", "tcp://127.0.0.1:9", "--seeds", "3")
    assert "15 cached, 0 ran" in r.stderr


def test_a_run_failing_on_a_worker_reports_as_locally(dask, tmp_path):
    ws = make_workspace(tmp_path / "ws", ["toy.py"])
    remote, local = tmp_path / "remote", tmp_path / "local"
    a = expost(ws, remote, "run", "-q", "--scheduler", dask.address, "--set", "fail_seed=2", check=1)
    b = expost(ws, local, "run", "-q", "--set", "fail_seed=2", check=1)
    # the same lines but the timing (in the order the runs ended, which no executor fixes)
    assert sorted(a.stderr.replace(str(remote), "CACHE").splitlines()[1:]) == \
        sorted(b.stderr.replace(str(local), "CACHE").splitlines()[1:])
    assert "toy [rate=0.5] seed 2: RuntimeError: seed 2 fails on purpose (log: " in a.stderr
    logs = sorted((remote / "logs").rglob("*.log"))
    assert [p.relative_to(remote) for p in logs] == [p.relative_to(local) for p in sorted((local / "logs").rglob("*.log"))]
    for log in logs:
        assert log.read_text() == (local / log.relative_to(remote)).read_text()
        assert 'File "' + str(ws / "experiments" / "toy.py") + '", line' in log.read_text()


# ------------------------------------------------------------------------------ faults


def test_a_worker_killed_mid_sweep_loses_nothing(dask, gate_ws, tmp_path):
    gate, remote, local = tmp_path / "gate", tmp_path / "remote", tmp_path / "local"
    proc = start(gate_ws, remote, "run", "gate", "-q", "--scheduler", dask.address, "--set", f"gate={gate}")
    until(lambda: len(markers(gate)) == 2, "a run in flight on each worker", proc)
    seed, _, worker_pid = markers(gate)[0]
    assert worker_pid in dask.client.run(os.getpid).values()  # the run's parent is that Dask worker
    os.kill(worker_pid, signal.SIGKILL)
    (gate / "release").touch()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "4 planned run(s): 0 cached, 4 ran, 0 failed" in err, err
    assert [m[0] for m in markers(gate)].count(seed) == 2  # the killed worker's run ran again elsewhere
    expost(gate_ws, local, "run", "gate", "-q", "--set", f"gate={gate}")
    assert entries(remote) == entries(local)


def test_ctrl_c_cancels_keeps_completed_runs_and_exits_130(dask, gate_ws, tmp_path):
    gate, remote = tmp_path / "gate", tmp_path / "remote"
    args = ["run", "gate", "-q", "--scheduler", dask.address, "--set", f"gate={gate}", "--set", "free=2"]
    proc = start(gate_ws, remote, *args)
    until(lambda: len(entries(remote)) == 2 and {m[0] for m in markers(gate)} == {1, 2, 3, 4},
          "seeds 1-2 cached and seeds 3-4 waiting", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted: completed runs are cached; run the same command again to finish."
    assert len(entries(remote)) == 2
    (gate / "release").touch()  # the runs still in flight end; their results are nobody's
    r = expost(gate_ws, remote, *args)
    assert "4 planned run(s): 2 cached, 2 ran, 0 failed" in r.stderr


def test_a_stopped_scheduler_gives_one_clear_error(tmp_path):
    ws = make_workspace(tmp_path / "ws", ["toy.py"])
    (ws / "expost.toml").write_text("[executor]\nconnect_timeout = 1\n")
    (tmp_path / "s").mkdir()
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(tmp_path / "s" / "scheduler.json")], cwd=tmp_path / "s",
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until(lambda: (tmp_path / "s" / "scheduler.json").exists() and (tmp_path / "s" / "scheduler.json").read_text(),
          "the scheduler's address")
    address = json.loads((tmp_path / "s" / "scheduler.json").read_text())["address"]
    stop(scheduler)
    r = expost(ws, tmp_path / "cache", "run", "-q", "--scheduler", address, check=1)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"--scheduler {address}: no Dask scheduler answered within 1 s" in r.stderr
    assert "start one with `dask scheduler`" in r.stderr
    assert not (tmp_path / "cache" / "runs").exists()


def test_a_cuda_run_with_no_gpu_worker_is_refused_before_it_waits_forever(dask, tmp_path):
    ws = make_workspace(tmp_path / "ws", [])
    (ws / "experiments" / "dev.py").write_text('PARAMS = {"device": "cpu"}\nSEEDS = 1\nOUTPUTS = {"x": "scalar: x"}\n\n\n'
                                               'def run(cfg, seed):\n    return {"x": 1.0}\n')
    r = expost(ws, tmp_path / "cache", "run", "-q", "--device", "cuda", "--scheduler", dask.address, check=1)
    assert "a run asks for cuda, but no worker offers a GPU" in r.stderr and "--resources GPU=1" in r.stderr


def test_the_local_cluster_of_executor_dask(tmp_path):
    ws = make_workspace(tmp_path / "ws", ["toy.py"])
    r = expost(ws, tmp_path / "dask", "run", "-q", "--executor", "dask", "-j", "1", "--seeds", "2")
    assert "4 planned run(s): 0 cached, 4 ran, 0 failed" in r.stderr
    expost(ws, tmp_path / "local", "run", "-q", "--seeds", "2")
    assert entries(tmp_path / "dask") == entries(tmp_path / "local")


# ------------------------------------------------------------------------------ the choice


def test_flags_override_the_executor_table(tmp_path):
    table = {"executor": {"cluster": "SLURMCluster", "jobs": 4, "options": {"cores": 8, "memory": "16GB"}}}
    assert cluster.choose(settings=table).cluster == "SLURMCluster"
    assert cluster.choose(settings=table).options == {"cores": 8, "memory": "16GB"}
    assert cluster.choose("local", settings=table).kind == "local"
    flagged = cluster.choose(scheduler="tcp://h:8786", settings=table)
    assert (flagged.kind, flagged.scheduler, flagged.cluster) == ("dask", "tcp://h:8786", None)
    assert cluster.choose().kind == "local"
    assert cluster.choose("dask").kind == "dask" and cluster.choose("dask").scheduler is None  # a LocalCluster
    assert cluster.choose(settings={"executor": {"scheduler": "tcp://h:1", "kind": "local"}}).kind == "local"
    with pytest.raises(ExecutorError, match="--executor local runs here"):
        cluster.choose("local", "tcp://h:8786")


@pytest.mark.parametrize("table, message", [
    ({"schedular": "tcp://h:1"}, r"\[executor\] schedular is not a field"),
    ({"scheduler": 8786}, r"\[executor\] scheduler = 8786 is not an address"),
    ({"cluster": "SlurmCluster"}, r"\[executor\] cluster = 'SlurmCluster' is not a cluster class.*SLURMCluster"),
    ({"scheduler": "tcp://h:1", "cluster": "SLURMCluster"}, "are both given"),
    ({"cluster": "SLURMCluster", "jobs": 0}, r"\[executor\] jobs = 0 is not a positive integer"),
    ({"cluster": "SLURMCluster", "options": 8}, r"\[executor\] options = 8 is not a table"),
    ({"jobs": 2}, r"\[executor\] jobs needs a cluster"),
    ({"kind": "slurm"}, r"\[executor\] kind = 'slurm' is not one of local, dask"),
    ({"connect_timeout": "5s"}, r"\[executor\] connect_timeout = '5s' is not a positive number"),
])
def test_a_bad_executor_table_is_refused_naming_the_field(tmp_path, table, message):
    ws = make_workspace(tmp_path / "ws", ["toy.py"])
    lines = ["[executor]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    (ws / "expost.toml").write_text("\n".join(lines) + "\n")
    r = expost(ws, tmp_path / "cache", "list", check=1)
    assert "expost.toml: " in r.stderr and "Traceback" not in r.stderr
    import re

    assert re.search(message, r.stderr), r.stderr


def test_executor_local_with_a_scheduler_is_a_usage_error(tmp_path):
    ws = make_workspace(tmp_path / "ws", ["toy.py"])
    r = expost(ws, tmp_path / "cache", "run", "--executor", "local", "--scheduler", "tcp://h:1", check=2)
    assert "--executor local runs here" in r.stderr


def test_a_worker_with_another_environment_refuses_the_job(tmp_path):
    from expost.freshness import env_fingerprint
    from expost.runs.remote import run_shipped, ship, sources
    from expost.runs.worker import Job

    script = tmp_path / "toy.py"
    shutil.copy(FIXTURES / "toy.py", script)
    job = Job(str(script), "0" * 64, {"rate": 0.5, "steps": 3, "fail_seed": 0, "nan_seed": 0}, (1,))
    env = {**env_fingerprint("cpu"), "torch": "1.0"}
    result = run_shipped(ship(job, sources(str(script)), env, "cpu"))
    assert result.crashed and "torch" in result.error and "1.0 on the driver" in result.error


def test_the_table_starts_a_jobqueue_cluster_with_its_options():
    pytest.importorskip("dask_jobqueue")
    choice = cluster.choose(settings={"executor": {"cluster": "SLURMCluster", "options": {
        "cores": 8, "processes": 8, "memory": "16GB", "walltime": "01:30:00",
        "scheduler_options": {"dashboard_address": ":0"}}}})
    started = cluster._start_cluster(choice, jobs=2)  # no jobs asked for: nothing is submitted
    try:
        script = started.job_script()
    finally:
        started.close()
    assert "#SBATCH -t 01:30:00" in script and "--nthreads 1" in script and "--nworkers 8" in script
    bad = cluster.choose(settings={"executor": {"cluster": "SLURMCluster", "options": {"corez": 8}}})
    with pytest.raises(ExecutorError, match=r"\[executor.options\] does not fit SLURMCluster"):
        cluster._start_cluster(bad, jobs=2)
