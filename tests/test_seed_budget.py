"""Seed budget (runs/budget.py): the posterior maths, calibration against simulated studies whose
true per-seed rates are known, the peeking correction of --until-decided, and the commands end to
end on a scratch workspace whose claim outcome per seed is Bernoulli(p).

`python tests/test_seed_budget.py` prints the calibration table the README quotes.
"""

import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from expost.cli import cli
from expost.runs import budget, posterior
from expost.runs.claims import ERROR, FAILS, HOLDS, INCONCLUSIVE, Verdict

C = 0.9


# --- the maths --------------------------------------------------------------------------------------

def test_betainc_is_the_binomial_tail():
    """For integers, I_x(a, b) = P(Binomial(a + b - 1, x) >= a): exact sums to compare with."""
    worst = 0.0
    for a in range(1, 40, 3):
        for b in range(1, 40, 3):
            n = a + b - 1
            for x in (0.01, 0.2, 0.5, 0.63, 0.97):
                exact = sum(math.comb(n, j) * x ** j * (1 - x) ** (n - j) for j in range(a, n + 1))
                worst = max(worst, abs(exact - posterior.betainc(a, b, x)))
    assert worst < 1e-12
    assert posterior.betainc(0.5, 0.5, 0.5) == pytest.approx(0.5, abs=1e-12)  # the symmetric Jeffreys prior
    assert posterior.betainc(600.5, 600.5, 0.5) == pytest.approx(0.5, abs=1e-9)  # large arguments converge


@pytest.mark.parametrize("min_frac", [0.3, 0.5, 0.6, 0.8])
def test_thresholds_are_where_the_posterior_decides(min_frac):
    for n in range(1, 61):
        lo, hi = posterior.thresholds(n, min_frac, C)
        for k in range(n + 1):
            expected = HOLDS if k >= hi else FAILS if k <= lo else None
            assert posterior.side(k, n, min_frac, C) == expected, (n, k)
            if expected == HOLDS:
                assert posterior.prob_holds(k, n, min_frac) >= C and k >= min_frac * n
            if expected == FAILS:
                assert 1 - posterior.prob_holds(k, n, min_frac) >= C and k < min_frac * n


def test_beta_binomial_is_a_distribution_with_the_right_mean():
    for m, a, b in ((0, 0.5, 0.5), (7, 3.5, 7.5), (990, 6.5, 4.5)):
        pmf = posterior.beta_binomial(m, a, b)
        assert pmf.shape == (m + 1,) and pmf.min() >= 0
        assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
        assert (np.arange(m + 1) * pmf).sum() == pytest.approx(m * a / (a + b), rel=1e-9)


def test_looks_and_their_correction():
    assert posterior.looks(10, 10) == [10]
    assert posterior.looks(10, 40) == [10, 20, 30, 40]
    assert posterior.looks(5, 25) == [5, 10, 20, 25]  # onto block boundaries, the budget last
    assert posterior.corrected(0.9, 1) == pytest.approx(0.9)
    assert posterior.corrected(0.9, 10) == pytest.approx(0.99)


# --- calibration: predicted chance against the observed frequency ----------------------------------

def simulate(population: str, seed: int = 20240517, studies: int = 40_000):
    """Studies with a known true rate p (uniform, or Jeffreys' Beta(1/2, 1/2)): n0 seeds, and for
    those the n0 seeds leave undecided, the predicted chance to settle at N seeds against whether
    N seeds did. Yields (n0, min_frac, N label, predicted, settled)."""
    rng = np.random.default_rng(seed)
    for n0 in (10, 20):
        for f in (0.5, 0.6, 0.8):
            p = rng.uniform(0, 1, studies) if population == "uniform" else rng.beta(0.5, 0.5, studies)
            k = rng.binomial(n0, p)
            undecided = np.array([posterior.side(x, n0, f, C) is None for x in range(n0 + 1)])[k]
            p, k = p[undecided], k[undecided]
            for label in (n0 + 10, 2 * n0 + 20, 100, "advised"):
                if label == "advised":  # what `expost check` would advise for these seeds
                    table = {x: posterior.seeds_needed(x, n0, f, C) for x in range(n0 + 1)}
                    total = np.array([table[x][0] or posterior.MAX_SEEDS for x in k])
                    predicted = np.array([table[x][1] for x in k])
                else:
                    total = np.full(len(k), label)
                    table = {x: posterior.chance(x, n0, label, f, C) for x in range(n0 + 1)}
                    predicted = np.array([table[x] for x in k])
                final = k + rng.binomial(total - n0, p)
                bounds = {t: posterior.thresholds(int(t), f, C) for t in set(total.tolist())}
                lo = np.array([bounds[t][0] for t in total])
                hi = np.array([bounds[t][1] for t in total])
                yield n0, f, label, predicted, (final <= lo) | (final >= hi)


