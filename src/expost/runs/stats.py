"""Statistics across seeds: summaries with seeded bootstrap CIs, and paired comparisons.

Bootstraps use a fixed generator seed so that rebuilding a post gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20221130  # the date of the S-curves post; any fixed value makes rebuilds identical
CI_LEVEL = 0.95


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end, as rliable)."""
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    if n == 0:
        return float("nan")
    cut = int(np.floor(0.25 * n))
    return float(x[cut:n - cut].mean())


def bootstrap_ci(x, statistic=np.mean, level: float = CI_LEVEL, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` over seeds; deterministic for a given input."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(samples, len(x)))
    stats = statistic(x[idx], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class Summary:
    """One quantity across seeds. Non-finite values (diverged) and, for an optional output, seeds
    that did not reach it are counted apart and left out of the numbers."""

    n: int
    n_nonfinite: int
    mean: float
    median: float
    iqm: float
    std: float
    min: float
    max: float
    mean_ci: tuple[float, float]
    median_ci: tuple[float, float]
    n_unreached: int = 0  # an optional output ("scalar?") that the run did not reach: not a divergence

    @property
    def total(self) -> int:
        """Seeds in all: with a value, diverged (NaN/inf) and not reached."""
        return self.n + self.n_nonfinite + self.n_unreached

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / |mean|); inf when the mean is 0."""
        return abs(self.std / self.mean) if self.mean else float("inf")


def summarize(values, n_unreached: int = 0) -> Summary:
    """`values`: the seeds that produced a value (NaN/inf counted as diverged); `n_unreached`:
    the seeds of an optional output that did not reach it."""
    x = np.asarray(values, dtype=float).ravel()
    finite = x[np.isfinite(x)]
    nan = float("nan")
    if len(finite) == 0:
        return Summary(0, len(x), nan, nan, nan, nan, nan, nan, (nan, nan), (nan, nan), n_unreached)
    return Summary(
        n=len(finite), n_nonfinite=int(len(x) - len(finite)),
        mean=float(finite.mean()), median=float(np.median(finite)), iqm=iqm(finite),
        std=float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
        min=float(finite.min()), max=float(finite.max()),
        mean_ci=bootstrap_ci(finite, np.mean), median_ci=bootstrap_ci(finite, np.median),
        n_unreached=n_unreached,
    )


@dataclass(frozen=True)
class Comparison:
    """a vs b over the same seeds: difference a - b per seed."""

    n: int
    diff_mean: float
    diff_ci: tuple[float, float]
    frac_greater: float  # fraction of seeds where a > b
    prob_improvement: float  # P(a > b) over all pairs (ties count half), as in rliable

    @property
    def significant(self) -> bool:
        """The CI of the paired difference excludes 0."""
        lo, hi = self.diff_ci
        return lo > 0 or hi < 0


def compare(a, b) -> Comparison:
    """Paired comparison of two per-seed arrays (same seeds, same order)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same seeds on both sides: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = a - b
    if len(d) == 0:
        nan = float("nan")
        return Comparison(0, nan, (nan, nan), nan, nan)
    gt = (a[:, None] > b[None, :]).mean()
    eq = (a[:, None] == b[None, :]).mean()
    return Comparison(len(d), float(d.mean()), bootstrap_ci(d, np.mean), float((d > 0).mean()),
                      float(gt + 0.5 * eq))
