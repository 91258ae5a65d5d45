"""Run what the cache lacks: planned runs become tasks (one per run, or one per block of seeds for
an experiment with run_batch), the runner executes them, and the index remembers each slot's last
key for --explain. Every completed run is cached even when others fail."""

from __future__ import annotations

from typing import Callable

from expost.layout import Layout
from expost.runs.cache import Cache
from expost.runs.claims import validate
from expost.runs.plan import PlannedRun, Selection
from expost.runs.spec import Spec


def missing_runs(cache: Cache, runs: list[PlannedRun], force: bool = False) -> list[PlannedRun]:
    """Runs to execute: absent, or present but corrupt (checksums are verified; corrupt entries
    are set aside and listed in cache.quarantined)."""
    return list(runs) if force else [r for r in runs if not cache.valid(r.key)]


def run_all(ws: Layout, specs: list[Spec], plans: dict[str, list[PlannedRun]], sel: Selection, jobs: int,
            force: bool = False, on_done: Callable[[object], None] | None = None,
            on_start: Callable[[int], None] | None = None,
            on_corrupt: Callable[[list], None] | None = None, timeout: float | None = None,
            on_submit: Callable[[tuple], None] | None = None, executor=None,
            on_progress: Callable[[PlannedRun, dict], None] | None = None) -> list:
    """Validate what must run, then run it (where `executor`, a cluster.ExecutorChoice, says: local
    processes by default). Every completed run is cached even if others fail."""
    from expost.runs.cluster import opened
    from expost.runs.runner import execute

    cache = Cache(ws.cache_dir)
    cache.ensure_writable()
    todo = {s.name: missing_runs(cache, plans[s.name], force) for s in specs}
    if force:
        for runs in todo.values():
            for r in runs:
                cache.remove(r.key)
    if on_corrupt and cache.quarantined:
        on_corrupt(cache.quarantined)
    tasks = []
    for spec in specs:
        if todo[spec.name]:
            full = validate(spec, sel)  # raises before any run starts
            tasks += make_tasks(full, todo[spec.name], cache, timeout or full.timeout)
    if on_start:
        on_start(sum(len(getattr(t, "runs", (None,))) for t in tasks))
    outcomes: list = []

    def done(o) -> None:
        outcomes.append(o)
        if on_done:
            on_done(o)

    try:
        with opened(executor if tasks else None, jobs, sel.device) as pool:  # nothing to run: no connection
            execute(tasks, jobs, done, sel.device, executor=pool, on_submit=on_submit, on_progress=on_progress)
    finally:
        _record(cache, outcomes, {s.name: s for s in specs})
    return outcomes


def make_tasks(full: Spec, runs: list[PlannedRun], cache: Cache, timeout: float | None = None) -> list:
    """One task per run; for an experiment with run_batch, one task per fixed block of seeds
    (a whole block reruns when any of its seeds is missing, so numbers never depend on history)."""
    from expost.runs.plan import with_seed
    from expost.runs.runner import BATCH_BLOCK, BatchTask, Task

    outputs = {n: o.declared for n, o in full.outputs.items()}  # "scalar?": None allowed (not reached)
    log = lambda r: str(cache.log_path(r.experiment, r.label, r.seed))
    if not full.batched:
        return [Task(r, str(full.path), outputs, str(cache.root), log(r), timeout) for r in runs]
    blocks: dict = {}
    for r in runs:
        blocks.setdefault((r.config, (r.seed - 1) // BATCH_BLOCK), r)
    tasks = []
    for (_, block), r in blocks.items():
        members = tuple(with_seed(r, s) for s in range(block * BATCH_BLOCK + 1, (block + 1) * BATCH_BLOCK + 1))
        tasks.append(BatchTask(members, str(full.path), outputs, str(cache.root), tuple(log(m) for m in members),
                               timeout))
    return tasks


def _record(cache: Cache, outcomes: list, specs: dict) -> None:
    """Remember each slot's last key (and the code parts behind it) for --explain."""
    by_exp: dict[str, dict] = {}
    for o in outcomes:
        r = o.run
        by_exp.setdefault(r.experiment, {})[r.slot] = {
            "key": r.key, "source": r.source_hash, "config": r.config_hash, "env": r.env_hash,
            "status": "ok" if o.ok else "failed"}
    try:  # --explain's memory only: a full or read-only disk must not hide what happened to the runs
        for exp, records in by_exp.items():
            cache.update_index(exp, records)
            if exp in specs and specs[exp].parts:
                cache.update_parts(exp, specs[exp].source_hash, specs[exp].parts)
    except OSError:
        pass