def calibration_table(population: str) -> list[tuple[float, float, int, float, float]]:
    """(bin low, bin high, studies, mean predicted chance, observed frequency of settling)."""
    rows = list(simulate(population))
    predicted = np.concatenate([r[3] for r in rows])
    settled = np.concatenate([r[4] for r in rows])
    out = []
    for lo in np.arange(0, 1, 0.1):
        hi = lo + 0.1
        m = (predicted >= lo) & ((predicted < hi) if hi < 0.999 else (predicted <= 1))
        if m.sum():
            out.append((lo, hi, int(m.sum()), float(predicted[m].mean()), float(settled[m].mean())))
    return out


@pytest.mark.parametrize("population, points", [("jeffreys", 2), ("uniform", 4)])
def test_the_predicted_chance_to_settle_is_calibrated(population, points):
    """Over many simulated studies, the chance `expost check` predicts matches how often the claim
    is settled at that many seeds, in every bin of predicted chance: within 2 points when the true
    rates are drawn from the prior the advice assumes (Jeffreys), within 4 when they are uniform."""
    table = calibration_table(population)
    assert sum(n for _, _, n, _, _ in table) > 100_000
    for lo, hi, n, predicted, observed in table:
        if n >= 1000:
            assert abs(observed - predicted) <= points / 100, (population, lo, hi, n, predicted, observed)


def test_the_advised_number_of_seeds_settles_as_often_as_it_says():
    for n0, f, label, predicted, settled in simulate("uniform", seed=7):
        if label != "advised":
            continue
        assert predicted.mean() >= 0.75  # the target, except where even MAX_SEEDS falls short
        assert abs(settled.mean() - predicted.mean()) <= 0.03, (n0, f, predicted.mean(), settled.mean())


def sequential_wrong(f: float, p: float, wrong: str, confidence: float, sims: int = 20_000) -> float:
    """How often --until-decided, looking at 10, 20, ..., 100 seeds at `confidence` per look
    (sticky decisions, as UntilDecided keeps them), decides `wrong` for a true rate p."""
    rng = np.random.default_rng(11)
    hits = (rng.random((sims, 100)) < p).cumsum(axis=1)
    decided = np.full(sims, "", dtype=object)
    for n in posterior.looks(10, 100):
        lo, hi = posterior.thresholds(n, f, confidence)
        open_ = decided == ""
        decided[open_ & (hits[:, n - 1] >= hi)] = HOLDS
        decided[open_ & (hits[:, n - 1] <= lo)] = FAILS
    return float(np.mean(decided == wrong))


@pytest.mark.parametrize("f", [0.5, 0.6, 0.8])
def test_peeking_is_corrected(f):
    """Ten looks at 90% each decide wrongly far more often than 10%; Bonferroni over the planned
    looks (99% each) keeps it under 10%, at the boundary (p = f: "fails" is wrong) and just below
    it (p = f - 0.03: "holds" is wrong)."""
    per_look = posterior.corrected(C, len(posterior.looks(10, 100)))
    for p, wrong in ((f, FAILS), (f - 0.03, HOLDS)):
        assert sequential_wrong(f, p, wrong, C) > 1 - C + 0.03
        assert sequential_wrong(f, p, wrong, per_look) <= 1 - C


# --- advice for one verdict -------------------------------------------------------------------------

def verdict(k, n, min_frac=0.6, per_seed=True, verdict=None, detail="", numbers=""):
    if verdict is None:
        verdict = HOLDS if (k / n >= min_frac if per_seed else k) else FAILS
    return Verdict("exp", "A claim.", 1, "rate=1", verdict, k, n, min_frac, per_seed, n_seeds=n, detail=detail,
                   numbers=numbers)


