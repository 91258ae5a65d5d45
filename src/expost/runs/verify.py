"""`expost verify`: rerun seeds without the cache and compare with what the post recorded.

The recorded numbers are the post's published per-seed results (publish/NAME/gist/results-*.json:
scalars, and a sha256 of every series); where the cache still holds a run, its series give the
size of a difference. One seed is run twice to tell nondeterminism from drift.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expost.runs.cache import Cache
from expost.runs.results import series_digest
from expost.errors import PublishError
from expost.runs.claims import validate
from expost.runs.sweep import make_tasks
from expost.runs.runner import execute

RTOL = 1e-5
IDENTICAL, WITHIN, DRIFTED = "identical", "within tolerance", "drifted"


@dataclass
class Quantity:
    experiment: str
    name: str
    status: str
    runs: int
    max_rel: float = 0.0
    where: str = ""


@dataclass
class Report:
    quantities: list[Quantity] = field(default_factory=list)
    nondeterministic: dict = field(default_factory=dict)  # experiment -> max rel diff between two runs of one seed
    failures: list = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return any(q.status == DRIFTED for q in self.quantities)


def rel_diff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    ok = ~(both_nan | same_inf)
    if not ok.any():
        return 0.0
    a, b = a[ok], b[ok]
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)
    return float(np.max(np.abs(a - b) / scale))


def _status(diff: float) -> str:
    return IDENTICAL if diff == 0 else WITHIN if diff <= RTOL else DRIFTED


def verify(ws, pp, sel, seeds: int | None, jobs: int) -> Report:
    out_dir = ws.publish_dir / pp.post.name / "gist"
    report = Report()
    cache = Cache(ws.cache_dir)
    for name, spec in pp.specs.items():
        path = out_dir / f"results-{name}.json"
        try:
            recorded = json.loads(path.read_text())
        except FileNotFoundError:
            raise PublishError(f"{ws.rel(path)} not found: build the post first (`expost build {pp.post.name}`)") from None
        by_key = {r["key"]: r for r in recorded["runs"]}
        full = validate(spec, sel)
        outputs = {n: o.kind for n, o in full.outputs.items()}
        all_seeds = sorted({r.seed for r in pp.plans[name]})
        chosen = set(all_seeds[:seeds] if seeds else all_seeds)
        runs = [r for r in pp.plans[name] if r.seed in chosen]
        missing = [r for r in runs if r.key not in by_key]
        if missing:
            raise PublishError(f"{ws.rel(path)} has no record of {len(missing)} planned run(s) (e.g. "
                               f"{missing[0].label} seed {missing[0].seed}): rebuild the post first")
        with tempfile.TemporaryDirectory(prefix="expost-verify-") as tmp:
            fresh = Cache(Path(tmp) / "a")
            twice = Cache(Path(tmp) / "b")
            tasks = make_tasks(full, runs, fresh) + make_tasks(full, runs[:1], twice)
            outcomes = execute(tasks, jobs, device=sel.device)
            report.failures += [o for o in outcomes if not o.ok]
            a, b = fresh.read(runs[0].key), twice.read(runs[0].key)
            if a is not None and b is not None:
                diffs = [rel_diff(a.scalars[k], b.scalars[k]) for k in a.scalars]
                diffs += [rel_diff(a.series(k), b.series(k)) for k in outputs if outputs[k] == "series"]
                report.nondeterministic[name] = max(diffs, default=0.0)
            report.quantities += _compare(name, runs, outputs, fresh, cache, by_key)
    return report


def _compare(name, runs, outputs, fresh: Cache, cache: Cache, by_key) -> list[Quantity]:
    worst: dict[str, tuple[float, str]] = {}
    counted: dict[str, int] = {}
    for r in runs:
        entry = fresh.read(r.key)
        if entry is None:
            continue
        rec = by_key[r.key]
        old = cache.read(r.key)
        for out, kind in outputs.items():
            if kind == "scalar":
                diff = rel_diff(entry.scalars[out], rec["scalars"][out])
            else:
                new = entry.series(out)
                if series_digest(new) == rec["series_sha256"][out]:
                    diff = 0.0
                elif old is not None and series_digest(old.series(out)) == rec["series_sha256"][out]:
                    diff = max(rel_diff(new, old.series(out)), 1e-300)
                else:
                    diff = math.inf  # differs, and no recorded values to size the difference
            counted[out] = counted.get(out, 0) + 1
            if diff > worst.get(out, (-1.0, ""))[0]:
                worst[out] = (diff, f"{r.label} seed {r.seed}")
    return [Quantity(name, out, _status(d), counted[out], d, where) for out, (d, where) in worst.items()]
