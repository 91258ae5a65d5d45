"""The stages in order, for the CLI: load -> plan -> run -> cache -> results -> claims.

Each function calls one stage's library code and returns data; nothing here prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from expost.runs.cache import Cache
from expost.files import atomic_write_text
from expost.freshness import StaticSpecs
from expost.errors import ConfigError, SpecError
from expost.runs.plan import (MAX_RUNS, MAX_RUNS_WITHOUT_CONFIRM, PlannedRun, coerce, configs, count_at_least,
                              plan)
from expost.runs.spec import Spec, discover, load_full
from expost.layout import Layout


@dataclass
class Selection:
    """What the user asked for on the command line."""

    names: tuple = ()
    seeds: int | None = None
    set: dict = field(default_factory=dict)  # raw strings, coerced per experiment
    where: dict = field(default_factory=dict)
    device: str = "cpu"


def load_specs(ws: Layout, names=()) -> list[Spec]:
    """The named experiments' static specs (all of them when no names are given)."""
    names = tuple(dict.fromkeys(names))  # `expost run toy toy` means toy once
    paths = discover(ws.experiments_dir)
    by_name = {p.stem: p for p in paths}
    for n in names:
        if n not in by_name:
            raise SpecError(f"no experiment {n!r} in {ws.rel(ws.experiments_dir)}/. "
                            f"Available: {', '.join(by_name) or '(none)'}")
    chosen = [by_name[n] for n in names] if names else paths
    specs = StaticSpecs(ws).load(chosen)
    seen = {}
    for s in specs:
        if s.name in seen:
            raise SpecError(f"{s.path.name}: duplicate experiment name {s.name!r}. Rename one of the files.")
        seen[s.name] = s
    return specs


def validate(spec: Spec, sel: Selection) -> Spec:
    """Full load (import, CLAIMS) plus a dry run of every claim on placeholder results."""
    from expost.runs import claims as claims_mod

    full = spec if spec.module is not None else load_full(spec.path)
    _overrides(full, sel)  # type-check --set/--where against the parameters
    # Claims are a property of the file: dry-run them on the declared sweep, not the selection.
    claims_mod.dry_run(full, configs(full))
    return full


def _overrides(spec: Spec, sel: Selection) -> tuple[dict, dict]:
    over = {k: coerce(spec, k, v, "--set") for k, v in sel.set.items()}
    where = {k: coerce(spec, k, v, "--where") for k, v in sel.where.items()}
    return over, where


def plan_runs(specs: list[Spec], sel: Selection, confirm_large: bool = True) -> dict[str, list[PlannedRun]]:
    """Every planned run, keyed. The plan's size is counted first, without building it: over
    MAX_RUNS_WITHOUT_CONFIRM runs needs confirmation (--yes), over MAX_RUNS is refused."""
    limit = MAX_RUNS_WITHOUT_CONFIRM if confirm_large else MAX_RUNS
    sizes = {}
    for spec in specs:
        over, where = _overrides(spec, sel)
        sizes[spec.name] = count_at_least(spec, sel.seeds, over, where, limit - sum(sizes.values()))
        if sum(sizes.values()) > limit:
            break
    total = sum(sizes.values())
    if total > MAX_RUNS:
        raise ConfigError(f"this plan has more than {MAX_RUNS} runs ({', '.join(f'{n}: {c}+' for n, c in sizes.items())}); "
                          "expost holds a plan in memory, so split it: narrow it with --where/--seeds, or "
                          "shrink SWEEP/SEEDS")
    if confirm_large and total > MAX_RUNS_WITHOUT_CONFIRM:
        shown = ", ".join(f"{n}: {c}" for n, c in sizes.items())
        raise ConfigError(f"this plan has more than {MAX_RUNS_WITHOUT_CONFIRM} runs ({shown}, counted so far). "
                          "Narrow it with --where/--seeds, or pass --yes to run them all.")
    plans = {}
    for spec in specs:
        over, where = _overrides(spec, sel)
        runs = plan(spec, sel.seeds, over, where, sel.device)
        if not runs and where:
            raise ConfigError(f"--where {', '.join(f'{k}={v}' for k, v in sel.where.items())}: no config of "
                              f"{spec.name} matches. Sweep points: "
                              + "; ".join(str(p) for p in spec.points()))
        plans[spec.name] = runs
    return plans