def test_advice_for_a_rate_claim():
    undecided = budget.advise(verdict(6, 10))
    assert undecided.status == budget.UNDECIDED and undecided.wanted
    seeds, chance = posterior.seeds_needed(6, 10, 0.6, C)
    assert (undecided.seeds, undecided.chance) == (seeds, chance) and seeds % posterior.BLOCK == 0 and chance >= 0.8
    assert undecided.sentence() == (f"undecided at 90%: P(rate ≥ 60%) = {round(100 * undecided.p_holds)}% from 6 of "
                                    f"10 seeds; {seeds} seeds in all would settle it with a chance of about "
                                    f"{round(100 * chance)}%")
    assert f"run `expost run exp --seeds {seeds}`" in undecided.sentence(command=True)
    decided = budget.advise(verdict(3, 10))
    assert decided.status == budget.DECIDED and decided.side == FAILS and not decided.wanted
    assert decided.sentence() == "settled at 90% that it does not hold: P(rate < 60%) = 97.26% from 3 of 10 seeds"
    hopeless = budget.advise(verdict(600, 1000), cap=1100)  # on the edge: no N up to the cap reaches 80%
    assert hopeless.seeds is None and hopeless.chance < 0.8 and "too close to 60% to tell" in hopeless.sentence()


def test_advice_when_every_seed_must_hold():
    all_hold = budget.advise(verdict(10, 10, min_frac=1.0))
    assert all_hold.status == budget.DECIDED and not all_hold.wanted
    assert posterior.prob_holds(10, 10, all_hold.bound) == pytest.approx(C, abs=1e-9)  # the 90% lower bound
    assert all_hold.sentence() == ("holds in all 10 seeds: at 90% the per-seed rate is at least 0.88 (no number of "
                                   "seeds can show it is 1)")
    one_fails = budget.advise(verdict(9, 10, min_frac=1.0))
    assert one_fails.status == budget.DECIDED and one_fails.side == FAILS
    assert one_fails.sentence() == "settled: it fails in 1 of 10 seeds, so it cannot hold in every seed"


def test_no_advice_is_invented():
    aggregate = budget.advise(verdict(1, 1, per_seed=False))
    assert aggregate.status == budget.NO_ADVICE and not aggregate.wanted
    assert "judges all seeds together" in aggregate.sentence()
    error = budget.advise(verdict(0, 10, verdict=ERROR, detail="KeyError: 'x'"))
    assert error.status == budget.NO_ADVICE and "could not be evaluated" in error.sentence()
    missing = budget.advise(verdict(0, 7, verdict=INCONCLUSIVE, detail="missing runs: exp seed 8"))
    assert missing.status == budget.NO_ADVICE and missing.wanted and "missing runs" in missing.sentence()
    few = budget.advise(verdict(2, 2, min_frac=0.5, verdict=INCONCLUSIVE))  # under 3 seeds: never "settled"
    assert few.status == budget.UNDECIDED


def test_a_quantitative_claims_ci_against_its_tolerance():
    rng = np.random.default_rng(3)
    near = rng.normal(1.0, 0.1, 12)  # the median sits near the edge 1.0 of [1.0, 1.2]
    advice = budget.advise(verdict(6, 12, min_frac=0.5), values=near, expect={"approx": 1.1, "abs": 0.1})
    s = advice.spread
    assert s is not None and s.edge == pytest.approx(1.0) and s.lo < 1.0 < s.hi
    half = (s.hi - s.median) if s.edge > s.median else (s.median - s.lo)
    assert s.seeds >= 12 * (half / abs(s.edge - s.median)) ** 2 and s.seeds % posterior.BLOCK == 0
    assert advice.wanted and "straddles the expectation's edge 1" in advice.sentence()
    inside = budget.advise(verdict(12, 12, min_frac=1.0), values=rng.normal(1.1, 0.01, 12),
                           expect={"approx": 1.1, "abs": 0.1})
    assert inside.spread is None and not inside.wanted


# --- the commands, end to end -----------------------------------------------------------------------

COIN = '''"""A coin per seed: each seed's claim outcome is Bernoulli(p), drawn from the seed (no training)."""

import random

PARAMS = {
    "p": 0.5,          # chance that a seed's claim holds
    "fail_seed": 0,    # a seed that raises (0: none)
}
SEEDS = 10
OUTPUTS = {"hit": "scalar: 1 if this seed's claim holds, else 0"}
CLAIMS = [
    {"claim": "Most seeds hit.", "check": lambda r: r.scalar("hit") > 0.5, "min_frac": 0.5},
    {"claim": "Some seed hits.", "check": lambda r: bool((r.scalar("hit") > 0.5).any())},
]


def run(cfg, seed):
    if seed == cfg["fail_seed"]:
        raise RuntimeError(f"seed {seed} fails on purpose")
    return {"hit": float(random.Random(seed).random() < cfg["p"])}
'''

