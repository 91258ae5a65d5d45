"""Numbers that moved beyond seed noise, between two bundles of one post.

For each experiment, config (sweep point) and scalar output on both sides, paired by seed over
the seeds that both sides ran (seeds are 1..N on each side, so a post rebuilt with more seeds pairs
its first ones): the per-seed difference after - before (a difference within FLOAT_RTOL of the
values counts as none: floating-point noise, as `expost verify` tolerates) and the seeded bootstrap
95% CI of its mean (runs.stats.compare). A number moved beyond seed noise when that CI excludes 0.
Fewer than MIN_SEEDS paired seeds cannot tell a move from noise: listed as such. Non-finite values
(diverged runs) and optional outputs a run did not reach are left out of the pairs, and a change in
how many seeds diverged or did not reach an output is reported beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from expost.review.bundle import RunNumbers
from expost.runs.stats import compare

MIN_SEEDS = 3  # fewer seeds than this (as for claims) cannot tell a move from seed noise
FLOAT_RTOL = 1e-5  # per-seed differences this small (relative) are floating-point noise, as `expost verify` says

RULE = ("a number moved beyond seed noise when the 95% bootstrap CI of its mean per-seed difference (after - "
        "before, paired by seed over the seeds both sides ran) excludes 0")


@dataclass
class Moved:
    """One scalar output of one config whose CI of the difference excludes 0."""

    experiment: str
    config: str
    output: str
    before: float  # mean over the seeds compared (the paired seeds, or all of that side's)
    after: float
    diff: float  # mean difference, after - before
    ci: tuple[float, float]
    paired: int  # seeds paired
    up: int  # paired seeds whose value went up / down
    down: int


@dataclass
class Lost:
    """A change in how many seeds diverged (NaN/inf) or did not reach an optional output."""

    experiment: str
    config: str
    output: str
    before: int
    after: int
    n_before: int
    n_after: int


@dataclass
class Numbers:
    moved: list[Moved] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)
    tested: int = 0  # (config, output) pairs compared
    unchanged: int = 0  # of those, identical in every paired seed
    untestable: list[str] = field(default_factory=list)  # "exp [config] output: 2 seed(s) paired"
    only_before: list[str] = field(default_factory=list)  # "exp [config]" or "exp: output" on one side only
    only_after: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # experiment -> why it could not be compared

    @property
    def within_noise(self) -> int:
        return self.tested - self.unchanged - len(self.moved)


def _value(x) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _by_config(runs: list[RunNumbers]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        out.setdefault(r.label, {})[r.seed] = r.scalars
    return out


def compare_numbers(before: dict[str, list[RunNumbers]], after: dict[str, list[RunNumbers]],
                    missing: dict[str, str]) -> Numbers:
    """Compare every scalar of every config of every experiment on both sides."""
    out = Numbers(missing=dict(missing))
    for exp in sorted(set(before) | set(after)):
        if exp in missing:
            continue
        if exp not in after:
            out.only_before.append(exp)
            continue
        if exp not in before:
            out.only_after.append(exp)
            continue
        b, a = _by_config(before[exp]), _by_config(after[exp])
        out.only_before += [f"{exp} [{c}]" for c in b if c not in a]
        out.only_after += [f"{exp} [{c}]" for c in a if c not in b]
        names_b = {n for seeds in b.values() for s in seeds.values() for n in s}
        names_a = {n for seeds in a.values() for s in seeds.values() for n in s}
        out.only_before += [f"{exp}: {n}" for n in sorted(names_b - names_a)]
        out.only_after += [f"{exp}: {n}" for n in sorted(names_a - names_b)]
        for config in (c for c in b if c in a):
            for name in sorted(names_b & names_a):
                _one(out, exp, config, name, b[config], a[config])
    return out


def _one(out: Numbers, exp: str, config: str, name: str, before: dict, after: dict) -> None:
    vb = {s: _value(v.get(name)) for s, v in before.items()}
    va = {s: _value(v.get(name)) for s, v in after.items()}
    lost_b = sum(not math.isfinite(x) for x in vb.values())
    lost_a = sum(not math.isfinite(x) for x in va.values())
    if lost_b != lost_a:
        out.lost.append(Lost(exp, config, name, lost_b, lost_a, len(vb), len(va)))
    common = sorted(s for s in set(vb) & set(va) if math.isfinite(vb[s]) and math.isfinite(va[s]))
    if len(common) < MIN_SEEDS:
        out.untestable.append(f"{exp} [{config}] {name}: {len(common)} seed(s) paired")
        return
    out.tested += 1
    pb = np.array([vb[s] for s in common])
    pa = np.array([va[s] for s in common])
    noise = np.abs(pa - pb) <= FLOAT_RTOL * np.maximum(np.abs(pa), np.abs(pb))
    pa = np.where(noise, pb, pa)
    if not (pa != pb).any():
        out.unchanged += 1
        return
    c = compare(pa, pb)
    if c.significant:
        out.moved.append(Moved(exp, config, name, float(pb.mean()), float(pa.mean()), c.diff_mean, c.diff_ci,
                               len(common), int((pa > pb).sum()), int((pa < pb).sum())))
