"""No silent wrong result from a run's outputs: every bad output is one message naming the output
and the fix (the other seeds cached), mixed lists are refused, a value beyond float32 is flagged, an
edited scalar in the cache is detected and rerun, and an optional output that a run did not reach
is "not reached", never "diverged"."""

import json
import re

from click.testing import CliRunner

from expost.cli import cli

EXP = '''PARAMS = {{"steps": 4}}
SEEDS = {seeds}
OUTPUTS = {outputs}
CLAIMS = {claims}
BAD = {bad}


def run(cfg, seed):
    curve = [1.0 / (t + 1) + 0.01 * seed for t in range(cfg["steps"])]
    out = {{"curve": curve, "final": curve[-1]}}
    out.update(BAD.get(seed, {{}}))
    return out
'''

OUTPUTS = '{"curve": "series: value at each step", "final": "scalar: value after the last step"}'
TEMPLATE = '''---
title: P
summary: S.
experiments: [exp]
---
{% set r = results("exp") %}
The first step below 0.3: {{ stat(r, "first") }}. {{ caveat(r, "first") }}

{{ claim("exp", 0) }}

{{ seed_table(r, "first") }}
'''


def workspace(tmp_path, monkeypatch, bad: str, seeds: int = 5, outputs: str = OUTPUTS, claims: str = "[]",
              post: bool = False):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "experiments" / "exp.py").write_text(EXP.format(seeds=seeds, outputs=outputs, claims=claims, bad=bad))
    if post:
        (root / "templates" / "p.md.j2").write_text(TEMPLATE)
    monkeypatch.chdir(root)
    return root


