"""expost's benchmark suite (issue 6): each row against its baseline, side by side in one run.

    .venv/bin/python bench/run.py                  # every row, about 6-9 minutes on 2 cores
    .venv/bin/python bench/run.py --quick          # smoke version (fewer reps, smaller sizes), ~2 min
    .venv/bin/python bench/run.py --rows cold,batched --device cuda

Rows: noop (no-op `expost build` against `python -c pass` and a no-op `dvc repro`), cold (10
seeds of the rank-1 S-curve, 2 workers, against a hand-written loop), batched (the same with
`run_batch`), papermill (the same 10 seeds as one parameterised notebook per seed), overhead
(logging 1e4 series points plus the cache write, in-process), render (`expost render --force`
of a post with 6 figures x 10 seeds x 5000 steps), prose (a cold `expost build` after a
prose-only edit of a 10-seed S-curve post, figure and verdicts from the cache, against the same
with those caches removed), preview (`expost preview` driven in chromium: a template edit and
an experiment edit, from the file write to the page's DOM updated, against a cold `expost build`
of the same edit; and Ctrl-C during runs to the process exited), store (peak RSS of storing and plotting 1000 seeds x 1e5 steps),
isolated (the cold row's command against the same command of the last commit whose workers were
reused across runs), tiny (1000 runs of ~1 ms, 2 workers, against a serial loop
that saves each result with np.save), dask (40 runs of the S-curve at 5000 steps on two local
Dask workers, `--scheduler`, against the local pool with `-j 2`). Times are whole-process wall times, medians over repetitions
after a warm-up run; expost and its baseline alternate within each repetition so both see the same
machine load.

Every workspace and cache lives in one temp dir (EXPOST_CACHE_DIR is always set; dvc's site cache,
Jupyter's runtime dir and IPython's dir are pointed there too), removed at the end unless --keep.
Optional baselines (dvc, papermill, nbformat, ipykernel) come from bench/requirements.txt; a row
whose tool is missing is skipped with a note. A full run writes bench/results.md; --quick or
--rows write bench/results-partial.md unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
BIN = Path(PYTHON).parent
ROWS = ("noop", "cold", "batched", "papermill", "overhead", "render", "prose", "preview", "store", "isolated", "tiny",
        "dask")
SCURVES_WHERE = ["--where", "model=factored", "--where", "rank=1", "--where", "init_scale=0.001",
                 "--set", "steps=1000"]
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]
INSTALL_HINT = "install the baselines with `.venv/bin/pip install -r bench/requirements.txt`"


class BenchError(Exception):
    """A benchmarked or setup command failed: the row reports it and the others go on."""


@dataclass
class Row:
    name: str
    expost: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"
    load: str = ""
    notes: list = field(default_factory=list)
    reps: dict = field(default_factory=dict)  # label -> list of seconds (or other raw values)


# ------------------------------------------------------------------------------------ helpers


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def med(xs) -> float:
    return statistics.median(xs)


def fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def spread(xs, warmup=None) -> str:
    return (f"median {fmt_s(med(xs))}, min {fmt_s(min(xs))}, max {fmt_s(max(xs))}, n={len(xs)}"
            + (f" (warm-up {', '.join(fmt_s(w) for w in warmup)})" if warmup else ""))


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def run_cmd(cmd, env, cwd, timeout=900) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command to completion; (wall seconds of the whole process, result). Raises BenchError."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(map(str, cmd))}` ran over {timeout} s") from None
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"`{' '.join(map(str, cmd))}` (in {cwd}) exited {p.returncode}:\n"
                         f"{(p.stdout + p.stderr)[-3000:]}")
    return wall, p


def alternate(reps: int, warmup: int, runners: dict) -> dict:
    """Run each runner (a function returning seconds) warmup + reps times, alternating their order
    every repetition so that slow drifts in machine load hit all of them alike. Warm-ups dropped."""
    out = {k: [] for k in runners}
    names = list(runners)
    for i in range(warmup + reps):
        for name in (names if i % 2 == 0 else names[::-1]):
            t = runners[name](i)
            if i >= warmup:
                out[name].append(t)
            else:
                out.setdefault(f"{name} warm-up", []).append(t)
    return out


def tool(name: str) -> str | None:
    p = BIN / name
    return str(p) if p.exists() else shutil.which(name)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def has_top_level_def(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def strip_def(text: str, name: str) -> str:
    """The source without the top-level function `name` (decorators included)."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            del lines[start:node.end_lineno]
            break
    return "".join(lines)


def profile_lines(prof: Path, n: int = 10) -> list[str]:
    """Top expost functions by cumulative time, plus the totals for imports and subprocesses."""
    st = pstats.Stats(str(prof))
    rows, extra = [], {}
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():
        if "/expost/" in file and "/bench/" not in file:
            rows.append((ct, nc, f"{Path(file).name}:{line}({func})"))
        elif func == "_find_and_load":
            extra["imports (all `import` statements, cumulative)"] = (ct, nc)
        elif func == "run" and file.endswith("subprocess.py"):
            extra["subprocess.run (child processes, e.g. git)"] = (ct, nc)
        elif func == "<built-in method builtins.compile>":
            extra["builtins.compile (ast.parse of sources, stale .pyc)"] = (ct, nc)
        elif func == "savefig" and file.endswith("figure.py"):
            extra["matplotlib Figure.savefig"] = (ct, nc)
    total = max((ct for (_f, _l, fn), (_a, _b, _c, ct, _d) in st.stats.items() if fn == "<module>"), default=0)
    out = [f"process total under cProfile: {fmt_s(total)}"]
    out += [f"{fmt_s(ct):>8}  {calls:>4} call(s)  {what}" for what, (ct, calls) in sorted(extra.items(), key=lambda kv: -kv[1][0])]
    rows.sort(reverse=True)
    seen = set()
    for ct, nc, what in rows:
        if what in seen or "(wrapper)" in what or "(main)" in what or "(invoke)" in what or "(<module>)" in what:
            continue
        seen.add(what)
        out.append(f"{fmt_s(ct):>8}  {nc:>4} call(s)  {what}")
        if len(seen) >= n:
            break
    return out


