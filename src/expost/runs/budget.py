"""Seed budget: is a claim decided by the seeds so far, and how many seeds in all would decide it?
(The posterior maths are in runs/posterior.py.)

A per-seed claim holds when at least `min_frac` of the seeds agree. Its seeds are treated as
independent draws of a per-seed rate p, with Jeffreys' prior Beta(1/2, 1/2): after k of n seeds
the posterior is Beta(k + 1/2, n - k + 1/2).

- *Decided at confidence c*: at least c of the posterior lies on the side of `min_frac` that the
  verdict states (P(p >= min_frac) >= c and the claim holds, or P(p < min_frac) >= c and it fails).
- *Chance to settle at N seeds*: the posterior-predictive probability that the claim is decided at
  c once N seeds in all are in: the N - n new seeds are Beta-Binomial, summed exactly.
- *Advice*: the smallest N, in blocks of BLOCK seeds, whose chance reaches TARGET.
- A claim that must hold in every seed (min_frac 1) is decided by its seeds so far: one seed that
  fails settles it; while all hold, no number of seeds can show the rate is 1, so the advice states
  a lower bound on the rate instead.
- A claim judged on all seeds together (one bool) gives no per-seed rate: no advice.
- A quantitative claim (`value`/`expect`) is judged per seed as above; in addition, when the
  bootstrap CI of its median straddles an edge of the expectation, the CI's width is projected as
  1/sqrt(N) to say at about how many seeds it would clear that edge (a projection, not a chance).

`expost run --until-decided` looks at the claims after every block of seeds. Each look is a test,
so it spends the error 1 - c over the planned looks (Bonferroni): a claim is decided at a look
when its posterior reaches 1 - (1 - c) / looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from expost.fmt import num
from expost.runs.claims import ERROR, FAILS, HOLDS, INCONCLUSIVE, Verdict
from expost.runs.posterior import (BLOCK, MAX_SEEDS, TARGET, corrected, lower_bound, prob_holds, seeds_needed,
                                   side)

CONFIDENCE = 0.9  # posterior mass on one side of min_frac that decides a claim

DECIDED, UNDECIDED, NO_ADVICE = "decided", "undecided", "no advice"


# --- advice for one verdict ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """A quantitative claim's median and its bootstrap CI against the nearest edge it straddles."""

    median: float
    lo: float
    hi: float
    edge: float
    seeds: int | None  # about how many seeds in all until the CI, narrowing as 1/sqrt(N), clears the edge


@dataclass(frozen=True)
class Advice:
    """What the seeds so far say about one claim (and group), and how many seeds would settle it."""

    experiment: str
    claim: str
    index: int
    group: str
    status: str  # DECIDED, UNDECIDED or NO_ADVICE
    confidence: float
    k: int = 0
    n: int = 0
    min_frac: float = 1.0
    side: str | None = None  # the side decided (DECIDED), or the verdict's side so far
    p_holds: float | None = None  # P(rate >= min_frac), for a claim with min_frac < 1
    seeds: int | None = None  # the fewest seeds in all with chance >= TARGET to settle it
    chance: float | None = None  # its chance (or the chance at `cap` when no N reaches TARGET)
    cap: int = MAX_SEEDS
    bound: float | None = None  # min_frac 1, all seeds hold: the rate's lower bound at `confidence`
    spread: Spread | None = None
    reason: str = ""  # why there is no advice
    inconclusive: bool = False  # the verdict itself is inconclusive (missing seeds, too few)

    @property
    def label(self) -> str:
        return f"{self.experiment} CLAIMS[{self.index}]" + (f" ({self.group})" if self.group else "")

    @property
    def wanted(self) -> bool:
        """Worth printing under `expost check`: undecided, inconclusive, or a CI on an edge."""
        return self.status == UNDECIDED or self.inconclusive or (self.spread is not None)

    def sentence(self, command: bool = False, budget: bool = True) -> str:
        """The advice in words: for posts, or with the command that would run the seeds (`expost
        check`); without the seeds it would take when not `budget` (a look of --until-decided)."""
        c = percent(self.confidence)
        text = self._rate_words(c, command, budget)
        if self.spread is not None:
            s = self.spread
            when = (f"if the median stays at {num(s.median)}, the CI (narrowing as 1/√N) clears it at about "
                    f"{s.seeds} seeds" if s.seeds else "the median sits on the edge: no number of seeds can "
                    "be projected to clear it")
            text += (f"; the median's {c} bootstrap CI [{num(s.lo)}, {num(s.hi)}] straddles the expectation's "
                     f"edge {num(s.edge)}: {when}")
        return text

    def _rate_words(self, c: str, command: bool, budget: bool) -> str:
        of = f"{self.k} of {self.n} seeds"
        if self.status == NO_ADVICE:
            return f"no seed budget: {self.reason}"
        if self.min_frac >= 1:
            if self.inconclusive:
                return f"undecided: true in {of} so far, and the verdict needs more seeds"
            if self.side == FAILS:
                return f"settled: it fails in {self.n - self.k} of {self.n} seeds, so it cannot hold in every seed"
            return (f"holds in all {self.n} seeds: at {c} the per-seed rate is at least {num(self.bound, 2)} "
                    "(no number of seeds can show it is 1)")
        need = f"{self.min_frac:.0%}"
        if self.status == DECIDED:
            words = (f"P(rate ≥ {need}) = {_pct(self.p_holds)}" if self.side == HOLDS
                     else f"P(rate < {need}) = {_pct(1 - self.p_holds)}")
            return f"settled at {c} that it {'holds' if self.side == HOLDS else 'does not hold'}: {words} from {of}"
        text = f"undecided at {c}: P(rate ≥ {need}) = {_pct(self.p_holds)} from {of}"
        if not budget:
            return text
        if self.seeds is not None and command:
            return text + (f"; run `expost run {self.experiment} --seeds {self.seeds}`: about {_pct(self.chance)} "
                           "likely to settle it")
        if self.seeds is not None:
            return text + f"; {self.seeds} seeds in all would settle it with a chance of about {_pct(self.chance)}"
        return (text + f"; even {self.cap} seeds would settle it only with a chance of about {_pct(self.chance)}: "
                f"the rate seems too close to {need} to tell")


