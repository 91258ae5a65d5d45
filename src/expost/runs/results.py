"""What templates and claims see: runs selected by config, grouped by an axis, as per-seed arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from expost.errors import NoRunsError, ResultError
from expost.runs.plan import config_label
from expost.runs.stats import Comparison, Summary, compare, summarize


@dataclass
class Record:
    """One completed run as seen by readers of the cache."""

    experiment: str
    point: dict
    config: dict
    seed: int
    scalars: dict
    load_series: Callable[[str], np.ndarray]
    nonfinite: tuple = ()
    wall_s: float = 0.0
    key: str = ""
    series_len: dict | None = None  # from the cache entry: lets series() preallocate
    digest: str = ""  # the sha256 of its cache entry (record_sha256), vouching for every value in it
    artifacts: dict | None = None  # relative path -> sha256 of each file the run wrote to EXPOST_ARTIFACTS


def _matches(value, wanted) -> bool:
    if isinstance(wanted, (list, tuple, set)):
        return any(_matches(value, w) for w in wanted)
    if isinstance(value, float) or isinstance(wanted, float):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return value == wanted


class ResultSet:
    """An immutable selection of runs of one experiment."""

    def __init__(self, records: list[Record], outputs: dict | None = None, experiment: str = ""):
        self.records = sorted(records, key=lambda r: r.seed)
        self.outputs = outputs or {}  # name -> kind: "series", "scalar" or "scalar?" (optional)
        self.experiment = experiment or (records[0].experiment if records else "")

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"<ResultSet {self.experiment}: {len(self.configs)} config(s), {len(self.seeds)} seed(s)>"

    def _new(self, records) -> "ResultSet":
        return ResultSet(records, self.outputs, self.experiment)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.records})

    @property
    def configs(self) -> list[dict]:
        """Distinct sweep points, in first-seen order."""
        out: list[dict] = []
        for r in sorted(self.records, key=lambda r: r.seed):
            if r.point not in out:
                out.append(r.point)
        return out

    def param(self, name: str):
        """The value of a parameter that is the same in every run of this selection."""
        values = {repr(r.config.get(name)) for r in self.records}
        if not self.records or name not in self.records[0].config:
            raise ResultError(f"{self.experiment}: param({name!r}): no such parameter in this selection")
        if len(values) > 1:
            raise ResultError(f"{self.experiment}: param({name!r}) differs across this selection "
                              f"({', '.join(sorted(values))}); narrow it with .where(...)")
        return self.records[0].config[name]

    def where(self, **selection) -> "ResultSet":
        """Runs whose config matches every key (a list value means any of those)."""
        if self.records:
            known = self.records[0].config
            for k in selection:
                if k not in known:
                    raise ResultError(f"{self.experiment}: where({k}=...): no parameter {k!r}; "
                                      f"parameters are {', '.join(sorted(known))}")
        return self._new([r for r in self.records if all(_matches(r.config[k], v) for k, v in selection.items())])

    def group_by(self, axis: str) -> dict:
        """axis value -> ResultSet: numbers ascending, other values in the order first seen."""
        groups: dict = {}
        for r in self.records:
            if axis not in r.config:
                raise ResultError(f"{self.experiment}: group_by({axis!r}): no parameter {axis!r}; "
                                  f"parameters are {', '.join(sorted(r.config))}")
            groups.setdefault(r.config[axis], []).append(r)
        keys = list(groups)
        if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys):
            keys.sort()  # numbers ascending (1e-5 ... 0.1), whatever order the sweep listed them in
        return {k: self._new(groups[k]) for k in keys}

    def _check_output(self, name: str, kind: str) -> None:
        if self.outputs and name not in self.outputs:
            raise ResultError(f"{self.experiment}: no output {name!r}; declared outputs: {', '.join(self.outputs)}")
        declared = self.outputs.get(name, kind).rstrip("?")
        if declared != kind:
            raise ResultError(f"{self.experiment}: output {name!r} is a {declared}, not a {kind}; "
                              f"use .{declared}({name!r})")

    def optional(self, name: str) -> bool:
        """Declared "scalar?": a run may not reach it (None), which is not a divergence."""
        return self.outputs.get(name, "").endswith("?")

    def _single(self, what: str) -> None:
        cfgs = self.configs
        if len(cfgs) > 1:
            shown = "; ".join(config_label(c) for c in cfgs[:4]) + (" ..." if len(cfgs) > 4 else "")
            raise ResultError(f"{self.experiment}: {what} needs one config, this selection has {len(cfgs)} "
                              f"({shown}); narrow it with .where(...) or use .group_by(axis)")
        if not self.records:
            raise NoRunsError(f"{self.experiment}: {what}: no runs match this selection")

    def scalar(self, name: str) -> np.ndarray:
        """One value per seed (sorted by seed). For an optional output ("scalar?"), NaN where the
        run did not reach it: tell that from a divergence with reached(name)."""
        self._check_output(name, "scalar")
        self._single(f"scalar({name!r})")
        return np.array([np.nan if r.scalars[name] is None else r.scalars[name] for r in self.records], dtype=float)

    def reached(self, name: str) -> np.ndarray:
        """One bool per seed (sorted by seed): did the run reach this optional output (return a
        value, NaN included, rather than None)? Always true for an output that is not optional."""
        self._check_output(name, "scalar")
        self._single(f"reached({name!r})")
        return np.array([r.scalars[name] is not None for r in self.records], dtype=bool)

    def series(self, name: str) -> np.ndarray:
        """A seeds x steps array (shorter runs padded with NaN)."""
        self._check_output(name, "series")
        self._single(f"series({name!r})")
        # float32, as stored; filled row by row, so 1000 seeds x 1e5 steps stay at 400 MB.
        lengths = [(r.series_len or {}).get(name) for r in self.records]
        rows = [None] * len(self.records)
        if None in lengths:  # lengths unknown (not from the cache): load first
            rows = [np.asarray(r.load_series(name), dtype=np.float32) for r in self.records]
            lengths = [len(a) for a in rows]
        out = np.full((len(self.records), max(lengths)), np.nan, dtype=np.float32)
        for i, r in enumerate(self.records):
            a = rows[i] if rows[i] is not None else r.load_series(name)
            out[i, :len(a)] = a
            rows[i] = None
        return out

    def stats(self, name: str) -> Summary:
        """Summary over seeds; NaN/inf count as diverged (n_nonfinite), seeds that did not reach an
        optional output as not reached (n_unreached): both left out of the numbers."""
        values, reached = self.scalar(name), self.reached(name)
        return summarize(values[reached], n_unreached=int((~reached).sum()))

    def compare(self, other: "ResultSet", name: str) -> Comparison:
        """Paired comparison of a scalar between two selections over their common seeds."""
        common = sorted(set(self.seeds) & set(other.seeds))
        a = self._new([r for r in self.records if r.seed in common]).scalar(name)
        b = other._new([r for r in other.records if r.seed in common]).scalar(name)
        return compare(a, b)

    @property
    def nonfinite_runs(self) -> list[Record]:
        """Runs that diverged: NaN/inf in some output (not reaching an optional one is not that)."""
        return [r for r in self.records if r.nonfinite]

    def unreached(self) -> dict[str, int]:
        """Optional output -> seeds (runs) that did not reach it, for those with any."""
        out = {}
        for name in self.outputs:
            if self.optional(name):
                k = sum(r.scalars.get(name) is None for r in self.records)
                if k:
                    out[name] = k
        return out


def series_digest(values) -> str:
    """sha256 of a series as the cache stores it (float32): what manifests record and verify checks."""
    import hashlib

    return hashlib.sha256(np.asarray(values, dtype=np.float32).tobytes()).hexdigest()


def identity(rs: ResultSet) -> dict | None:
    """What vouches for everything a ResultSet holds: each record's run key, cache-entry sha256,
    seed and config (a key for results derived from it); None when a record was not read from the
    cache, so nothing vouches for its values."""
    if not all(r.digest for r in rs.records):
        return None
    return {"experiment": rs.experiment, "outputs": rs.outputs,
            "records": [[r.key, r.digest, r.seed, r.point, r.config] for r in rs.records]}


def from_cache(cache, spec, runs: list) -> "ResultSet":
    """The cached runs among `runs` as a ResultSet (missing ones are left out)."""
    from expost.runs.cache import RECORD_SHA

    records = []
    for r in runs:
        entry = cache.read(r.key)  # verified: the entry's contents match its record_sha256
        if entry is None:
            continue
        m = entry.meta
        records.append(Record(r.experiment, r.point_dict, r.cfg, r.seed, m["scalars"], entry.series,
                              tuple(m.get("nonfinite", ())), m.get("wall_s", 0.0), r.key, m.get("series_len"),
                              m[RECORD_SHA], m.get("artifacts_sha256")))
    return ResultSet(records, {n: o.declared for n, o in spec.outputs.items()}, spec.name)