GAUGE = '''"""A measurement per seed, normal around 1.0: a quantitative claim whose CI sits on its tolerance."""

import random

PARAMS = {"mu": 1.0}
SEEDS = 10
OUTPUTS = {"x": "scalar: the measurement"}
CLAIMS = [
    {"claim": "x is 1.1 within 0.1 in most seeds.", "value": lambda r: r.scalar("x"),
     "expect": {"approx": 1.1, "abs": 0.1}, "min_frac": 0.5},
]


def run(cfg, seed):
    return {"x": random.Random(seed).gauss(cfg["mu"], 0.1)}
'''

POST = '''---
title: Coins
summary: Seed budgets.
experiments: [coin, gauge]
---
Most: {{ seed_budget("coin", 0) }}

Some: {{ seed_budget("coin", "Some seed") }}

Gauge: {{ seed_budget("gauge", 0) }}
'''


@pytest.fixture
def coin(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "experiments" / "coin.py").write_text(COIN)
    (root / "experiments" / "gauge.py").write_text(GAUGE)
    (root / "templates" / "coins.md.j2").write_text(POST)
    monkeypatch.chdir(root)

    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def hits(p, n):
    """The coin's hits over seeds 1..n, as the experiment draws them."""
    import random

    return sum(random.Random(s).random() < p for s in range(1, n + 1))


def test_check_prints_the_seed_budget_under_the_table(coin):
    assert hits(0.5, 10) == 6  # 6 of 10: holds at 50%, undecided at 90%
    assert coin("run", "coin", "-j", "1", "-q").exit_code == 0
    r = coin("check", "coin")
    assert r.exit_code == 0, r.output  # advice changes no verdict and no exit code
    table, advice = r.stdout.split("\n\nseed budget", 1)
    assert "6/10 hold (need 50%)" in table and "one test on all 10" in table
    seeds, chance = posterior.seeds_needed(6, 10, 0.5, 0.9)
    assert (f"coin CLAIMS[0]: undecided at 90%: P(rate ≥ 50%) = 74% from 6 of 10 seeds; run `expost run coin "
            f"--seeds {seeds}`: about {round(100 * chance)}% likely to settle it") in advice
    assert "CLAIMS[1]" not in advice  # judged on all seeds together: nothing to advise
    assert "2 claim result(s): 2 holds; 2 as expected" in r.stderr
    relaxed = coin("check", "coin", "--confidence", "0.7")  # P = 74% decides it at 70%
    assert relaxed.exit_code == 0 and "seed budget" not in relaxed.stdout
    bad = coin("check", "coin", "--confidence", "1")
    assert bad.exit_code == 2 and "--confidence" in bad.output


def test_check_projects_a_quantitative_claims_ci(coin):
    assert coin("run", "gauge", "-j", "1", "-q").exit_code == 0
    r = coin("check", "gauge")
    assert r.exit_code == 0, r.output
    line = next(line for line in r.stdout.splitlines() if "gauge CLAIMS[0]" in line)
    assert re.search(r"the median's 90% bootstrap CI \[[\d.]+, [\d.]+\] straddles the expectation's edge 1: if the "
                     r"median stays at [\d.]+, the CI \(narrowing as 1/√N\) clears it at about \d+0 seeds",
                     line), line


def test_until_decided_stops_at_the_budget_and_exits_3(coin):
    assert [hits(0.5, n) for n in (10, 20, 30)] == [6, 12, 15]  # never decided at 96.7% per look
    r = coin("run", "coin", "--until-decided", "--max-seeds", "30", "-j", "1", "-q")
    assert r.exit_code == 3, r.output
    err = r.stderr
    assert err.count("claim result(s) undecided at 96.7%") == 3  # looks at 10, 20 and 30 seeds
    assert ("seed budget spent: 1 claim result(s) still undecided at 30 seeds (--max-seeds 30; 90% over 3 planned "
            "look(s), 96.7% at each (Bonferroni))") in err
    assert "coin CLAIMS[0]: undecided at 96.7%: P(rate ≥ 50%) = 50% from 15 of 30 seeds" in err
    assert "not for seeds to decide: coin CLAIMS[1]: the check judges all seeds together" in err
    listed = coin("list", "coin", "--seeds", "30")
    assert "30/30 cached" in listed.stdout
    again = coin("run", "coin", "--until-decided", "--max-seeds", "30", "-j", "1", "-q")
    assert again.exit_code == 3 and "30 planned run(s): 30 cached, 0 ran" in again.stderr  # nothing reruns