def percent(p: float) -> str:
    """A confidence for prose: 0.9 -> 90%, 0.975 -> 97.5%, 0.98889 -> 98.9%."""
    return f"{100 * p:.1f}".rstrip("0").rstrip(".") + "%"


def _pct(p: float) -> str:
    """A probability as a percentage for prose: 49%; near 0 or 1 with three figures of the tail
    (1.03%, 98.97%), so that a value beside a 99% threshold shows which side it is on; never 100%
    or 0% for what is not certain."""
    if p >= 1.0 or p <= 0.0:
        return "100%" if p >= 1.0 else "0%"
    if 0.05 <= p <= 0.95:
        return f"{round(p * 100)}%"
    tail = f"{min(p, 1 - p) * 100:.3g}"
    if "e" in tail:  # below 0.0001%
        return "<0.0001%" if p < 0.5 else ">99.9999%"
    if p < 0.5:
        return f"{tail}%"
    decimals = len(tail.split(".")[1]) if "." in tail else 0
    return f"{100 - float(tail):.{decimals}f}%"


def advise(v: Verdict, confidence: float = CONFIDENCE, values=None, expect: dict | None = None,
           target: float = TARGET, cap: int = MAX_SEEDS) -> Advice:
    """The seed budget of one verdict. `values`/`expect`: a quantitative claim's per-seed numbers
    and expectation (for the CI projection)."""
    base = dict(experiment=v.experiment, claim=v.claim, index=v.index, group=v.group, confidence=confidence,
                k=v.k, n=v.n, min_frac=v.min_frac, cap=cap)
    spread = _spread(values, expect, confidence) if values is not None and expect is not None else None
    if v.verdict == ERROR:
        return Advice(**base, status=NO_ADVICE, reason="the check could not be evaluated; fix it first")
    if not v.per_seed:
        return Advice(**base, status=NO_ADVICE, spread=spread,
                      reason="the check judges all seeds together (one bool), so the seeds give no per-seed rate "
                             "to project")
    if v.verdict == INCONCLUSIVE and v.detail:  # missing runs, or a check that returned None
        return Advice(**base, status=NO_ADVICE, inconclusive=True, reason=v.detail)
    if v.n == 0:
        return Advice(**base, status=NO_ADVICE, inconclusive=True, reason="no seed evaluated yet; run the seeds first")
    inconclusive = v.verdict == INCONCLUSIVE
    if v.min_frac >= 1:
        if v.k < v.n:
            return Advice(**base, status=DECIDED, side=FAILS, spread=spread, inconclusive=inconclusive)
        return Advice(**base, status=UNDECIDED if inconclusive else DECIDED, side=HOLDS, spread=spread,
                      bound=lower_bound(v.n, confidence), inconclusive=inconclusive)
    p = prob_holds(v.k, v.n, v.min_frac)
    decided = None if inconclusive else side(v.k, v.n, v.min_frac, confidence)
    if decided:
        return Advice(**base, status=DECIDED, side=decided, p_holds=p, spread=spread)
    seeds, p_settle = seeds_needed(v.k, v.n, v.min_frac, confidence, target, BLOCK, cap)
    return Advice(**base, status=UNDECIDED, side=HOLDS if v.k >= v.min_frac * v.n else FAILS, p_holds=p,
                  seeds=seeds, chance=p_settle, spread=spread, inconclusive=inconclusive)