# ------------------------------------------------------------------------------------ context


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.tmp = Path(tempfile.mkdtemp(prefix="expost-bench-"))
        self.expost = tool("expost")
        if not self.expost:
            raise SystemExit(f"no `expost` next to {PYTHON}: run this with the project's venv python")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPOST_", "DVC_"))}
        env.update({
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",  # never phone home from a benchmark
            "DVC_SITE_CACHE_DIR": str(self.tmp / "dvc-site"),
            "DVC_GLOBAL_CONFIG_DIR": str(self.tmp / "dvc-global"),
            "DVC_SYSTEM_CONFIG_DIR": str(self.tmp / "dvc-system"),
            "JUPYTER_RUNTIME_DIR": str(self.tmp / "jupyter-runtime"),
            "JUPYTER_DATA_DIR": str(self.tmp / "jupyter-data"),
            "IPYTHONDIR": str(self.tmp / "ipython"),
            "PYTHONWARNINGS": "ignore",
        })
        self.env = env
        self.memo: dict = {}
        self.notes: list[str] = []
        # expost's bytecode, compiled as any installed package's is at install time: this machine
        # sets PYTHONDONTWRITEBYTECODE, so an editable install would otherwise compile every module
        # on every run (dvc, torch and click have theirs from pip)
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "src" / "expost")], check=True)
        self.notes.append("expost's modules were byte-compiled first (`python -m compileall src/expost`), "
                          "as pip does for installed packages; this machine sets PYTHONDONTWRITEBYTECODE.")

    def env_with(self, cache: Path, **extra) -> dict:
        return {**self.env, "EXPOST_CACHE_DIR": str(cache), **extra}

    def reps(self, full: int, quick: int = 2) -> int:
        return quick if self.quick else full

    def git_commit(self, ws: Path) -> None:
        run_cmd(["git", "init", "-q"], self.env, ws)
        run_cmd([*GIT, "add", "-A"], self.env, ws)
        run_cmd([*GIT, "commit", "-qm", "bench workspace"], self.env, ws)

    # ---------------------------------------------------------------------- shared measurements

    def scurves_workspace(self, batched: bool) -> Path:
        """A workspace with scurves.py (run_batch removed unless `batched`) and its helper module."""
        ws = self.tmp / ("ws-batched" if batched else "ws-cold")
        if not ws.exists():
            (ws / "experiments").mkdir(parents=True)
            text = (ROOT / "experiments" / "scurves.py").read_text()
            (ws / "experiments" / "scurves.py").write_text(text if batched else strip_def(text, "run_batch"))
            shutil.copy(ROOT / "experiments" / "_lowrank.py", ws / "experiments" / "_lowrank.py")
        return ws

    def expost_cold(self, variant: str, i: int, device: str = "cpu") -> float:
        ws = self.scurves_workspace(batched=variant != "cold")
        cache = self.tmp / f"cache-{variant}-{device}-{i}"  # a fresh cache every repetition
        cmd = [self.expost, "run", "scurves", *SCURVES_WHERE, "--seeds", "10", "-j", "2", "-q"]
        if device != "cpu":
            cmd += ["--device", device]
        wall, p = run_cmd(cmd, self.env_with(cache), ws)
        if "10 ran" not in p.stderr:
            raise BenchError(f"expected `10 ran` from `expost run`, got: {p.stderr.strip()}")
        shutil.rmtree(cache, ignore_errors=True)
        return wall

    def handwritten(self, i: int, device: str = "cpu") -> float:
        ws = self.scurves_workspace(batched=False)
        out = self.tmp / f"loop-out-{device}-{i}"
        wall, _ = run_cmd([PYTHON, BENCH / "handwritten_loop.py", "--experiments", ws / "experiments",
                           "--out", out, "--device", device], self.env_with(self.tmp / "unused-cache"), ROOT)
        shutil.rmtree(out, ignore_errors=True)
        return wall

    def batching_state(self) -> str | None:
        """None when batched seeds can be measured, else why not."""
        if not has_top_level_def(ROOT / "experiments" / "scurves.py", "run_batch"):
            return "not available yet: experiments/scurves.py defines no run_batch(cfg, seeds)"
        if not any("run_batch" in p.read_text() for p in (ROOT / "src" / "expost").rglob("*.py")):
            return "not available yet: expost does not call run_batch"
        return None

    def cold_pair(self) -> dict:
        """expost (2 workers, per seed) and the hand-written loop, alternating; memoised."""
        if "cold" not in self.memo:
            self.memo["cold"] = alternate(self.reps(5), 1, {
                "expost": lambda i: self.expost_cold("cold", i),
                "loop": lambda i: self.handwritten(i)})
        return self.memo["cold"]


# ------------------------------------------------------------------------------------ rows


