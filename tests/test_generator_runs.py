"""`run` may be a generator: it yields per-step values and returns its final scalars; expost
assembles the series, shows progress inside the run, and the script still runs alone."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES
from expost import Workspace


@pytest.fixture
def gen_ws(ws):
    shutil.copy(FIXTURES / "gen.py", ws / "experiments" / "gen.py")
    return ws


def test_yielded_values_become_series_and_the_return_value_scalars(gen_ws, expost):
    r = expost("run", "gen", "-j", "1")
    assert r.exit_code == 0, r.output
    w = Workspace(gen_ws)
    _, plans = w.plan(("gen",))
    from expost.runs.cache import Cache
    from expost.runs.results import from_cache
    from expost.runs.plan import load_specs

    [spec] = load_specs(w.layout, ("gen",))
    rs = from_cache(Cache(w.layout.cache_dir), spec, plans["gen"])
    assert rs.series("step").tolist() == [list(range(0, 40, 5))] * 3
    loss = rs.series("loss")
    assert loss.shape == (3, 8) and (np.diff(loss, axis=1) < 0).all()
    assert np.allclose(rs.scalar("final_loss"), loss[:, -1] * 0.9 ** 4, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ("not a dict", "run() yielded float; yield a dict of this step's values"),
    ("gap", "loss: missing from some of the yielded dicts"),
    ("both", "loss: both yielded at each step and returned at the end"),
])
def test_a_malformed_generator_is_that_runs_failure(gen_ws, expost, bad, message):
    r = expost("run", "gen", "--seeds", "1", "--set", f"bad={bad}")
    assert r.exit_code == 1
    assert message in r.output


def test_progress_inside_a_run_when_output_is_not_a_terminal(gen_ws):
    env = {**os.environ, "EXPOST_PROGRESS_S": "0.3"}
    r = subprocess.run([sys.executable, "-m", "expost", "run", "gen", "--seeds", "1", "--set", "pause=0.15",
                        "--set", "steps=80"], cwd=gen_ws, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("running 1 run(s)\n")
    assert "0 of 1 run(s) done; gen [default] seed 1: step " in r.stderr
    line = next(x for x in r.stderr.splitlines() if "seed 1: step" in x)
    assert "/80" in line and "loss " in line


def test_the_script_still_runs_alone(gen_ws):
    r = subprocess.run([sys.executable, str(gen_ws / "experiments" / "gen.py")], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].startswith("{'step': 0, 'loss': ")


POST = """---
title: Gen
summary: Logged every 5 steps.
experiments: [gen]
---
{{ figure(results("gen"), "curves", "loss") }}
"""


def test_a_logged_step_series_is_the_curves_x_axis(gen_ws, expost):
    (gen_ws / "templates" / "gen.md.j2").write_text(POST)
    r = expost("build", "gen", "-j", "1")
    assert r.exit_code == 0, r.output
    from expost.posts.render import _logged_steps
    from expost.runs.plan import load_specs
    from expost.runs.cache import Cache
    from expost.runs.results import from_cache

    w = Workspace(gen_ws)
    [spec] = load_specs(w.layout, ("gen",))
    rs = from_cache(Cache(w.layout.cache_dir), spec, w.plan(("gen",))[1]["gen"])
    axis, x = _logged_steps(spec, rs, "loss")
    assert axis == "step" and x.tolist() == list(range(0, 40, 5))
    manifest = json.loads((gen_ws / "publish" / "gen" / "manifest.json").read_text())
    assert len(manifest["experiments"]["gen"]["runs"]) == 3