def cli_(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def entries(cache_dir):
    return sorted(cache_dir.glob("runs/*/*/result.json"))


def failure_line(output: str, seed: int) -> str:
    lines = [line for line in output.splitlines() if re.search(rf"\] seed {seed}: ", line)]
    assert len(lines) == 1, output
    return lines[0]


def test_each_bad_output_is_one_message_naming_the_output_and_the_fix(tmp_path, monkeypatch, cache_dir):
    bad = {  # seed: (output, value, what the message must say besides the output's name)
        1: ("curve", "[[1.0, 2.0], [3.0]]", ["ragged", "flat list of numbers"]),
        2: ("final", '"0.5"', ["a string", "return a number"]),
        3: ("final", "complex(1, 2)", ["complex", ".real"]),
        4: ("final", '{"a": 1.0}', ["a dict", "its own output"]),
        5: ("final", "None", ["is None", '"final": "scalar?: ']),
        6: ("curve", "[[1.0, 2.0], [3.0, 4.0]]", ["shape (2, 2)", "1-D"]),
        7: ("curve", "[]", ["empty", "at least one value"]),
        8: ("curve", "[1.0, 2.0, float('nan'), [4.0]]", ["ragged", "flat list of numbers"]),
    }
    source = "{" + ", ".join(f"{s}: {{{name!r}: {value}}}" for s, (name, value, _) in bad.items()) + "}"
    workspace(tmp_path, monkeypatch, source, seeds=10)
    r = cli_("run", "-q", "-j", "1")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"{len(bad)} run(s) failed" in r.output, r.output
    for seed, (name, _, says) in bad.items():
        line = failure_line(r.output, seed)
        assert f"OutputError: output {name!r} " in line, line
        for fragment in says:
            assert fragment in line, (fragment, line)
    assert len(entries(cache_dir)) == 2  # seeds 9 and 10 are cached all the same


def test_a_mixed_list_is_refused_not_coerced(tmp_path, monkeypatch, cache_dir):
    workspace(tmp_path, monkeypatch, '{1: {"curve": [1, 2.0, True, "4"]}, 2: {"curve": [1.0, True, 3.0]}, '
                                     '3: {"curve": [0.5, 0.25] + ["0.125"]}, 4: {"final": True}}')
    r = cli_("run", "-q", "-j", "1")
    assert r.exit_code == 1, r.output
    assert "3 run(s) failed" in r.output, r.output
    one, two, three = (failure_line(r.output, s) for s in (1, 2, 3))
    assert "output 'curve'" in one and "string" in one and "'4' at index 3" in one, one
    assert "output 'curve'" in two and "bool" in two and "True at index 1" in two, two
    assert "output 'curve'" in three and "'0.125' at index 2" in three, three
    assert "return numbers only" in one + two + three
    assert "seed 4:" not in r.output  # a scalar may be a bool
    scalars = [json.loads(p.read_text())["scalars"]["final"] for p in entries(cache_dir)]
    assert True in scalars and len(scalars) == 2


def test_a_value_beyond_float32_is_flagged_like_nan(tmp_path, monkeypatch, cache_dir):
    workspace(tmp_path, monkeypatch, '{2: {"curve": [1.0, 1e39, 2.0, 3.0]}, 3: {"curve": [1.0, -3.5e38, 2.0, 3.0]}}')
    r = cli_("run", "-q", "-j", "1")
    assert r.exit_code == 0, r.output
    flagged = [line for line in r.output.splitlines() if line.startswith("flagged:")]
    assert len(flagged) == 2, r.output
    assert "seed 2 produced NaN/inf in curve" in flagged[0] and "exceeds float32" in flagged[0], flagged
    assert "1e+39" in flagged[0] and "seed 3" in flagged[1] and "exceeds float32" in flagged[1], flagged
    metas = [json.loads(p.read_text()) for p in entries(cache_dir)]
    assert sum(bool(m["nonfinite"]) for m in metas) == 2


def test_an_edited_scalar_in_the_cache_is_detected_and_rerun(tmp_path, monkeypatch, cache_dir):
    workspace(tmp_path, monkeypatch, "{}")
    assert cli_("run", "-q", "-j", "1").exit_code == 0
    path = entries(cache_dir)[0]
    meta = json.loads(path.read_text())
    good = meta["scalars"]["final"]
    meta["scalars"]["final"] = good + 1.0  # still valid JSON, the series untouched
    path.write_text(json.dumps(meta, sort_keys=True, indent=1))
    r = cli_("run", "-q", "-j", "1")
    assert r.exit_code == 0, r.output
    assert "1 corrupt cache entry" in r.output and "4 cached, 1 ran" in r.output, r.output
    assert json.loads(path.read_text())["scalars"]["final"] == good
    # a flag edited away is caught the same way
    meta = json.loads(path.read_text())
    meta["nonfinite"] = ["final"]
    path.write_text(json.dumps(meta))
    r = cli_("run", "-q", "-j", "1")
    assert "1 corrupt cache entry" in r.output and "4 cached, 1 ran" in r.output, r.output
    assert cli_("run", "-q", "-j", "1").output.count("5 cached, 0 ran") == 1


OPTIONAL = ('{"curve": "series: value at each step", "final": "scalar: value after the last step", '
            '"first": "scalar?: first step where the value is below 0.3 (none if never)"}')
REACHED = ('[{"claim": "Most seeds get below 0.3.", "check": lambda r: r.reached("first"), "min_frac": 0.6, '
           '"metric": "first"}, '
           '{"claim": "Where reached, it is early.", "check": lambda r: ~r.reached("first") | (r.scalar("first") < 5)}]')


def test_an_optional_output_not_reached_is_not_reached_never_diverged(tmp_path, monkeypatch, cache_dir):
    root = workspace(tmp_path, monkeypatch, '{s: {"first": 3 if s in (1, 3, 5) else None} for s in range(1, 6)}',
                     outputs=OPTIONAL, claims=REACHED, post=True)
    r = cli_("run", "-q", "-j", "1")
    assert r.exit_code == 0 and "flagged" not in r.output, r.output
    stored = sorted(json.loads(p.read_text())["scalars"]["first"] is None for p in entries(cache_dir))
    assert stored == [False, False, False, True, True]  # stored as not reached, not as NaN

    check = cli_("check")
    assert check.exit_code == 0, check.output
    lines = check.output.splitlines()
    assert "holds" in lines[1] and "3/5" in lines[1], check.output  # r.reached in a claim
    assert "not reached within the run in 2 of 5 seeds" in lines[1], check.output
    assert "holds" in lines[2] and "5/5" in lines[2], check.output
    assert "diverged" not in check.output and "NaN" not in check.output

    build = cli_("build", "-q", "-j", "1")
    assert build.exit_code == 0, build.output
    text = (root / "publish" / "p" / "post.md").read_text()
    assert "median 3 (95% CI 3–3, n=3; not reached within the run in 2 of 5 seeds)" in text, text
    assert "First step where the value is below 0.3 was not reached within the run in 2 of 5 seeds" in text, text
    assert "| 2 | not reached |" in text, text
    assert "diverged" not in text and "NaN" not in text and "nan" not in text, text


def test_optional_none_and_nan_are_told_apart(tmp_path, monkeypatch):
    """NaN in an optional output is still a divergence; None is not; r.scalar gives NaN for both."""
    from expost.runs.results import Record, ResultSet
    from expost.posts import caveats

    values = {1: 2.0, 2: None, 3: float("nan"), 4: 4.0, 5: None}
    rs = ResultSet([Record("e", {}, {}, s, {"first": v}, None) for s, v in values.items()], {"first": "scalar?"}, "e")
    assert rs.reached("first").tolist() == [True, False, True, True, False]
    assert [str(x) for x in rs.scalar("first")] == ["2.0", "nan", "nan", "4.0", "nan"]
    s = rs.stats("first")
    assert (s.n, s.n_nonfinite, s.n_unreached, s.median) == (2, 1, 2, 3.0)
    said = " ".join(caveats.quantity(s, "first"))
    assert "First was not reached within the run in 2 of 5 seeds" in said, said
    assert "1 of 5 runs diverged (NaN/inf in first)" in said, said


def test_a_series_cannot_be_optional(tmp_path, monkeypatch):
    workspace(tmp_path, monkeypatch, "{}", outputs='{"curve": "series?: value at each step", "final": "scalar: x"}')
    r = cli_("run", "-q", "-j", "1")
    assert r.exit_code == 1 and "OUTPUTS['curve']" in r.output and "only scalars can be optional" in r.output, r.output
