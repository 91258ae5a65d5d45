"""Seed-variance caveats, generated from the numbers (never typed into a template).

Each rule is a small function returning a sentence or "" so that templates and the automatic
"Seed variance and reproducibility" section can use them and tests can trigger each one:
(a) a claim that holds in fewer than all seeds says "k of n";
(b) two conditions whose intervals overlap are "within seed noise";
(c) large spread (coefficient of variation above 0.25, or range above the median) is called out;
(d) diverged / NaN runs are counted, and apart from them, the seeds that did not reach an optional
    output ("scalar?": the run returned None), which are not a divergence;
(e) fewer than 5 seeds draws a few-seeds warning.
"""

from __future__ import annotations

from expost.runs.claims import ERROR, FAILS, HOLDS, INCONCLUSIVE, Verdict, not_reached
from expost.fmt import num
from expost.runs.stats import Comparison, Summary

FEW_SEEDS = 5
CV_LIMIT = 0.25


def claim_sentence(v: Verdict) -> str:
    """(a) The verdict in words, with k of n whenever not every seed agrees; for a claim marked
    as expected not to hold, whether that expectation was met."""
    text = _verdict_words(v)
    if v.xfail and v.verdict == FAILS:
        return f"{text} (expected: {v.xfail})"
    if v.xfail and v.verdict == HOLDS:
        return f"{text}, although it was expected not to ({v.xfail})"
    return text


def _verdict_words(v: Verdict) -> str:
    where = f" ({v.group})" if v.group else ""
    if v.verdict == ERROR:
        return f"could not be checked{where}: {v.detail}"
    if not v.per_seed:
        base = {HOLDS: "holds", FAILS: "does not hold", INCONCLUSIVE: "is inconclusive"}[v.verdict]
        return f"{base}, judged on all {v.n_seeds} seeds together{where}"
    need = f"; needs {v.min_frac:.0%}" if v.min_frac < 1 else ""
    missing = f"; {v.missing} seed(s) missing" if v.missing else ""
    if v.verdict == HOLDS:
        text = f"holds in all {v.n} seeds" if v.k == v.n else f"holds in {v.k} of {v.n} seeds{need}"
    elif v.verdict == FAILS:
        text = f"does not hold: true in {v.k} of {v.n} seeds{need or '; needs all'}"
    else:
        text = f"is inconclusive: true in {v.k} of {v.n} seeds{need}{missing}"
        return text + where
    return text + missing + where


def few_seeds(s: Summary) -> str:
    """(e) Fewer than 5 seeds."""
    total = s.total
    if total >= FEW_SEEDS:
        return ""
    return f"Only {total} seed{'s' if total != 1 else ''}: too few to judge seed variance; treat these numbers as anecdotal."


def diverged(s: Summary, name: str) -> str:
    """(d) Non-finite runs are counted, never silently dropped."""
    if not s.n_nonfinite:
        return ""
    return (f"{s.n_nonfinite} of {s.total} runs diverged (NaN/inf in {name}) and are left out of the numbers "
            f"for {name}.")


def unreached(s: Summary, name: str) -> str:
    """(d) An optional output that some seeds did not reach: counted, never called a divergence."""
    phrase = not_reached(s)
    if not phrase:
        return ""
    left_out = f"; those seeds are left out of the numbers for {name}" if s.n else ""
    return f"{name} was {phrase}{left_out}."


def spread(s: Summary, name: str, unit: str = "") -> str:
    """(c) Large spread across seeds: CV over 0.25, or a range wider than the median."""
    if s.n < 2:
        return ""
    rng = s.max - s.min
    wide = s.mean != 0 and s.cv > CV_LIMIT
    wide = wide or (s.median != 0 and rng > abs(s.median))
    if not wide:
        return ""
    u = f" {unit}" if unit else ""
    cv = f", coefficient of variation {num(s.cv, 2)}" if s.mean else ""
    return f"{name} varies substantially across seeds: from {num(s.min)} to {num(s.max)}{u} over {s.n} seeds{cv}."


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def difference(name: str, label_a: str, sa: Summary, label_b: str, sb: Summary,
               paired: Comparison | None = None, unit: str = "") -> str:
    """(b) Two conditions: a difference only when the intervals are apart, else 'within seed noise'."""
    u = f" {unit}" if unit else ""
    ci_a, ci_b = sa.median_ci, sb.median_ci
    apart = not overlap(ci_a, ci_b)
    if not apart and (paired is None or not paired.significant):
        return (f"The difference in {name} between {label_a} (median {num(sa.median)}{u}) and {label_b} "
                f"(median {num(sb.median)}{u}) is within seed noise: their 95% intervals overlap.")
    higher, lower = (label_a, label_b) if sa.median > sb.median else (label_b, label_a)
    extra = ""
    if paired is not None and paired.n:
        frac = paired.frac_greater if higher == label_a else 1 - paired.frac_greater
        extra = f"; paired by seed, higher in {round(frac * paired.n)} of {paired.n} seeds"
    why = "95% intervals do not overlap" if apart else \
        "the intervals overlap, but the 95% CI of the paired difference excludes 0"
    return sentence(f"{name} is higher for {higher} than for {lower} (medians {num(max(sa.median, sb.median))} vs "
                    f"{num(min(sa.median, sb.median))}{u}; {why}{extra}).")


def quantity(s: Summary, name: str, unit: str = "") -> list[str]:
    """Every caveat that applies to one quantity."""
    return [sentence(c) for c in (few_seeds(s), unreached(s, name), diverged(s, name), spread(s, name, unit)) if c]


def sentence(text: str) -> str:
    """A generated sentence that starts with a label ('final loss varies ...') starts with a capital;
    a label that is a symbol or a name in code ('σ1/σ2', 'lr') is left as it is."""
    first = text.split(" ", 1)[0]
    if first.isascii() and first.isalpha() and first.islower() and len(first) > 2:
        return text[0].upper() + text[1:]
    return text