def test_until_decided_adds_blocks_until_the_claim_is_decided(coin):
    assert [hits(0.6, n) for n in (10, 20, 30, 40)] == [7, 14, 19, 27]
    r = coin("run", "coin", "--until-decided", "--max-seeds", "60", "--set", "p=0.6", "-j", "1", "-q")
    assert r.exit_code == 0, r.output
    err = r.stderr
    per_look = budget.percent(posterior.corrected(0.9, 6))
    for n in (10, 20, 30):
        assert f"after {n} seeds: 1 claim result(s) undecided at {per_look}" in err
    assert f"after 40 seeds: every per-seed claim decided at {per_look}" in err
    assert "after 50 seeds" not in err
    assert "settled at 40 seeds: coin CLAIMS[0]: settled at 98.3% that it holds: P(rate ≥ 50%) =" in err
    assert ("decided: every per-seed claim is settled at 40 seeds (90% over 6 planned look(s), 98.3% at each "
            "(Bonferroni)). Verdicts: `expost check coin --seeds 40` (with this command's --set/--where/--profile)"
            ) in err


def test_until_decided_keeps_completed_runs_when_a_seed_fails(coin):
    r = coin("run", "coin", "--until-decided", "--max-seeds", "30", "--set", "fail_seed=15", "-j", "1", "-q")
    assert r.exit_code == 1, r.output
    assert "after 10 seeds: 1 claim result(s) undecided" in r.stderr
    assert "seed 15: RuntimeError: seed 15 fails on purpose" in r.output and "Completed runs are cached" in r.output
    assert "after 20 seeds" not in r.stderr
    listed = coin("list", "coin", "--seeds", "20", "--set", "fail_seed=15")
    assert "19/20 cached" in listed.stdout


def test_until_decided_flags(coin):
    alone = coin("run", "coin", "--max-seeds", "20")
    assert alone.exit_code == 2 and "--max-seeds applies only with --until-decided" in alone.output
    conf = coin("run", "coin", "--confidence", "0.8")
    assert conf.exit_code == 2 and "--confidence applies only with --until-decided" in conf.output
    explain = coin("run", "coin", "--until-decided", "--explain")
    assert explain.exit_code == 2 and "--until-decided cannot be combined with --explain" in explain.output
    low = coin("run", "coin", "--until-decided", "--seeds", "20", "--max-seeds", "10")
    assert low.exit_code == 1 and "--max-seeds 10: below the 20 seeds this starts from" in low.output
    helped = coin("run", "--help")
    assert helped.exit_code == 0 and "Bonferroni" in helped.output and "--until-decided" in helped.output


def test_the_seed_budget_helper_in_a_post(coin):
    assert coin("build", "coins", "-j", "1", "-q").exit_code == 0
    from pathlib import Path

    text = (Path("publish") / "coins" / "post.md").read_text()
    seeds, chance = posterior.seeds_needed(6, 10, 0.5, 0.9)
    assert (f"Most: **Seed budget:** undecided at 90%: P(rate ≥ 50%) = 74% from 6 of 10 seeds; {seeds} seeds in all "
            f"would settle it with a chance of about {round(100 * chance)}%.") in text
    assert "Some: **Seed budget:** no seed budget: the check judges all seeds together" in text
    gauge = next(line for line in text.splitlines() if line.startswith("Gauge:"))  # the experiment's `value`
    assert "from 5 of 10 seeds" in gauge and "straddles the expectation's edge 1: if the median stays at" in gauge
    Path("templates/coins.md.j2").write_text(POST.replace('seed_budget("coin", 0)', 'seed_budget("coin", 0, 1.5)'))
    bad = coin("build", "coins", "-j", "1", "-q")
    assert bad.exit_code == 1 and "coins.md.j2" in bad.output and "seed_budget('coin', 0, confidence=1.5" in bad.output


if __name__ == "__main__":
    for population in ("uniform", "jeffreys"):
        print(f"true rates {population}: studies undecided at 10 or 20 seeds (min_frac 0.5, 0.6, 0.8; confidence 90%)")
        print("predicted chance   studies   mean predicted   observed   difference")
        for lo, hi, n, predicted, observed in calibration_table(population):
            diff = 100 * (observed - predicted)
            print(f"[{lo:.1f}, {hi:.1f})      {n:8d}   {predicted:14.3f}   {observed:8.3f}   {diff:+6.1f} pts")
        print()
