"""A run's cache key is the code that computes it: what run() reaches, normalised. Editing a claim,
a figure function, a comment or a docstring reruns nothing; editing what run() computes with
reruns every run of the experiment. Real files, real workers."""

import pytest
from click.testing import CliRunner

from expost.cli import cli
from expost.runs.reach import reached_parts

EXPERIMENT = '''"""An experiment in the shape researchers write: helpers, a constant, claims, a figure."""
import math

import _kit
from _kit import scale

DECAY = 0.5  # per step
PARAMS = {"steps": 4}
SEEDS = 3
OUTPUTS = {"final": "scalar: the value after the last step"}
CLAIMS = [{"claim": "It ends below 10.", "check": lambda r: r.scalar("final") < 10}]


def figure_curve(ax, r):
    """A figure function: drawing code, never run by a run."""
    ax.plot(r.scalar("final"))


def step(x):
    return x * DECAY + math.sqrt(2)


def run(cfg, seed):
    """Docstring of run."""
    x = scale(seed)  # a comment
    for _ in range(cfg["steps"]):
        x = step(x)
    return {"final": x}
'''

KIT = '''def scale(seed):
    return seed * 3


def unused_plot(ax):
    return ax
'''


@pytest.fixture
def key_ws(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "experiments" / "exp.py").write_text(EXPERIMENT)
    (root / "experiments" / "_kit.py").write_text(KIT)
    monkeypatch.chdir(root)
    return root


def run_exp(*args):
    r = CliRunner().invoke(cli, ["run", "exp", "-q", "-j", "1", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stderr


def edit(root, rel, old, new):
    path = root / "experiments" / rel
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("rel, old, new", [
    ("exp.py", "It ends below 10.", "It ends below 11."),                      # a claim's sentence
    ("exp.py", 'r.scalar("final") < 10', 'r.scalar("final") < 11'),           # a claim's check
    ("exp.py", "ax.plot(r.scalar", "ax.scatter(r.scalar"),                     # a figure function
    ("exp.py", "# a comment", "# another comment, longer"),                    # a comment
    ("exp.py", '"""Docstring of run."""', '"""Another docstring."""'),          # a docstring
    ("exp.py", "    x = scale(seed)", "    x = scale(\n        seed)"),        # formatting
    ("exp.py", 'SEEDS = 3', 'SEEDS = 3\nTITLE = "not used by run"'),            # an unreached constant
    ("_kit.py", "return ax", "return ax, ax"),                                 # an unreached helper
    ("exp.py", '"final": "scalar: the value', '"final": "scalar: THE value'),  # an output's description
])
def test_edits_that_do_not_change_what_run_computes_rerun_nothing(key_ws, rel, old, new):
    assert "3 ran" in run_exp()
    edit(key_ws, rel, old, new)
    assert "0 ran" in run_exp() and "3 cached" in run_exp()


@pytest.mark.parametrize("rel, old, new", [
    ("exp.py", "DECAY = 0.5", "DECAY = 0.25"),                   # a constant run reaches
    ("exp.py", "math.sqrt(2)", "math.sqrt(3)"),                  # a function run calls
    ("exp.py", 'x = scale(seed)', 'x = scale(seed) + 1'),        # run itself
    ("_kit.py", "seed * 3", "seed * 4"),                         # a helper module's reached function
    ("exp.py", "import math\n", "import math\nmath.pi_ish = 3\n"),  # module-level code with side effects
    ("exp.py", '"scalar: the value', '"series: the value'),      # an output's kind
])
def test_edits_of_what_run_computes_rerun_everything(key_ws, rel, old, new):
    assert "3 ran" in run_exp()
    edit(key_ws, rel, old, new)
    explain = CliRunner().invoke(cli, ["run", "exp", "--explain"], catch_exceptions=False).output
    reasons = {line.split("\t")[3] for line in explain.splitlines()}
    assert len(explain.splitlines()) == 3 and len(reasons) == 1 and reasons.pop().startswith("source changed"), explain


def test_a_local_module_used_as_a_value_counts_whole(key_ws):
    edit(key_ws, "exp.py", "x = scale(seed)", "x = _kit.scale(seed)")
    assert "3 ran" in run_exp()
    edit(key_ws, "_kit.py", "return ax", "return ax, ax")  # unreached by name, but _kit is used whole
    assert "3 ran" in run_exp()


def test_dynamic_lookups_count_the_whole_module(key_ws):
    edit(key_ws, "exp.py", "x = step(x)", 'x = globals()["step"](x)')
    parts = reached_parts(key_ws / "experiments" / "exp.py")
    assert "exp.figure_curve" in parts and "exp.CLAIMS" in parts


def test_reached_parts_name_what_run_computes_with(key_ws):
    parts = reached_parts(key_ws / "experiments" / "exp.py")
    assert {"exp.run", "exp.step", "exp.DECAY", "exp.math", "_kit.scale", "exp.scale"} <= set(parts)
    assert not {"exp.CLAIMS", "exp.figure_curve", "exp.SEEDS", "_kit.unused_plot"} & set(parts)


@pytest.mark.parametrize("rel, old, new, says", [
    ("exp.py", "math.sqrt(2)", "math.sqrt(3)", "source changed: `step` changed"),
    ("exp.py", "DECAY = 0.5", "DECAY = 0.25", "source changed: `DECAY` changed"),
    ("_kit.py", "seed * 3", "seed * 4", "source changed: `scale` changed"),
    ("exp.py", "    x = scale(seed)", "    x = scale(seed) + BONUS", "source changed: `run` changed, `BONUS` added"),
])
def test_explain_names_what_changed(key_ws, rel, old, new, says):
    assert "3 ran" in run_exp()
    edit(key_ws, rel, old, new)
    if "BONUS" in new:
        edit(key_ws, "exp.py", "DECAY = 0.5", "DECAY = 0.5\nBONUS = 1")
    explain = CliRunner().invoke(cli, ["run", "exp", "--explain"], catch_exceptions=False).output
    assert {line.split("\t")[3] for line in explain.splitlines()} == {says}, explain
