import numpy as np
import pytest

from expost.runs.claims import FAILS, HOLDS, INCONCLUSIVE, decide, evaluate_claim, interpret
from expost.fmt import num
from expost.runs.results import Record, ResultSet
from expost.runs.spec import Claim, Spec
from expost.runs.stats import bootstrap_ci, compare, iqm, summarize


def test_iqm_of_1_to_8():
    assert iqm(np.arange(1, 9)) == 4.5  # mean of 3, 4, 5, 6


def test_summary_known_values():
    s = summarize([1, 2, 3, 4, 5, float("nan")])
    assert (s.n, s.n_nonfinite, s.mean, s.median, s.min, s.max) == (5, 1, 3.0, 3.0, 1.0, 5.0)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))


def test_bootstrap_ci_is_stable_and_contains_the_mean():
    x = np.random.default_rng(1).normal(10, 2, size=10)
    a, b = bootstrap_ci(x), bootstrap_ci(x)
    assert a == b
    assert a[0] < x.mean() < a[1]
    assert bootstrap_ci(x, seed=2) != a  # it is the seed that makes it stable


def test_paired_comparison():
    a = np.array([2.0, 3.0, 4.0, 5.0])
    c = compare(a, a - 1)
    assert c.diff_mean == 1.0 and c.diff_ci == (1.0, 1.0) and c.frac_greater == 1.0 and c.significant
    c = compare(a, a[::-1])
    assert c.frac_greater == 0.5 and not c.significant
    assert c.prob_improvement == pytest.approx(0.5)


def test_interpret_return_values():
    assert interpret(True, 5) == (1, 1, False)
    assert interpret(np.bool_(False), 5) == (0, 1, False)
    assert interpret(np.array([True, False, True]), 3) == (2, 3, True)
    assert interpret([True, True, False], 3) == (2, 3, True)
    assert interpret(None, 3) is None  # cannot tell: inconclusive, never a pass
    with pytest.raises(TypeError):
        interpret(np.array([True, False]), 3)


@pytest.mark.parametrize("value, says", [
    (np.array([0.5, 1.5, 2.0]), "float64"),       # the comparison forgotten: floats are not verdicts
    (np.float64(1.7), "float64"),                  # a mean
    (float("nan"), "float"),                       # NaN is truthy in Python; never here
    (1, "int"),
    (np.array([1, 0, 1]), "int64"),
    ("yes", "str"),
    ({"ok": True}, "dict"),
])
def test_a_check_that_returns_anything_but_booleans_is_an_error(value, says):
    with pytest.raises(TypeError, match=says):
        interpret(value, 3)


def test_torch_booleans_are_verdicts_and_torch_floats_are_not():
    torch = pytest.importorskip("torch")
    assert interpret(torch.tensor([True, False, True]), 3) == (2, 3, True)
    with pytest.raises(TypeError, match="float32"):
        interpret(torch.tensor([0.1, 0.2, 0.3]), 3)


@pytest.mark.parametrize("k,n,min_frac,missing,expected", [
    (10, 10, 1.0, 0, HOLDS),
    (9, 10, 1.0, 0, FAILS),
    (9, 10, 0.9, 0, HOLDS),
    (8, 10, 0.9, 0, FAILS),
    (8, 8, 1.0, 2, INCONCLUSIVE),  # two failed seeds could flip it
    (5, 8, 0.9, 2, FAILS),  # even if both missing seeds agreed: 7/10 < 0.9
    (2, 2, 1.0, 0, INCONCLUSIVE),  # too few seeds
])
def test_threshold_semantics(k, n, min_frac, missing, expected):
    assert decide(k, n, True, min_frac, missing, n) == expected


def _rs(values_by_rate):
    records = []
    for rate, values in values_by_rate.items():
        for seed, v in enumerate(values, start=1):
            records.append(Record("t", {"rate": rate}, {"rate": rate}, seed, {"final": v}, lambda name: [1.0]))
    return ResultSet(records, {"final": "scalar"}, "t")


def test_claim_per_group_k_of_n():
    rs = _rs({0.5: [0.1, 0.2, 2.0, 0.3, 0.4], 1.0: [0.1] * 5})
    spec = Spec("t", None, "", {"rate": 0.5}, [{"rate": [0.5, 1.0]}], 5, {})
    claim = Claim("small", lambda r: r.scalar("final") < 1, per="rate", min_frac=0.8)
    v = evaluate_claim(spec, claim, rs)
    assert [(x.group, x.k, x.n, x.verdict) for x in v] == [("rate=0.5", 4, 5, HOLDS), ("rate=1", 5, 5, HOLDS)]
    strict = Claim("small", lambda r: r.scalar("final") < 1, per="rate")
    assert evaluate_claim(spec, strict, rs)[0].verdict == FAILS
    raising = Claim("bad", lambda r: r.scalar("nope"))
    assert evaluate_claim(spec, raising, rs)[0].verdict == "error"


def test_claim_metric_is_shown_per_config_when_a_claim_spans_several():
    rs = _rs({0.5: [1.0, 2.0, 3.0], 1.0: [4.0, 5.0, 6.0]})
    spec = Spec("t", None, "", {"rate": 0.5}, [{"rate": [0.5, 1.0]}], 3, {})
    faster = lambda r: r.where(rate=1.0).scalar("final") > r.where(rate=0.5).scalar("final")  # noqa: E731
    v = evaluate_claim(spec, Claim("ends higher", faster, metric="final"), rs)
    assert v[0].verdict == HOLDS and v[0].numbers == "final median rate=0.5: 2 [1, 3]; rate=1: 5 [4, 6]"
    one = evaluate_claim(spec, Claim("small", lambda r: r.scalar("final") < 9, where={"rate": 1.0}, metric="final"), rs)
    assert one[0].numbers == "final median 5 [4, 6]"


def test_resultset_selection_and_errors():
    rs = _rs({0.5: [1, 2, 3], 1.0: [4, 5, 6]})
    assert list(rs.group_by("rate")) == [0.5, 1.0]
    assert rs.where(rate=1.0).scalar("final").tolist() == [4, 5, 6]
    assert len(rs.where(rate=[0.5, 1.0])) == 6
    with pytest.raises(Exception, match="needs one config"):
        rs.scalar("final")
    with pytest.raises(Exception, match="no output 'x'"):
        rs.where(rate=1.0).scalar("x")
    with pytest.raises(Exception, match="is a scalar, not a series"):
        rs.where(rate=1.0).series("final")


@pytest.mark.parametrize("x,text", [(340.4, "340"), (0.012345, "0.0123"), (1234567, "1.23e6"), (2.0, "2"),
                                    (0.00001234, "1.23e-5"), (float("nan"), "NaN"), (12.5, "12.5")])
def test_number_formatting(x, text):
    assert num(x) == text
