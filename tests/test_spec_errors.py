"""Bad specs fail at load, before any run, with one message naming file, field and fix."""

import pytest

GOOD = '''
PARAMS = {"rate": 0.5, "steps": 5}
SWEEP = {"rate": [0.5, 1.0]}
SEEDS = 3
OUTPUTS = {"curve": "series: value per step", "final": "scalar: last value"}
CLAIMS = [{"claim": "final is small", "check": lambda r: r.scalar("final") < 1, "per": "rate"}]

def run(cfg, seed):
    curve = [1.0 / (t + 1) for t in range(cfg["steps"])]
    return {"curve": curve, "final": curve[-1]}
'''

CASES = {
    "missing run": (GOOD.replace("def run(cfg, seed):", "def train(cfg, seed):"), ["bad.py", "run", "def run(cfg, seed)"]),
    "sweep axis not a list": (GOOD.replace('"rate": [0.5, 1.0]', '"rate": 0.5'), ["bad.py", "SWEEP['rate']", "list"]),
    "sweep axis unknown": (GOOD.replace('SWEEP = {"rate"', 'SWEEP = {"lr"'), ["SWEEP['lr']", "PARAMS"]),
    "sweep wrong type": (GOOD.replace("[0.5, 1.0]", '[0.5, "fast"]'), ["SWEEP['rate']", "'fast'", "same type"]),
    "output kind": (GOOD.replace('"scalar: last value"', '"number: last value"'), ["OUTPUTS['final']", "scalar:"]),
    "params not literal": (GOOD.replace('PARAMS = {"rate": 0.5, "steps": 5}', 'PARAMS = make_params(rate=0.5)'),
                           ["bad.py:2", "PARAMS", "make_params", "literal"]),
    "seeds zero": (GOOD.replace("SEEDS = 3", "SEEDS = 0"), ["SEEDS", "positive integer"]),
    "syntax error": (GOOD.replace("def run(cfg, seed):", "def run(cfg, seed)"), ["bad.py:8", "syntax error"]),
    "claim unknown output": (GOOD.replace('r.scalar("final")', 'r.scalar("finale")'),
                             ["bad.py", "CLAIMS[0]", "no output 'finale'", "declared outputs: curve, final"]),
    "claim raises": (GOOD.replace('lambda r: r.scalar("final") < 1', "lambda r: 1 / 0"),
                     ["bad.py", "CLAIMS[0]", "ZeroDivisionError"]),
    "claim without check": (GOOD.replace('"check": lambda r: r.scalar("final") < 1, ', ""),
                            ["CLAIMS[0]['check']", "lambda r"]),
    "claim per unknown axis": (GOOD.replace('"per": "rate"', '"per": "steps"'), ["CLAIMS[0]['per']", "sweep axis"]),
    "claim unknown parameter": (GOOD.replace('r.scalar("final") < 1', 'r.where(lr=1).scalar("final") < 1'),
                                ["CLAIMS[0]", "no parameter 'lr'"]),
    "import fails": ("import not_a_module\n" + GOOD, ["bad.py", "importing the script failed", "ModuleNotFoundError"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_spec_fails_before_any_run(expost, ws, name):
    source, expected = CASES[name]
    (ws / "experiments" / "bad.py").write_text(source)
    r = expost("run", "-q")
    assert r.exit_code == 1, r.output
    assert r.ran == [], "no run may start when a spec is bad"
    assert "Traceback" not in r.output
    message = r.output.strip().splitlines()
    assert message[0].startswith("Error: ")
    for fragment in expected:
        assert fragment in r.output, (fragment, r.output)


@pytest.mark.parametrize("returns,expected", [
    ('{"curve": curve, "final": curve[-1], "extra": 1.0}', "produced but not declared: extra"),
    ('{"curve": curve}', "declared but not produced: final"),
    ('{"curve": curve[-1], "final": curve[-1]}', "declared 'series'"),
])
def test_output_mismatch_is_reported_per_run(expost, ws, returns, expected):
    (ws / "experiments" / "bad.py").write_text(GOOD.replace('{"curve": curve, "final": curve[-1]}', returns))
    r = expost("run", "bad", "-q")
    assert r.exit_code == 1
    assert expected in r.output
    assert "bad [rate=0.5] seed 1" in r.output


def test_set_and_where_errors(expost):
    r = expost("run", "toy", "--set", "lr=0.1")
    assert r.exit_code == 1
    assert "no parameter 'lr'" in r.output and "Allowed: fail_seed, nan_seed, rate, steps" in r.output
    r = expost("run", "toy", "--set", "steps=many")
    assert r.exit_code == 1 and "steps is a int" in r.output
    r = expost("run", "toy", "--set", "steps")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    r = expost("run", "toy", "--where", "rate=7")
    assert r.exit_code == 1 and "no config of toy matches" in r.output
    r = expost("run", "toy", "--seeds", "0")
    assert r.exit_code == 2
    r = expost("run", "nope")
    assert r.exit_code == 1 and "no experiment 'nope'" in r.output and "Available: other, toy" in r.output


def test_no_workspace(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from expost.cli import cli

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["list"])
    assert r.exit_code == 1
    assert "no workspace found" in r.output and "--workspace" in r.output
