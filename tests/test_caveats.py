"""Each caveat rule (a)-(f): numbers that trigger it and numbers that do not."""

import numpy as np

from expost.posts import caveats
from expost.runs.claims import FAILS, HOLDS, INCONCLUSIVE, Verdict
from expost.runs.stats import compare, summarize


def verdict(k, n, verdict, min_frac=1.0, per_seed=True, missing=0):
    return Verdict("e", "c", 0, "", verdict, k, n, min_frac, per_seed, missing, n_seeds=n)


def test_a_claim_in_fewer_than_all_seeds_says_k_of_n():
    assert caveats.claim_sentence(verdict(9, 10, HOLDS, 0.8)) == "holds in 9 of 10 seeds; needs 80%"
    assert caveats.claim_sentence(verdict(4, 10, FAILS, 0.8)) == "does not hold: true in 4 of 10 seeds; needs 80%"
    assert caveats.claim_sentence(verdict(10, 10, HOLDS)) == "holds in all 10 seeds"
    assert "8 of 8" in caveats.claim_sentence(verdict(8, 8, INCONCLUSIVE, missing=2))
    assert caveats.claim_sentence(verdict(1, 1, HOLDS, per_seed=False)) == "holds, judged on all 1 seeds together"


def test_b_overlapping_intervals_are_within_seed_noise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 2, 10), rng.normal(10.5, 2, 10)
    text = caveats.difference("x", "A", summarize(a), "B", summarize(b), compare(a, b))
    assert "within seed noise" in text
    far = a + 20
    text = caveats.difference("x", "A", summarize(far), "B", summarize(b), compare(far, b))
    assert "within seed noise" not in text and "higher for A than for B" in text and "10 of 10 seeds" in text


def test_c_large_spread_is_called_out_with_the_range():
    wide = summarize([1, 2, 3, 10, 1.5, 2.5, 2, 3, 1, 2])
    assert "varies substantially across seeds: from 1 to 10" in caveats.spread(wide, "x")
    narrow = summarize([10, 10.5, 9.8, 10.2, 10.1, 9.9, 10, 10.3, 9.7, 10])
    assert caveats.spread(narrow, "x") == ""


def test_d_diverged_runs_are_counted():
    s = summarize([1.0, float("nan"), 2.0, float("inf"), 1.5])
    assert caveats.diverged(s, "loss") == "2 of 5 runs diverged (NaN/inf in loss) and are left out of the numbers for loss."
    assert caveats.diverged(summarize([1.0, 2.0]), "loss") == ""


def test_e_few_seeds_warning():
    assert "Only 3 seeds" in caveats.few_seeds(summarize([1, 2, 3]))
    assert caveats.few_seeds(summarize([1, 2, 3, 4, 5])) == ""