def row_noop(b: Bench) -> list[Row]:
    ws, cache = b.tmp / "ws-example", b.tmp / "cache-example"
    ws.mkdir()
    for folder in ("experiments", "templates", "publish"):
        shutil.copytree(ROOT / folder, ws / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if (ROOT / "expost.toml").exists():
        shutil.copy(ROOT / "expost.toml", ws / "expost.toml")
    b.git_commit(ws)  # a real workspace is a git repo; the manifest's git state is part of the check
    env = b.env_with(cache)
    seeds = ["--seeds", "2"] if b.quick else []
    first, p = run_cmd([b.expost, "build", "-q", "-j", "2", *seeds], env, ws, timeout=1800)
    ran = re.search(r"(\d+) planned run\(s\): (\d+) cached, (\d+) ran", p.stderr)
    b.notes.append(f"Setup for the no-op rows: the first `expost build -j 2{' --seeds 2' if b.quick else ''}` of the "
                   f"example workspace (fresh cache) took {fmt_s(first)}"
                   + (f" for {ran.group(3)} runs" if ran else "") + f" (load at its end {loadavg()}).")

    def noop(i):
        wall, p = run_cmd([b.expost, "build", "-q", *seeds], env, ws)
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        if not lines or not all(ln.endswith(": up to date") for ln in lines):
            raise BenchError(f"the second `expost build` was not a no-op:\n{p.stdout}{p.stderr}")
        return wall

    def pass_(i):
        return run_cmd([PYTHON, "-c", "pass"], env, ws)[0]

    runners = {"expost": noop, "python": pass_}
    dvc = tool("dvc")
    dvc_note = None
    if dvc:
        for scm in ("git", "noscm"):
            d = b.tmp / f"dvc-{scm}"
            (d / "experiments").mkdir(parents=True)
            deps = []
            for src in sorted((ROOT / "experiments").glob("*.py")):
                shutil.copy(src, d / "experiments" / src.name)
                deps.append(f"      - experiments/{src.name}")
            (d / "dvc.yaml").write_text(
                "stages:\n  build:\n    cmd: python -c \"open('out.txt', 'w').write('built')\"\n"
                "    deps:\n" + "\n".join(deps) + "\n    outs:\n      - out.txt\n")
            if scm == "git":
                run_cmd(["git", "init", "-q"], b.env, d)
                run_cmd([dvc, "init", "-q"], b.env, d)
            else:
                run_cmd([dvc, "init", "-q", "--no-scm"], b.env, d)
            run_cmd([dvc, "config", "core.analytics", "false"], b.env, d)
            run_cmd([dvc, "repro", "-q"], b.env, d)
            if scm == "git":
                run_cmd([*GIT, "add", "-A"], b.env, d)
                run_cmd([*GIT, "commit", "-qm", "pipeline"], b.env, d)

            def dvc_noop(i, d=d):
                wall, p = run_cmd([dvc, "repro"], b.env, d)
                if "didn't change" not in p.stdout and "up to date" not in p.stdout:
                    raise BenchError(f"`dvc repro` in {d} was not a no-op:\n{p.stdout}")
                return wall
            runners[f"dvc-{scm}"] = dvc_noop
    else:
        dvc_note = f"dvc not installed: {INSTALL_HINT}"
    r = alternate(b.reps(7), 1, runners)
    e, py = med(r["expost"]), med(r["python"])
    rows = [Row("no-op `expost build` (5 posts) vs `python -c pass`", fmt_s(e), fmt_s(py), f"{e / py:.1f}x",
                "<= 0.15 s", yes(e <= 0.15), reps=r,
                notes=[f"expost: {spread(r['expost'], r.get('expost warm-up'))}", f"python -c pass: {spread(r['python'], r.get('python warm-up'))}"])]
    if dvc:
        best = min(("dvc-git", "dvc-noscm"), key=lambda k: med(r[k]))
        d = med(r[best])
        rows.append(Row("no-op `expost build` vs no-op `dvc repro` (1 stage)", fmt_s(e), fmt_s(d) + f" ({best[4:]})",
                        f"{e / d:.2f}x", "<= 0.2x", yes(e / d <= 0.2), reps=r,
                        notes=[f"dvc in a git repo: {spread(r['dvc-git'], r.get('dvc-git warm-up'))}",
                               f"dvc --no-scm: {spread(r['dvc-noscm'], r.get('dvc-noscm warm-up'))}",
                               "baseline = the faster of the two; stage deps = the 6 experiment files, outs = out.txt"]))
    else:
        rows.append(Row("no-op `expost build` vs no-op `dvc repro` (1 stage)", fmt_s(e), "skipped", "-",
                        "<= 0.2x", "n/a", notes=[dvc_note]))

    # Where the time goes: imports (-X importtime) and a profile of one more no-op build.
    _, p = run_cmd([PYTHON, "-X", "importtime", "-m", "expost", "build", "-q", *seeds], env, ws)
    imports = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            imports.append((int(m.group(2)), int(m.group(1)), len(m.group(3)) - 1, m.group(4)))
    top = sorted(imports, reverse=True)[:10]
    total_us = sum(s for _c, s, _d, _n in imports)
    b.memo["importtime"] = (total_us, top, len(imports))
    prof = b.tmp / "noop.prof"
    run_cmd([PYTHON, "-m", "cProfile", "-o", prof, "-m", "expost", "build", "-q", *seeds], env, ws)
    b.memo["noop_profile"] = profile_lines(prof)
    return rows


FIXED_COSTS = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the first optimizer imports torch._dynamo
t2 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import scurves
cfg = {**scurves.PARAMS, "model": "factored", "rank": 1, "init_scale": 1e-3, "steps": 1000}
t3 = time.perf_counter()
for seed in range(1, 11):
    scurves.run(cfg, seed)
t4 = time.perf_counter()
if hasattr(scurves, "run_batch"):
    scurves.run_batch(cfg, list(range(1, 11)))
t5 = time.perf_counter()
print(json.dumps({"import_torch": t1 - t0, "first_optimizer": t2 - t1, "run_x10": t4 - t3,
                  "run_batch": (t5 - t4) if hasattr(scurves, "run_batch") else None}))
"""


def fixed_costs(b: Bench) -> str:
    """What any process running these seeds pays, measured in-process: the context for the cold rows."""
    ws = b.scurves_workspace(batched=True)
    reps = [json.loads(run_cmd([PYTHON, "-c", FIXED_COSTS, ws / "experiments"], b.env, ROOT)[1].stdout)
            for _ in range(b.reps(3, 1))]
    m = {k: med([x[k] for x in reps]) if reps[0][k] is not None else None for k in reps[0]}
    return (f"in-process, median of {len(reps)}: `import torch` {fmt_s(m['import_torch'])}, first "
            f"`torch.optim.SGD(...)` (imports torch._dynamo) {fmt_s(m['first_optimizer'])}, 10 x run() "
            f"{fmt_s(m['run_x10'])} (torch default threads)"
            + (f", run_batch(10 seeds) {fmt_s(m['run_batch'])}" if m["run_batch"] is not None else ""))


def row_cold(b: Bench) -> list[Row]:
    r = b.cold_pair()
    b.memo["fixed"] = fixed_costs(b)
    e, loop = med(r["expost"]), med(r["loop"])
    note = ("scurves.py copied with run_batch removed, so this row stays per-seed" if
            has_top_level_def(ROOT / "experiments" / "scurves.py", "run_batch") else "scurves.py as in the repo")
    return [Row("cold run, 10 seeds x 1000 steps, `-j 2` vs hand-written loop", fmt_s(e), fmt_s(loop),
                f"{e / loop:.2f}x", "<= 0.55x", yes(e / loop <= 0.55), reps=r,
                notes=[f"expost run: {spread(r['expost'], r.get('expost warm-up'))}", f"bench/handwritten_loop.py: {spread(r['loop'], r.get('loop warm-up'))}",
                       note, "fresh EXPOST_CACHE_DIR every repetition; both sides are whole processes",
                       "fixed costs, " + b.memo["fixed"]])]


def row_batched(b: Bench) -> list[Row]:
    rows = []
    why = b.batching_state()
    devices = {"cpu": ["cpu"], "cuda": ["cpu", "cuda"], "cuda-only": ["cuda"]}[b.args.device]
    for device in devices:
        name = f"cold run, batched seeds ({device}) vs hand-written loop ({device})"
        if why:
            rows.append(Row(name, why, target="<= 0.25x", met="n/a"))
            continue
        if device == "cuda":
            _, p = run_cmd([PYTHON, "-c", "import torch; print(torch.cuda.is_available())"], b.env, ROOT)
            if p.stdout.strip() != "True":
                rows.append(Row(name, "not measured (no CUDA)", target="<= 0.25x", met="n/a"))
                continue
        runners = {"expost": lambda i: b.expost_cold("batched", i, device),
                   "loop": lambda i: b.handwritten(i, device)}
        r = alternate(b.reps(5), 1, runners)
        e, loop = med(r["expost"]), med(r["loop"])
        b.memo[f"batched-{device}"] = e
        rows.append(Row(name, fmt_s(e), fmt_s(loop), f"{e / loop:.2f}x", "<= 0.25x", yes(e / loop <= 0.25),
                        reps=r, notes=[f"expost run (run_batch): {spread(r['expost'], r.get('expost warm-up'))}",
                                       f"hand-written loop: {spread(r['loop'], r.get('loop warm-up'))}"]))
    return rows


PAPERMILL_LOOP = """
import sys
import papermill as pm
nb, outdir, experiments, results = sys.argv[1:5]
for seed in range(1, 11):
    pm.execute_notebook(nb, f"{outdir}/seed{seed}.ipynb", kernel_name="python3", progress_bar=False,
                        parameters={"seed": seed, "steps": 1000, "experiments": experiments, "out": results})
"""


def write_notebook(path: Path) -> None:
    """bench/scurve.ipynb: one seed of the rank-1 S-curve, parameters in a cell tagged `parameters`."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    params = new_code_cell('seed = 1\nsteps = 1000\nexperiments = "experiments"\nout = "results"')
    params.metadata["tags"] = ["parameters"]
    body = new_code_cell(
        "import random\nimport sys\nfrom pathlib import Path\n\nimport numpy as np\nimport torch\n\n"
        "sys.path.insert(0, experiments)\nimport scurves\n\n"
        'cfg = {**scurves.PARAMS, "model": "factored", "rank": 1, "init_scale": 1e-3, "steps": steps}\n'
        "random.seed(seed)\nnp.random.seed(seed)\ntorch.manual_seed(seed)\n"
        "result = scurves.run(cfg, seed)\n"
        "Path(out).mkdir(parents=True, exist_ok=True)\n"
        'np.savez(Path(out) / f"seed{seed}.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in result.items()})\n'
        'print(f"seed {seed}: drop at step {result[\'drop_step\']}")')
    nb = new_notebook(cells=[
        new_markdown_cell("# Rank-1 S-curve, one seed\n\nWritten by `bench/run.py`: the papermill baseline "
                          "executes it once per seed (`-p seed N`)."), params, body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids: rewriting the notebook gives the same bytes
    text = nbformat.writes(nb)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def row_papermill(b: Bench) -> list[Row]:
    name = "the same 10 seeds: papermill, one notebook run per seed"
    missing = [m for m in ("papermill", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        return [Row(name, "skipped", target=">= 20x faster", met="n/a",
                    notes=[f"{', '.join(missing)} not installed: {INSTALL_HINT}"])]
    nb = BENCH / "scurve.ipynb"
    write_notebook(nb)
    ws = b.scurves_workspace(batched=False)

    def papermill(i):
        out = b.tmp / f"papermill-{i}"
        out.mkdir()
        wall, _ = run_cmd([PYTHON, "-c", PAPERMILL_LOOP, nb, out, ws / "experiments", out / "results"],
                          b.env_with(b.tmp / "unused-cache"), b.tmp, timeout=1200)
        if len(list((out / "results").glob("seed*.npz"))) != 10:
            raise BenchError(f"papermill did not produce 10 results in {out}")
        return wall

    reps = 1 if b.quick else 3
    r = {"papermill": alternate(reps, 0, {"papermill": papermill})["papermill"]}
    pm = med(r["papermill"])
    if b.batching_state() is None and "batched-cpu" in b.memo:
        e, which = b.memo["batched-cpu"], "`expost run` with batched seeds (the default once run_batch exists)"
    else:
        r["expost"] = b.cold_pair()["expost"]
        e, which = med(r["expost"]), "`expost run -j 2`, per seed"
    return [Row(name, fmt_s(e), fmt_s(pm), f"{pm / e:.1f}x faster", ">= 20x faster", yes(pm / e >= 20), reps=r,
                notes=[f"papermill: {spread(r['papermill'], r.get('papermill warm-up'))}; {reps} repetition(s), no warm-up (each takes "
                       "tens of seconds; torch is already in the page cache from the other rows)",
                       f"expost side: {which}",
                       "one Python process calls papermill.execute_notebook for seeds 1..10 in turn (a new "
                       "kernel per seed), the cheapest way to drive papermill; bench/scurve.ipynb runs the same "
                       "scurves.run as expost"])]


def row_overhead(b: Bench) -> list[Row]:
    reps = 3 if b.quick else 9
    _, p = run_cmd([PYTHON, BENCH / "overhead.py", "--cache", b.tmp / "cache-overhead", "--reps", reps],
                   b.env_with(b.tmp / "cache-overhead"), ROOT)
    data = json.loads(p.stdout.strip().splitlines()[-1])
    plain = [x["plain_s"] for x in data["reps"]]
    logged = [x["logged_s"] for x in data["reps"]]
    write = [x["convert_write_s"] for x in data["reps"]]
    tensor = [x["tensor_s"] for x in data["reps"]]
    over = med(logged) / med(plain) - 1
    paired = med([lg / pl - 1 for lg, pl in zip(logged, plain)])
    steps = data["steps"]
    return [Row(f"overhead: log {steps:,} series points + cache write vs no logging", fmt_s(med(logged)),
                fmt_s(med(plain)), f"{over:+.1%}", "< 3 %", yes(over < 0.03),
                reps={"plain": plain, "logged": logged, "convert_write": write, "tensor": tensor},
                notes=[f"in one process, torch 1 thread, {reps} alternating repetitions after a warm-up; "
                       f"median of paired ratios {paired:+.1%}",
                       "logging = `losses.append(loss.item())` each step, the common idiom, then "
                       "expost's convert_outputs + Cache.write of the list",
                       f"of which convert_outputs + Cache.write: median {med(write) * 1000:.1f} ms "
                       f"({med(write) / med(plain):.1%}); the rest is the per-step `.item()`, "
                       f"about {(med(logged) - med(write) - med(plain)) / steps * 1e6:.1f} us per step "
                       f"on a {med(plain) / steps * 1e6:.0f} us step",
                       f"for comparison, recording into a preallocated tensor instead (`losses[t] = loss.detach()`, "
                       f"the GPU idiom; same convert + write): {med(tensor) / med(plain) - 1:+.1%}"])]


SYNTH_EXPERIMENT = '''"""Synthetic curves for the render benchmark: six 5000-step series per seed, made with numpy in milliseconds.

    python experiments/synth.py
"""

import numpy as np

PARAMS = {
    "steps": 5000,   # series length
    "drop": 2500,    # step where the loss drops, before per-seed jitter
}
SEEDS = 10
OUTPUTS = {
    "loss": "series: a noisy S-curve from 1 to about 0",
    "acc": "series: 1 - loss",
    "grad_norm": "series: a bump around the drop",
    "lr": "series: a cosine schedule",
    "noise": "series: a random walk",
    "margin": "series: a slow rise",
    "drop_step": "scalar: step where the loss is halfway down",
}
CLAIMS = [{"claim": "The loss drops after step 1000.", "check": lambda r: r.scalar("drop_step") > 1000,
           "metric": "drop_step"}]


def run(cfg, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(cfg["steps"], dtype=float)
    centre = cfg["drop"] + rng.normal(0, 200)
    loss = 1 / (1 + np.exp((t - centre) / 80)) + 1e-3 + 1e-3 * rng.random(len(t))
    return {
        "loss": loss,
        "acc": 1 - loss,
        "grad_norm": np.exp(-((t - centre) / 300) ** 2) + 0.01 * rng.random(len(t)),
        "lr": 0.5 * (1 + np.cos(np.pi * t / len(t))),
        "noise": np.cumsum(rng.normal(0, 1, len(t))),
        "margin": np.log1p(t) * (1 + 0.1 * rng.random()),
        "drop_step": int(np.argmax(loss < 0.5)),
    }


if __name__ == "__main__":
    for name, value in run(PARAMS, 1).items():
        print(name, np.shape(value))
'''

SYNTH_POST = """---
title: Six figures over ten seeds
summary: A synthetic post for the render benchmark.
experiments: [synth]
tags: [benchmark]
---
{% set r = results("synth") %}
The loss is halfway down at {{ stat(r, "drop_step", unit="steps") }}. {{ claim("synth", 0) }}

{{ figure(r, "curves", "loss", logy=True, caption="Loss") }}

{{ figure(r, "curves", "acc", caption="Accuracy") }}

{{ figure(r, "curves", "grad_norm", logy=True, caption="Gradient norm") }}

{{ figure(r, "curves", "noise", caption="A random walk") }}

{{ figure(r, "curves", "lr", caption="Learning rate") }}

{{ figure(r, "curves", "margin", caption="Margin") }}
"""


def row_render(b: Bench) -> list[Row]:
    ws, cache = b.tmp / "ws-render", b.tmp / "cache-render"
    (ws / "experiments").mkdir(parents=True)
    (ws / "templates").mkdir()
    (ws / "experiments" / "synth.py").write_text(SYNTH_EXPERIMENT)
    (ws / "templates" / "synth.md.j2").write_text(SYNTH_POST)
    b.git_commit(ws)
    env = b.env_with(cache)
    run_cmd([b.expost, "run", "-j", "2", "-q"], env, ws)

    def render(i):
        wall, p = run_cmd([b.expost, "render", "--force"], env, ws)
        if "synth: rendered" not in p.stdout:
            raise BenchError(f"`expost render --force` did not render:\n{p.stdout}{p.stderr}")
        return wall

    r = alternate(b.reps(5), 1, {"render": render})
    figs = sorted((ws / "publish" / "synth" / "figures").glob("*.png"))
    prof = b.tmp / "render.prof"
    run_cmd([PYTHON, "-m", "cProfile", "-o", prof, "-m", "expost", "render", "--force"], env, ws)
    b.memo["render_profile"] = profile_lines(prof)
    e = med(r["render"])
    return [Row("`expost render --force`: 6 figures x 10 seeds x 5000 steps", fmt_s(e), target="<= 1.5 s",
                met=yes(e <= 1.5), reps=r,
                notes=[f"{spread(r['render'], r.get('render warm-up'))}; whole process; runs cached beforehand; {len(figs)} PNGs "
                       "(6 `curves` figures); post.md, post.html, gist/ and manifest.json written each time"])]


PROSE_POST = """---
title: S-curves over ten seeds
summary: One figure and one number from the rank-1 S-curve, for the prose-edit benchmark.
experiments: [scurves]
---
{% set r = results("scurves") %}
The loss is halfway down at {{ stat(r, "drop_step", unit="steps") }}.

{{ claim("scurves", 0) }}

{{ figure(r, "curves", "loss", logy=True, caption="Loss over training") }}
"""


def row_prose(b: Bench) -> list[Row]:
    """A prose-only edit rebuilt by a cold `expost build`: the figure and the verdicts come from
    the cache (a text-only render), against the same edit with the figure and verdict caches
    removed before the build (the old path: import the experiment and torch for the claims,
    matplotlib to draw)."""
    ws, cache = b.tmp / "ws-prose", b.tmp / "cache-prose"
    (ws / "experiments").mkdir(parents=True)
    (ws / "templates").mkdir()
    for name in ("scurves.py", "_lowrank.py"):
        shutil.copy(ROOT / "experiments" / name, ws / "experiments" / name)
    post = ws / "templates" / "prose.md.j2"
    post.write_text(PROSE_POST)
    b.git_commit(ws)
    env = b.env_with(cache)
    cmd = [b.expost, "build", "prose", *SCURVES_WHERE, "--seeds", "10", "-q"]
    run_cmd([*cmd, "-j", "2"], env, ws)  # the 10 runs, once
    edits = iter(range(10 ** 6))

    def rebuild(drop_caches: bool, argv=cmd) -> tuple[float, subprocess.CompletedProcess]:
        with post.open("a") as f:
            f.write(f"\nAn edited sentence, number {next(edits)}.\n")
        if drop_caches:
            for folder in ("figures", "verdicts"):
                shutil.rmtree(cache / folder, ignore_errors=True)
        wall, p = run_cmd(argv, env, ws)
        if "prose: rendered" not in p.stdout:
            raise BenchError(f"the build after a prose edit did not render:\n{p.stdout}{p.stderr}")
        return wall, p

    r = alternate(b.reps(7), 1, {"cached": lambda i: rebuild(False)[0], "uncached": lambda i: rebuild(True)[0]})
    _, p = rebuild(False, [PYTHON, "-X", "importtime", "-m", "expost", *cmd[1:]])
    imported = {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)$", p.stderr, re.M)}
    heavy = sorted(m for m in ("torch", "matplotlib", "expost_experiment_scurves") if m in imported)
    e, old = med(r["cached"]), med(r["uncached"])
    return [Row("prose-only edit, cold `expost build` (10-seed S-curve post, 1 figure) vs without the figure and "
                "verdict caches", fmt_s(e), fmt_s(old), f"{e / old:.2f}x", "<= 0.6 s", yes(e <= 0.6 and not heavy),
                reps=r, notes=[f"with the caches: {spread(r['cached'], r.get('cached warm-up'))}",
                               f"caches removed before each build: {spread(r['uncached'], r.get('uncached warm-up'))}",
                               "each build follows a new sentence appended to the template; runs cached beforehand",
                               "`-X importtime` of one more such build: "
                               + (f"imported {', '.join(heavy)}" if heavy else
                                  "neither torch, nor matplotlib, nor the experiment imported")])]


def row_store(b: Bench) -> list[Row]:
    seeds = 100 if b.quick else 1000
    cache = b.tmp / "cache-store"
    out = {}
    for via in ("cache", "resultset"):
        wall, p = run_cmd([PYTHON, BENCH / "store_plot.py", "--cache", cache, "--out", b.tmp / f"store-{via}.png",
                           "--seeds", seeds, "--via", via], b.env_with(cache), ROOT)
        out[via] = {**json.loads(p.stdout.strip().splitlines()[-1]), "wall_s": wall}
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for via, label, target in (("cache", "Cache.read -> float32 -> curves", "< 1024 MiB"),
                               ("resultset", "ResultSet.series (float64, as figure() does)", "< 1024 MiB (info)")):
        d = out[via]
        rows.append(Row(f"store+plot {seeds} seeds x 1e5 steps: {label}", f"{d['peak_mib']:.0f} MiB peak RSS",
                        target=target, met=yes(d["peak_mib"] < 1024), reps={via: d},
                        notes=[f"write {fmt_s(d['write_s'])}" + (" (entries written by the previous variant)"
                                                                 if via == "resultset" else "")
                               + f", load {fmt_s(d['load_s'])} ({d['dtype']}), plot {fmt_s(d['plot_s'])}, "
                               f"process {fmt_s(d['wall_s'])}; RSS after load {d['after_load_mib']:.0f} MiB; "
                               "one repetition (a memory measurement)"]))
    return rows


# The last commit whose runner kept worker processes, and the global state runs left in them, across
# runs (a ProcessPoolExecutor of forked workers): the baseline of the `isolated` row.
REUSED_POOL_COMMIT = "3ca1892"


def reused_pool_src(b: Bench) -> Path:
    """src/ of REUSED_POOL_COMMIT, extracted with `git archive` into the temp dir (the checkout is not
    touched) and byte-compiled like the current one; a command finds it first with PYTHONPATH."""
    dest = b.tmp / "reused-pool"
    if not dest.exists():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", REUSED_POOL_COMMIT, "src/expost"],
                                 capture_output=True)
        if archive.returncode != 0:
            raise BenchError(f"`git archive {REUSED_POOL_COMMIT}` failed (a shallow clone?): "
                             f"{archive.stderr.decode(errors='replace').strip()}")
        dest.mkdir()
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(dest / "src" / "expost")], check=True)
    src = dest / "src"
    _, p = run_cmd([PYTHON, "-c", "import expost.runs.runner as r; print(r.__file__, hasattr(r, 'make_executor'))"],
                   {**b.env, "PYTHONPATH": str(src)}, b.tmp)
    if not p.stdout.startswith(str(src)) or not p.stdout.strip().endswith("True"):
        raise BenchError(f"PYTHONPATH={src} does not import the reused-worker runner: {p.stdout.strip()}")
    return src


def row_isolated(b: Bench) -> list[Row]:
    """The cold row's 10 seeds with runs isolated from each other, against the same command of the
    commit whose workers kept one run's global state for the next."""
    ws = b.scurves_workspace(batched=False)
    old = reused_pool_src(b)

    def run(i: int, which: str) -> float:
        cache = b.tmp / f"cache-isolated-{which}-{i}"
        env = b.env_with(cache, **({"PYTHONPATH": str(old)} if which == "reused" else {}))
        wall, p = run_cmd([b.expost, "run", "scurves", *SCURVES_WHERE, "--seeds", "10", "-j", "2", "-q"], env, ws)
        if "10 ran" not in p.stderr:
            raise BenchError(f"expected `10 ran` from `expost run`, got: {p.stderr.strip()}")
        shutil.rmtree(cache, ignore_errors=True)
        return wall

    r = alternate(b.reps(7), 1, {"isolated": lambda i: run(i, "isolated"), "reused": lambda i: run(i, "reused")})
    e, base = med(r["isolated"]), med(r["reused"])
    return [Row("cold run, 10 seeds x 1000 steps, `-j 2`: isolated runs vs reused workers "
                f"({REUSED_POOL_COMMIT})", fmt_s(e), fmt_s(base), f"{e / base:.2f}x", "<= 1.05x",
                yes(e / base <= 1.05), reps=r,
                notes=[f"this tree: {spread(r['isolated'], r.get('isolated warm-up'))}",
                       f"src/expost of {REUSED_POOL_COMMIT} (`git archive`, first on PYTHONPATH): "
                       f"{spread(r['reused'], r.get('reused warm-up'))}",
                       "scurves.py without run_batch, as in the cold row; fresh EXPOST_CACHE_DIR every repetition"])]


TINY_EXPERIMENT = '''"""Tiny runs for the per-run overhead benchmark: a two-parameter linear fit by gradient descent,
about 1 ms a run.

    python experiments/tiny.py
"""

import torch

PARAMS = {"lr": 0.1, "noise": 0.1, "steps": 40, "n": 64}
SWEEP = {"lr": [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2],
         "noise": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45]}
SEEDS = 10
OUTPUTS = {"loss": "series: mean squared error at each step", "final": "scalar: the last loss"}


def run(cfg, seed):
    x = torch.randn(cfg["n"])
    y = 2 * x + 1 + cfg["noise"] * torch.randn(cfg["n"])
    w = torch.zeros(2)
    loss = torch.empty(cfg["steps"])
    for t in range(cfg["steps"]):
        err = w[0] * x + w[1] - y
        loss[t] = (err * err).mean()
        w -= cfg["lr"] * 2 * torch.stack([(err * x).mean(), err.mean()])
    return {"loss": loss, "final": float(loss[-1])}


if __name__ == "__main__":
    print(run(PARAMS, 1)["final"])
'''

# The baseline of the `tiny` row: the same 1000 runs as a serial loop in one process, seeding as
# expost does and saving each run's result with np.save (the series; its last value is the scalar).
TINY_LOOP = """
import random, sys
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, sys.argv[1])
import tiny
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for lr in tiny.SWEEP["lr"]:
    for noise in tiny.SWEEP["noise"]:
        cfg = {**tiny.PARAMS, "lr": lr, "noise": noise}
        for seed in range(1, tiny.SEEDS + 1):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            result = tiny.run(cfg, seed)
            np.save(out / f"lr{lr}-noise{noise}-seed{seed}.npy", np.asarray(result["loss"], dtype=np.float32))
"""

TINY_TIMING = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import tiny
torch.set_num_threads(1)
cfg = {**tiny.PARAMS}
for seed in range(50):
    tiny.run(cfg, seed)
t = time.perf_counter()
for seed in range(500):
    tiny.run(cfg, seed)
print(json.dumps({"run_s": (time.perf_counter() - t) / 500}))
"""


def row_tiny(b: Bench) -> list[Row]:
    """Per-run overhead: 1000 runs of about 1 ms, `expost run -j 2` against a serial hand-written loop."""
    ws = b.tmp / "ws-tiny"
    (ws / "experiments").mkdir(parents=True)
    (ws / "templates").mkdir()
    (ws / "experiments" / "tiny.py").write_text(TINY_EXPERIMENT)

    old = reused_pool_src(b)
    # Each repetition's cache and output stay until the row ends: ext4 without a journal (as on the
    # VMs this suite runs on) skips inodes deleted in the last minute (five while their table block
    # is dirty) when it allocates one, reading a block for each, so deleting thousands of files
    # between repetitions would slow the next ones' creates, most for the side that creates most.
    leftovers = []

    def expost(i: int, which: str = "expost") -> float:
        cache = b.tmp / f"cache-tiny-{which}-{i}"
        env = b.env_with(cache, **({"PYTHONPATH": str(old)} if which == "reused" else {}))
        wall, p = run_cmd([b.expost, "run", "tiny", "-j", "2", "-q"], env, ws)
        if "1000 ran" not in p.stderr:
            raise BenchError(f"expected `1000 ran` from `expost run`, got: {p.stderr.strip()}")
        leftovers.append(cache)
        return wall

    def loop(i: int) -> float:
        out = b.tmp / f"loop-tiny-{i}"
        wall, _ = run_cmd([PYTHON, "-c", TINY_LOOP, ws / "experiments", out], b.env_with(b.tmp / "unused-cache"), ROOT)
        leftovers.append(out)
        return wall

    try:
        r = alternate(b.reps(7), 1, {"expost": expost, "loop": loop, "reused": lambda i: expost(i, "reused")})
    finally:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    one = json.loads(run_cmd([PYTHON, "-c", TINY_TIMING, ws / "experiments"], b.env, ROOT)[1].stdout)["run_s"]
    e, base = med(r["expost"]), med(r["loop"])
    return [Row("1000 runs of ~1 ms (100 configs x 10 seeds), `-j 2`, vs a serial loop saving each with np.save",
                fmt_s(e), fmt_s(base), f"{e / base:.2f}x", "<= 1.0x", yes(e / base <= 1.0), reps=r,
                notes=[f"expost run: {spread(r['expost'], r.get('expost warm-up'))}",
                       f"loop: {spread(r['loop'], r.get('loop warm-up'))}",
                       f"for comparison, the same command with the reused-worker runner of {REUSED_POOL_COMMIT}: "
                       f"{spread(r['reused'], r.get('reused warm-up'))} ({med(r['reused']) / base:.2f}x the loop)",
                       f"one run() in-process, one torch thread: {one * 1000:.2f} ms",
                       "whole processes on both sides (start-up, torch import, planning included); "
                       "fresh EXPOST_CACHE_DIR every repetition, all deleted after the row (see row_tiny)"])]


def start_dask_cluster(b: Bench, workers: int = 2) -> tuple[str, list]:
    """A `dask scheduler` and `workers` one-thread `dask worker` processes on localhost, each in a folder
    of its own without the workspace; (address, processes)."""
    dask = tool("dask")
    root = b.tmp / "dask"
    root.mkdir()
    env = {k: v for k, v in b.env.items() if k != "PYTHONPATH"}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(root / "scheduler.json")], cwd=root, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    t0 = time.monotonic()
    while not (root / "scheduler.json").exists() or not (root / "scheduler.json").read_text():
        if time.monotonic() - t0 > 120:
            raise BenchError("`dask scheduler` wrote no address within 120 s")
        time.sleep(0.05)
    address = json.loads((root / "scheduler.json").read_text())["address"]
    for i in range(workers):
        home = root / f"worker-{i}"
        home.mkdir()
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard", "--local-directory", str(home)], cwd=home, env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait = (f"import distributed; c = distributed.Client({address!r}, timeout=120); "
            f"c.wait_for_workers({workers}, timeout=120); c.close()")
    run_cmd([PYTHON, "-c", wait], env, root)
    return address, procs


def stop_processes(procs: list) -> None:
    import signal

    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def row_dask(b: Bench) -> list[Row]:
    """40 runs of the S-curve at 5000 steps (one task each): two local Dask workers against `-j 2`."""
    name = "40 runs x 5000 steps (S-curve, one task per run): 2 local Dask workers vs the local pool `-j 2`"
    if importlib.util.find_spec("distributed") is None or not tool("dask"):
        return [Row(name, "skipped", target="<= 1.15x", met="n/a",
                    notes=["distributed is not installed: `.venv/bin/pip install -e '.[dask]'`"])]
    ws = b.scurves_workspace(batched=False)
    seeds = 8 if b.quick else 40
    args = ["run", "scurves", "--where", "model=factored", "--where", "rank=1", "--where", "init_scale=0.001",
            "--set", "steps=5000", "--seeds", str(seeds), "-q"]
    address, procs = start_dask_cluster(b)

    def expost(i: int, how: str) -> float:
        cache = b.tmp / f"cache-dask-{how}-{i}"
        extra = ["--scheduler", address] if how == "dask" else ["-j", "2"]
        wall, p = run_cmd([b.expost, *args, *extra], b.env_with(cache), ws)
        if f"{seeds} ran" not in p.stderr:
            raise BenchError(f"expected `{seeds} ran` from `expost run`, got: {p.stderr.strip()}")
        shutil.rmtree(cache, ignore_errors=True)
        return wall

    try:
        r = alternate(b.reps(3, 1), 1, {"dask": lambda i: expost(i, "dask"), "local": lambda i: expost(i, "local")})
    finally:
        stop_processes(procs)
    d, loc = med(r["dask"]), med(r["local"])
    return [Row(name if seeds == 40 else name.replace("40 runs", f"{seeds} runs"), fmt_s(d), fmt_s(loc),
                f"{d / loc:.2f}x", "<= 1.15x", yes(d / loc <= 1.15), reps=r,
                notes=[f"expost run --scheduler (2 x `dask worker --nthreads 1`): {spread(r['dask'], r.get('dask warm-up'))}",
                       f"expost run -j 2: {spread(r['local'], r.get('local warm-up'))}",
                       "whole `expost run` processes on both sides; the scheduler and workers start once, before "
                       "the row (the warm-up repetition warms them); a fresh EXPOST_CACHE_DIR every repetition; "
                       "scurves.py with run_batch removed, so each run is one task"])]


PREVIEW_POST = """---
title: S-curve, drafted live
summary: The preview rows' post: one figure, one number, 10 seeds.
experiments: [scurves]
seeds: 10
---
Edit 0.

{{ figure(results("scurves"), "curves", "loss") }}

The loss is halfway down at {{ stat(results("scurves"), "drop_step", unit="steps") }}.
"""
PREVIEW_JS_CLOCK = ("() => { window.__updates = []; document.addEventListener('expost:updated', "
                    "() => window.__updates.push(Date.now() / 1000)); }")


class PreviewProcess:
    """`expost preview` running in `ws`: its URL (read from stderr) and its exit."""

    def __init__(self, b: Bench, ws: Path, env: dict, args: list):
        self.proc = subprocess.Popen([b.expost, "preview", *args], cwd=ws, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("token=" in line for line in self.lines):
            if self.proc.poll() is not None:
                raise BenchError(f"`expost preview` exited {self.proc.returncode}: {''.join(self.lines)[-2000:]}")
            time.sleep(0.05)
        self.url = re.search(r"http://\S+", "".join(self.lines)).group(0)

    def stop(self) -> float:
        """Ctrl-C; the seconds until the process has exited (its code must be 130)."""
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        wall = time.perf_counter() - t0
        if code != 130:
            raise BenchError(f"`expost preview` exited {code} on Ctrl-C, not 130: {''.join(self.lines)[-2000:]}")
        return wall


def _lr_edit(path: Path, i: int) -> None:
    """A new learning rate: every run of the post is new (10 seeds x 1000 steps, one batch block)."""
    text = re.sub(r'"lr": [^,]+,', f'"lr": {1e-3 * (1 + (i + 1) / 1000)!r},', path.read_text(), count=1)
    path.write_text(text)


def row_preview(b: Bench) -> list[Row]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return [Row("`expost preview` edits", "skipped", met="n/a", notes=["playwright is not installed"])]
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        return [Row("`expost preview` edits", "skipped", met="n/a", notes=["no chromium on PATH"])]
    wss = {}
    for side in ("live", "cold"):  # one workspace (and cache) per side: each sees the same edits
        ws = b.tmp / f"ws-preview-{side}"
        shutil.copytree(b.scurves_workspace(batched=True), ws)
        (ws / "templates").mkdir()
        (ws / "templates" / "bench.md.j2").write_text(PREVIEW_POST)
        b.git_commit(ws)
        wss[side] = ws
    env = {side: b.env_with(b.tmp / f"cache-preview-{side}") for side in wss}
    sel = [*SCURVES_WHERE, "-j", "2"]
    run_cmd([b.expost, "build", "bench", *sel, "-q"], env["cold"], wss["cold"])
    reps = b.reps(7, 2)
    preview = PreviewProcess(b, wss["live"], env["live"], ["bench", *sel])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(bypass_csp=True)  # Playwright's string waits need eval
            page.set_default_timeout(120_000)
            page.goto(preview.url.replace("/?", "/post/bench?"))
            page.wait_for_function("document.body.dataset.gen !== '0'")
            page.evaluate(PREVIEW_JS_CLOCK)

            def live(path: Path, change) -> float:
                """Seconds from the file write to the page's DOM updated, on the page's clock."""
                seen = page.evaluate("window.__updates.length")
                t0 = time.time()
                change(path)
                page.wait_for_function(f"window.__updates.length > {seen}")
                return page.evaluate("window.__updates[window.__updates.length - 1]") - t0

            def cold(path: Path, change) -> float:
                change(path)
                wall, _ = run_cmd([b.expost, "build", "bench", *sel, "-q"], env["cold"], wss["cold"])
                return wall

            def prose(ws: Path) -> Path:
                return ws / "templates" / "bench.md.j2"

            def edit_prose(path: Path, i=[0]) -> None:
                i[0] += 1
                path.write_text(re.sub(r"Edit \d+\.", f"Edit {i[0]}.", path.read_text()))

            template = alternate(reps, 1, {
                "preview": lambda i: live(prose(wss["live"]), edit_prose),
                "build": lambda i: cold(prose(wss["cold"]), edit_prose)})
            figure = page.get_attribute("article img", "src")
            experiment = alternate(reps, 1, {
                "preview": lambda i: live(wss["live"] / "experiments" / "scurves.py", lambda f: _lr_edit(f, i)),
                "build": lambda i: cold(wss["cold"] / "experiments" / "scurves.py", lambda f: _lr_edit(f, i))})
            if page.get_attribute("article img", "src") == figure:
                raise BenchError("the preview's figure did not change after the experiment edits")
            browser.close()
        # Ctrl-C while an edit's 10 runs are going: how long until the process has exited.
        _lr_edit(wss["live"] / "experiments" / "scurves.py", 1000)
        time.sleep(0.5)
    finally:
        stopped = preview.stop() if preview.proc.poll() is None else float("nan")
    rows = []
    for what, r, target in (("template edit", template, 0.5), ("experiment edit (10 seeds x 1000 steps, batched)",
                                                                experiment, 1.5)):
        e, c = med(r["preview"]), med(r["build"])
        rows.append(Row(f"`expost preview`: {what}, file write to the page's DOM updated, vs cold `expost build`",
                        fmt_s(e), fmt_s(c), f"{e / c:.2f}x", f"<= {target} s", yes(e <= target), reps=r,
                        notes=[f"preview: {spread(r['preview'], r.get('preview warm-up'))}; cold `expost build` of the "
                               f"same edit: {spread(r['build'], r.get('build warm-up'))}; measured in chromium "
                               "(Playwright), the page's Date.now() at the swap minus time.time() before the write; "
                               "S-curve rank 1, init 1e-3, steps=1000, -j 2"]))
    rows.append(Row("`expost preview`: Ctrl-C during an edit's runs, to the process exited", fmt_s(stopped),
                    target="<= 2 s", met=yes(stopped <= 2.0), notes=["exit code 130; completed runs cached"]))
    return rows


ROW_FUNCS = {"noop": row_noop, "cold": row_cold, "batched": row_batched, "papermill": row_papermill,
             "overhead": row_overhead, "render": row_render, "prose": row_prose, "preview": row_preview, "store": row_store, "isolated": row_isolated,
             "tiny": row_tiny, "dask": row_dask}


# ------------------------------------------------------------------------------------ report


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "experiments"],
                           capture_output=True, text=True)
    n_dirty = len([ln for ln in dirty.stdout.splitlines() if ln.strip()])
    return {
        "CPU": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "RAM": f"{int(mem.group(1)) / 1024 ** 2:.1f} GiB" if mem else "unknown",
        "OS": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": version("torch"), "numpy": version("numpy"), "matplotlib": version("matplotlib"),
        "expost": f"{version('expost')} at {git.stdout.strip() or '?'}"
                  + (f" + {n_dirty} uncommitted file(s) in src/ and experiments/" if n_dirty else ""),
        "dvc": version("dvc"), "papermill": version("papermill"), "ipykernel": version("ipykernel"),
    }


def table(rows: list[Row], with_load: bool = False) -> list[str]:
    head = ["row", "expost", "baseline", "ratio", "target", "met?"] + (["load at row start"] if with_load else [])
    body = [[r.name, r.expost, r.baseline, r.ratio, r.target, r.met] + ([r.load] if with_load else [])
            for r in rows]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
           ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]


def plain_table(rows: list[Row]) -> str:
    cols = [["row", "expost", "baseline", "ratio", "target", "met?"]] + \
           [[r.name, r.expost, r.baseline, r.ratio, r.target, r.met] for r in rows]
    widths = [min(max(len(c[i]) for c in cols), 76) for i in range(6)]
    return "\n".join(" | ".join(c[i][:76].ljust(widths[i]) for i in range(6)).rstrip() for c in cols)


def report(b: Bench, rows: list[Row], info: dict, started: str, load_start: str, total: float,
           selected: list[str]) -> str:
    out = ["# expost benchmarks", "",
           f"Written by `python bench/run.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on {started}"
           f" in {total / 60:.1f} min."
           + (" **Quick smoke run: fewer repetitions and smaller sizes; not the numbers to quote.**" if b.quick else "")
           + ("" if selected == list(ROWS) else f" Rows: {', '.join(selected)}."),
           "", "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    out += [f"| load average at start (1, 5, 15 min) | {load_start} |",
            f"| load average at end | {loadavg()} |", "",
            f"The machine's {os.cpu_count()} cores may be shared with other work, so the load average is part of every number: "
            "each row's load at its start is in the table. Times are whole processes unless a row says "
            "otherwise; expost and its baseline alternate within each repetition.", "",
            "## Results", ""]
    out += table(rows, with_load=True)
    out += ["", "## Details", ""]
    for r in rows:
        if r.notes:
            out.append(f"- **{r.name}**: " + "; ".join(r.notes) + ".")
    for n in b.notes:
        out.append(f"- {n}")
    if "importtime" in b.memo:
        total_us, top, n = b.memo["importtime"]
        out += ["", "## Where a no-op build's time goes", "",
                f"`python -X importtime -m expost build -q` in the temp workspace: {n} modules imported, "
                f"{total_us / 1000:.0f} ms of import time in total. Top 10 by cumulative time (nested imports are "
                "counted inside their parents):", "", "| cumulative | self | module |", "|---:|---:|---|"]
        out += [f"| {c / 1000:.1f} ms | {s / 1000:.1f} ms | {'&nbsp;' * 2 * d}`{name}` |" for c, s, d, name in top]
    if "noop_profile" in b.memo:
        out += ["", "cProfile of one no-op build (profiling inflates times; compare them with each other):", "",
                "```", *b.memo["noop_profile"], "```"]
    if "render_profile" in b.memo:
        out += ["", "## Where the render's time goes", "", "cProfile of one `expost render --force`:", "",
                "```", *b.memo["render_profile"], "```"]
    out += ["", "## Reproduce", "",
            "```bash", ".venv/bin/pip install -r bench/requirements.txt   # dvc, papermill, nbformat, ipykernel",
            ".venv/bin/python bench/run.py                      # this file; --quick, --rows, --device cuda",
            "```", ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke version: fewer repetitions, smaller sizes")
    parser.add_argument("--device", choices=("cpu", "cuda", "cuda-only"), default="cpu",
                        help="cuda: also measure the batched row with `--device cuda`; cuda-only: only that")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: bench/results.md for a full run, else bench/results-partial.md)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (workspaces, caches, profiles)")
    args = parser.parse_args()
    selected = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in selected if r not in ROWS]
    if unknown or not selected:
        parser.error(f"--rows: unknown row(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ROWS)}")
    selected = [r for r in ROWS if r in selected]
    out = args.out or BENCH / ("results.md" if selected == list(ROWS) and not args.quick else "results-partial.md")

    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = loadavg()
    t0 = time.perf_counter()
    b = Bench(args)
    print(f"expost bench: rows {', '.join(selected)}{' (quick)' if args.quick else ''}; temp dir {b.tmp}; "
          f"load {load_start}", file=sys.stderr)
    rows: list[Row] = []
    try:
        for name in selected:
            load = loadavg()
            t_row = time.perf_counter()
            print(f"[{time.perf_counter() - t0:6.1f} s] {name} (load {load}) ...", file=sys.stderr, flush=True)
            try:
                new = ROW_FUNCS[name](b)
            except BenchError as e:
                new = [Row(name, "error", met="n/a", notes=[str(e).replace("\n", " ")[:1500]])]
            for r in new:
                r.load = load
                print(f"           {r.name}: {r.expost} | {r.baseline} | {r.ratio} | {r.target} | {r.met}",
                      file=sys.stderr)
            print(f"           ({time.perf_counter() - t_row:.0f} s)", file=sys.stderr)
            rows += new
        total = time.perf_counter() - t0
        text = report(b, rows, machine(), started, load_start, total, selected)
        out.write_text(text)
    finally:
        if args.keep:
            print(f"kept {b.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(b.tmp, ignore_errors=True)
    print(plain_table(rows))
    print(f"\n{len(rows)} row(s) in {total / 60:.1f} min; load {load_start} at start, {loadavg()} at end; "
          f"written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
