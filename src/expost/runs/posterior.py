"""The posterior of a claim's per-seed rate, and what more seeds would do to it (runs/budget.py
turns these into advice).

The seeds of a per-seed claim are independent draws with rate p; Jeffreys' prior Beta(1/2, 1/2)
gives the posterior Beta(k + 1/2, n - k + 1/2) after k of n seeds. A claim is decided at
confidence c when at least c of it lies on the verdict's side of min_frac; the chance that N seeds
in all decide it sums the Beta-Binomial of the N - n seeds to come exactly. Plain numpy and math
(no scipy): the incomplete beta function is its continued fraction.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from expost.runs.claims import FAILS, HOLDS

TARGET = 0.8  # the advice names the fewest seeds at which a claim is at least this likely to be settled
BLOCK = 10  # seeds are added in blocks, as run_batch runs them (1-10, 11-20, ...)
MAX_SEEDS = 1000  # the advice looks no further than this many seeds
PRIOR = 0.5  # Jeffreys: Beta(1/2, 1/2)


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (the Beta(a, b) CDF at x), by its
    continued fraction (modified Lentz), without scipy."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 100_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return min(1.0, max(0.0, front * f))


def prob_holds(k: int, n: int, min_frac: float) -> float:
    """P(per-seed rate >= min_frac) after k of n seeds, under the Jeffreys posterior."""
    return 1.0 - betainc(k + PRIOR, n - k + PRIOR, min_frac)


def side(k: int, n: int, min_frac: float, confidence: float) -> str | None:
    """HOLDS or FAILS when the seeds decide the claim at `confidence`, else None. The side must
    also be the verdict's (k/n against min_frac), so advice never contradicts the table."""
    if n < 1:
        return None
    p = prob_holds(k, n, min_frac)
    if p >= confidence and k >= min_frac * n:
        return HOLDS
    if 1.0 - p >= confidence and k < min_frac * n:
        return FAILS
    return None


@lru_cache(maxsize=65536)
def thresholds(n: int, min_frac: float, confidence: float) -> tuple[int, int]:
    """(lo, hi): at n seeds the claim is decided "fails" when k <= lo and "holds" when k >= hi
    (lo = -1, hi = n + 1 when a side cannot be reached). P(rate >= f) grows with k: bisect."""
    def first(pred) -> int:  # the smallest k in 0..n+1 with pred(k), pred monotone rising
        lo, hi = 0, n + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    hi = first(lambda k: k <= n and side(k, n, min_frac, confidence) == HOLDS)
    lo = first(lambda k: k > n or side(k, n, min_frac, confidence) != FAILS) - 1
    return lo, hi


def beta_binomial(m: int, a: float, b: float) -> np.ndarray:
    """P(j of m new seeds hold), j = 0..m, when the rate is Beta(a, b)."""
    j = np.arange(m + 1, dtype=float)
    log_ratio = np.log(m - j[:-1]) - np.log(j[:-1] + 1) + np.log(j[:-1] + a) - np.log(m - j[:-1] - 1 + b)
    log0 = math.lgamma(a + b) + math.lgamma(m + b) - math.lgamma(b) - math.lgamma(m + a + b)
    logp = log0 + np.concatenate([[0.0], np.cumsum(log_ratio)])
    p = np.exp(logp - logp.max())
    return p / p.sum()


def chance(k: int, n: int, total: int, min_frac: float, confidence: float) -> float:
    """The posterior-predictive chance that the claim is decided at `confidence` once `total`
    seeds in all are in (the first n gave k)."""
    if total <= n:
        return 1.0 if side(k, n, min_frac, confidence) else 0.0
    lo, hi = thresholds(total, min_frac, confidence)
    pmf = beta_binomial(total - n, k + PRIOR, n - k + PRIOR)
    j_lo, j_hi = lo - k, hi - k  # new seeds that hold: decided fails when j <= j_lo, holds when j >= j_hi
    p = pmf[:j_lo + 1].sum() if j_lo >= 0 else 0.0
    p += pmf[max(j_hi, 0):].sum() if j_hi <= total - n else 0.0
    return float(min(1.0, p))


def seeds_needed(k: int, n: int, min_frac: float, confidence: float, target: float = TARGET,
                 block: int = BLOCK, cap: int = MAX_SEEDS) -> tuple[int | None, float]:
    """(N, its chance): the fewest seeds in all, a multiple of `block` above n, whose chance to
    settle the claim reaches `target`; (None, the chance at `cap`) when none up to `cap` does."""
    total = (n // block + 1) * block
    p = 0.0
    while total <= cap:
        p = chance(k, n, total, min_frac, confidence)
        if p >= target:
            return total, p
        total += block
    return None, p


def lower_bound(n: int, confidence: float) -> float:
    """All n seeds hold: the rate r with P(rate >= r) = confidence under the posterior (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 1.0 - betainc(n + PRIOR, PRIOR, mid) >= confidence:
            lo = mid
        else:
            hi = mid
    return lo


# --- sequential looks -------------------------------------------------------------------------------

def looks(start: int, max_seeds: int, block: int = BLOCK) -> list[int]:
    """The seeds at each look of --until-decided: the start, then every block boundary up to
    max_seeds (the last look at max_seeds itself)."""
    out = [start]
    while out[-1] < max_seeds:
        out.append(min(max_seeds, (out[-1] // block + 1) * block))
    return out


def corrected(confidence: float, n_looks: int) -> float:
    """The confidence each of n_looks looks needs so that all of them together err with chance at
    most 1 - confidence (Bonferroni)."""
    return 1.0 - (1.0 - confidence) / max(1, n_looks)