def missing_runs(cache: Cache, runs: list[PlannedRun], force: bool = False) -> list[PlannedRun]:
    """Runs to execute: absent, or present but corrupt (checksums are verified; corrupt entries
    are set aside and listed in cache.quarantined)."""
    return list(runs) if force else [r for r in runs if not cache.valid(r.key)]


def run_all(ws: Layout, specs: list[Spec], plans: dict[str, list[PlannedRun]], sel: Selection, jobs: int,
            force: bool = False, on_done: Callable[[object], None] | None = None,
            on_start: Callable[[int], None] | None = None,
            on_corrupt: Callable[[list], None] | None = None) -> list:
    """Validate what must run, then run it. Every completed run is cached even if others fail."""
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
            tasks += make_tasks(full, todo[spec.name], cache)
    if on_start:
        on_start(sum(len(getattr(t, "runs", (None,))) for t in tasks))
    outcomes: list = []

    def done(o) -> None:
        outcomes.append(o)
        if on_done:
            on_done(o)

    try:
        execute(tasks, jobs, done, sel.device)
    finally:
        _record(cache, outcomes)
    return outcomes


def make_tasks(full: Spec, runs: list[PlannedRun], cache: Cache) -> list:
    """One task per run; for an experiment with run_batch, one task per fixed block of seeds
    (a whole block reruns when any of its seeds is missing, so numbers never depend on history)."""
    from expost.runs.plan import with_seed
    from expost.runs.runner import BATCH_BLOCK, BatchTask, Task

    outputs = {n: o.kind for n, o in full.outputs.items()}
    log = lambda r: str(cache.log_path(r.experiment, r.label, r.seed))
    if not full.batched:
        return [Task(r, str(full.path), outputs, str(cache.root), log(r)) for r in runs]
    blocks: dict = {}
    for r in runs:
        blocks.setdefault((r.config, (r.seed - 1) // BATCH_BLOCK), r)
    tasks = []
    for (_, block), r in blocks.items():
        members = tuple(with_seed(r, s) for s in range(block * BATCH_BLOCK + 1, (block + 1) * BATCH_BLOCK + 1))
        tasks.append(BatchTask(members, str(full.path), outputs, str(cache.root), tuple(log(m) for m in members)))
    return tasks


def _record(cache: Cache, outcomes: list) -> None:
    by_exp: dict[str, dict] = {}
    for o in outcomes:
        r = o.run
        by_exp.setdefault(r.experiment, {})[r.slot] = {
            "key": r.key, "source": r.source_hash, "config": r.config_hash, "env": r.env_hash,
            "status": "ok" if o.ok else "failed"}
    for exp, records in by_exp.items():
        cache.update_index(exp, records)


def results(ws: Layout, spec: Spec, runs: list[PlannedRun]):
    """The cached runs among `runs` as a ResultSet (missing ones are left out)."""
    from expost.runs.results import Record, ResultSet

    cache = Cache(ws.cache_dir)
    records = []
    for r in runs:
        entry = cache.read(r.key)
        if entry is None:
            continue
        m = entry.meta
        records.append(Record(r.experiment, r.point_dict, r.cfg, r.seed, m["scalars"], entry.series,
                              tuple(m.get("nonfinite", ())), m.get("wall_s", 0.0), r.key, m.get("series_len")))
    return ResultSet(records, {n: o.kind for n, o in spec.outputs.items()}, spec.name)


def check(ws: Layout, spec: Spec, runs: list[PlannedRun], sel: Selection) -> list:
    """Evaluate the claims of one (fully loaded) experiment on its cached results; remember verdicts."""
    from expost.runs import claims as claims_mod

    full = validate(spec, sel)
    rs = results(ws, full, runs)
    n_planned = len({r.seed for r in runs})
    verdicts = claims_mod.evaluate(full, rs, n_planned)
    path = Cache(ws.cache_dir).root / "claims" / f"{spec.name}.json"
    atomic_write_text(path, json.dumps({"source": spec.file_hash, "seeds": n_planned,
                                        "verdicts": [v.as_dict() for v in verdicts]}, indent=1, sort_keys=True))
    return verdicts


def known_verdicts(ws: Layout, spec: Spec) -> list[dict] | None:
    """Verdicts from the last `check` of this exact source, if any."""
    path = Cache(ws.cache_dir).root / "claims" / f"{spec.name}.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data["verdicts"] if data.get("source") == spec.file_hash else None
