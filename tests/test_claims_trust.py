"""Claims cannot pass by accident, quantitative claims show their numbers, and `expost check`'s
exit code is one CI can trust (xfail for findings, a distinct code for inconclusive)."""

import pytest
from click.testing import CliRunner

from expost.cli import cli

HEAD = '''import random

PARAMS = {"steps": 3}
SEEDS = 5
OUTPUTS = {"final": "scalar: a number near 2", "gap": "scalar: a number near 0.5"}


def run(cfg, seed):
    rng = random.Random(seed)
    return {"final": 2 + 0.1 * rng.random(), "gap": 0.5}

'''


def workspace(tmp_path, monkeypatch, claims: str, post: bool = False):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "experiments" / "exp.py").write_text(HEAD + "CLAIMS = " + claims + "\n")
    if post:
        (root / "templates" / "p.md.j2").write_text(
            "---\ntitle: P\nsummary: S.\nexperiments: [exp]\n---\n{{ claim('exp', 0) }}\n")
    monkeypatch.chdir(root)
    return root


def cli_(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("check, says", [
    ('lambda r: r.scalar("final")', "float64"),              # the comparison forgotten
    ('lambda r: r.scalar("final").mean()', "float64"),       # a mean
    ('lambda r: float("nan")', "float"),                     # NaN is truthy in Python
    ('lambda r: 1', "int"),
])
def test_a_check_that_returns_no_booleans_is_an_error_never_a_pass(tmp_path, monkeypatch, check, says):
    workspace(tmp_path, monkeypatch, f'[{{"claim": "Ends near two.", "check": {check}}}]')
    r = cli_("run", "-q", "-j", "1")
    assert r.exit_code != 0 and says in r.output, r.output  # refused before any run, naming the claim
    assert "CLAIMS[0]" in r.output and "Ends near two." in r.output


def test_a_check_that_errs_on_real_results_fails_check_and_build(tmp_path, monkeypatch):
    # passes the dry run (placeholder values are never exactly 2.0), returns floats on real results
    root = workspace(tmp_path, monkeypatch, '[{"claim": "Ends near two.", '
                                            '"check": lambda r: r.scalar("gap") if r.scalar("gap")[0] == 0.5 '
                                            'else r.scalar("gap") > 0}]', post=True)
    assert cli_("run", "-q", "-j", "1").exit_code == 0
    check = cli_("check")
    assert check.exit_code == 1 and "error" in check.output and "float64" in check.output, check.output
    build = cli_("build", "-q")
    assert build.exit_code == 1 and "could not be evaluated" in build.output, build.output
    assert "could not be checked" in (root / "publish" / "p" / "post.md").read_text()
    again = cli_("build", "-q")
    assert again.exit_code == 1 and "up to date" not in again.output, again.output


def test_quantitative_claims_show_their_numbers(tmp_path, monkeypatch):
    workspace(tmp_path, monkeypatch, '''[
        {"claim": "The final value is two within 10 %.", "value": lambda r: r.scalar("final"),
         "expect": {"approx": 2.0, "rel": 0.1}},
        {"claim": "The final value is above three.", "value": lambda r: r.scalar("final"),
         "expect": {"above": 3}, "xfail": "it is about two"},
        {"claim": "The gap is in [0.4, 0.6].", "value": lambda r: r.scalar("gap").mean(),
         "expect": {"between": [0.4, 0.6]}},
    ]''')
    assert cli_("run", "-q", "-j", "1").exit_code == 0
    r = cli_("check")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "holds" in lines[1] and "5/5" in lines[1] and "expected ≈ 2 ± 10%" in lines[1], r.output
    assert "fails (xfail)" in lines[2] and "0/5" in lines[2] and "expected > 3" in lines[2], r.output
    assert "holds" in lines[3] and "one test on all 5" in lines[3] and "value median 0.5" in lines[3], r.output


def test_xfail_claims_exit_0_when_they_fail_and_1_when_they_hold(tmp_path, monkeypatch):
    root = workspace(tmp_path, monkeypatch, '[{"claim": "Above three.", "check": lambda r: r.scalar("final") > 3, '
                                            '"xfail": "the thread said so; our seeds disagree"}]')
    assert cli_("run", "-q", "-j", "1").exit_code == 0
    r = cli_("check")
    assert r.exit_code == 0 and "fails (xfail)" in r.output, r.output
    path = root / "experiments" / "exp.py"
    path.write_text(path.read_text().replace('> 3', '> 1'))  # claims are not in the run key: nothing reruns
    r = cli_("check")
    assert r.exit_code == 1 and "holds (XPASS)" in r.output and "1 unexpected" in r.output, r.output


def test_a_check_that_cannot_tell_is_inconclusive_and_check_says_so(tmp_path, monkeypatch):
    workspace(tmp_path, monkeypatch, '[{"claim": "Cannot tell.", "check": lambda r: None}]')
    assert cli_("run", "-q", "-j", "1").exit_code == 0
    r = cli_("check")
    assert r.exit_code == 3 and "inconclusive" in r.output and "returned None" in r.output, r.output


def test_inconclusive_has_its_own_exit_code(tmp_path, monkeypatch):
    workspace(tmp_path, monkeypatch, '[{"claim": "Below three.", "check": lambda r: r.scalar("final") < 3}]')
    assert cli_("run", "-q", "-j", "1", "--seeds", "3").exit_code == 0  # 2 of the 5 seeds missing
    r = cli_("check")
    assert r.exit_code == 3 and "inconclusive" in r.output, r.output
    assert cli_("check", "--allow-inconclusive").exit_code == 0
    assert cli_("run", "-q", "-j", "1").exit_code == 0
    assert cli_("check").exit_code == 0


@pytest.mark.parametrize("claim, says", [
    ('{"claim": "x", "value": lambda r: 1.0}', "expect"),
    ('{"claim": "x", "value": lambda r: 1.0, "expect": {"approx": 1}}', "rel or abs"),
    ('{"claim": "x", "value": lambda r: 1.0, "expect": {"above": 1, "below": 2}}', "exactly one"),
    ('{"claim": "x", "value": lambda r: 1.0, "expect": {"between": [2, 1]}}', "low first"),
    ('{"claim": "x", "check": lambda r: True, "value": lambda r: 1.0, "expect": {"above": 0}}', "both"),
    ('{"claim": "x", "check": lambda r: True, "xfail": ""}', "xfail"),
    ('{"claim": "x", "check": lambda r: True, "xfail": {3: "why"}}', "needs 'per'"),
    ('{"claim": "x", "value": lambda r: "two", "expect": {"above": 0}}', "one number per seed"),
])
def test_bad_quantitative_claims_are_refused_at_load(tmp_path, monkeypatch, claim, says):
    workspace(tmp_path, monkeypatch, f"[{claim}]")
    r = cli_("run", "-q")
    assert r.exit_code == 1 and says in r.output and "CLAIMS[0]" in r.output, r.output


def test_a_quantitative_claim_shows_its_number_in_the_post(tmp_path, monkeypatch):
    root = workspace(tmp_path, monkeypatch, '[{"claim": "Two within 10 %.", "value": lambda r: r.scalar("final"), '
                                            '"expect": {"approx": 2.0, "rel": 0.1}}]', post=True)
    assert cli_("build", "-q", "-j", "1").exit_code == 0
    text = (root / "publish" / "p" / "post.md").read_text()
    assert "holds in all 5 seeds (value median 2.02 [2.01, 2.1]; expected ≈ 2 ± 10%)" in text, text


def test_xfail_per_group(tmp_path, monkeypatch):
    root = workspace(tmp_path, monkeypatch, '[{"claim": "Ends above 2.05.", "per": "steps", '
                                            '"check": lambda r: r.scalar("final") > 2.05, "min_frac": 0.6, '
                                            '"xfail": {3: "most seeds end lower"}}]')
    path = root / "experiments" / "exp.py"
    path.write_text(path.read_text().replace('PARAMS = {"steps": 3}', 'PARAMS = {"steps": 3}\nSWEEP = {"steps": [3, 4]}')
                    .replace('2 + 0.1 * rng.random()', '2 + 0.1 * rng.random() + (cfg["steps"] == 4)'))
    assert cli_("run", "-q", "-j", "1").exit_code == 0
    r = cli_("check")
    assert r.exit_code == 0 and "fails (xfail)" in r.output and "steps=4" in r.output, r.output
    path.write_text(path.read_text().replace('{3: "most seeds end lower"}', '{7: "no such value"}'))
    bad = cli_("check")
    assert bad.exit_code == 1 and "7 is not a value of 'steps'" in bad.output, bad.output