def _spread(values, expect: dict, confidence: float) -> Spread | None:
    """The median's bootstrap CI at `confidence` against the expectation's edges: the nearest
    edge inside it, and the seeds at which a CI narrowing as 1/sqrt(N) would clear it."""
    from expost.runs.stats import bootstrap_ci

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    if "approx" in expect:
        target = float(expect["approx"])
        tol = abs(target) * float(expect["rel"]) if "rel" in expect else float(expect["abs"])
        edges = [target - tol, target + tol]
    elif "above" in expect:
        edges = [float(expect["above"])]
    elif "below" in expect:
        edges = [float(expect["below"])]
    else:
        edges = [float(e) for e in expect["between"]]
    median = float(np.median(x))
    lo, hi = bootstrap_ci(x, np.median, level=confidence)
    inside = [e for e in edges if lo < e < hi]
    if not inside:
        return None
    edge = min(inside, key=lambda e: abs(e - median))
    half = (hi - median) if edge > median else (median - lo)
    gap = abs(edge - median)
    if gap == 0 or half <= 0:
        return Spread(median, lo, hi, edge, None)
    seeds = math.ceil(x.size * (half / gap) ** 2)
    return Spread(median, lo, hi, edge, max(BLOCK, math.ceil(seeds / BLOCK) * BLOCK))


@dataclass
class Budget:
    """`expost check` with its seed budget: every verdict, and the advice for each."""

    verdicts: list
    advice: list = field(default_factory=list)
    confidence: float = CONFIDENCE

    @property
    def wanted(self) -> list[Advice]:
        return [a for a in self.advice if a.wanted]


# --- every claim of an experiment ---------------------------------------------------------------------

def quantities(full, rs) -> dict[tuple[int, str], tuple[np.ndarray, dict]]:
    """(claim index, group) -> (per-seed numbers, expect) of each quantitative claim, grouped as
    claims.evaluate_claim groups them. A claim whose `value` raises is left out: its verdict
    (ERROR) already says why."""
    from expost.runs.claims import numbers_of, value_label

    out = {}
    for claim in full.claims:
        if claim.value is None:
            continue
        selected = rs.where(**claim.where)
        groups = selected.group_by(claim.per) if claim.per else {None: selected}
        for value, group in groups.items():
            label = f"{claim.per}={value_label(value)}" if claim.per else ""
            try:
                values = numbers_of(claim.value(group), len(group.seeds))
            except Exception:  # user code; evaluate_claim reports the same failure as the verdict
                continue
            if values.size > 1:
                out[(claim.index, label)] = (values, claim.expect)
    return out


def judge(layout, spec, runs: list, sel, confidence: float = CONFIDENCE) -> tuple[list[Verdict], list[Advice]]:
    """One experiment's verdicts on its cached seeds (as `expost check`) and the advice for each."""
    from expost.runs.claims import checked

    full, rs, verdicts = checked(layout, spec, runs, sel)
    numbers = quantities(full, rs)
    return verdicts, [advise(v, confidence, *numbers.get((v.index, v.group), (None, None))) for v in verdicts]


def check_confidence(confidence) -> float:
    """A confidence that splits the posterior into two sides: strictly between 0.5 and 1."""
    from expost.errors import ConfigError

    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 < confidence < 1:
        raise ConfigError(f"confidence={confidence!r}: give a number between 0.5 and 1 (exclusive), e.g. 0.9")
    return float(confidence)


@dataclass
class Look:
    """One look of `run --until-decided`: the seeds run so far, and what they decide."""

    seeds: int
    confidence: float  # what each look needs (corrected for the number of looks)
    runs: object  # the RunReport of this look's runs
    verdicts: list
    advice: list
    settled: list = field(default_factory=list)  # the claims first decided at this look
    undecided: list = field(default_factory=list)  # the claims still undecided after it

    @property
    def errors(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.verdict == ERROR]


@dataclass
class UntilDecided:
    """What `run --until-decided` did: its looks, in order, and the claims each decided.

    A per-seed claim (min_frac < 1) is decided at the first look where its posterior reaches the
    per-look confidence, and stays decided: later looks, run for other claims, do not undo it (each
    look was a test at (1 - confidence) / looks). A claim that must hold in every seed is judged
    at the latest look: a seed that fails settles it whenever it comes."""

    confidence: float  # overall, over all planned looks
    schedule: list[int]  # the seeds at each planned look
    looks: list[Look] = field(default_factory=list)
    settled: dict = field(default_factory=dict)  # (experiment, index, group) -> (seeds, Advice) when decided

    @property
    def per_look(self) -> float:
        return corrected(self.confidence, len(self.schedule))

    @property
    def last(self) -> Look:
        return self.looks[-1]

    @property
    def decided(self) -> bool:
        return bool(self.looks) and not self.last.undecided

    @property
    def not_decidable(self) -> list[Advice]:
        """Claims more seeds cannot decide (judged on all seeds together, or not evaluated)."""
        return [a for a in self.last.advice if a.status == NO_ADVICE] if self.looks else []

    def add(self, seeds: int, runs, verdicts: list, advice: list) -> Look:
        """Judge a look (advice at `per_look`): which claims it settles, which stay undecided."""
        look = Look(seeds, self.per_look, runs, verdicts, advice)
        for a in advice:
            key = (a.experiment, a.index, a.group)
            if key in self.settled:
                continue
            if a.status == DECIDED and a.min_frac < 1:
                self.settled[key] = (seeds, a)
                look.settled.append(a)
            elif a.status == UNDECIDED:
                look.undecided.append(a)
        self.looks.append(look)
        return look
