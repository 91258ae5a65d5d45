"""A catalogue of bad inputs, each driven through the real CLI in a temp workspace.

Every case checks what a user sees: the exit code (1 for an invalid input, 2 for a usage error),
one `Error: ...` message and no Python traceback, the file / field / flag involved named in it,
and a hint at the fix. NaN outputs are not an error: the command succeeds and flags the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import os
import subprocess
import sys

import pytest

from expost.runs.plan import MAX_RUNS_WITHOUT_CONFIRM

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
RUN_LINE = GOOD.splitlines().index("def run(cfg, seed):") + 1

FRONT = "---\ntitle: A post\nsummary: One line.\nexperiments: [toy]\n---\n"
BODY_LINE = FRONT.count("\n") + 1  # the body's first line, as Jinja numbers it
BUILD = ("build", "post", "--seeds", "1", "-q")


def experiment(source: str, name: str = "bad") -> Callable:
    def setup(ws, tmp_path, monkeypatch):
        (ws / "experiments" / f"{name}.py").write_text(source)
    return setup


def post(body: str, front: str = FRONT) -> Callable:
    def setup(ws, tmp_path, monkeypatch):
        (ws / "templates" / "post.md.j2").write_text(front + body + "\n")
    return setup


def both(*setups) -> Callable:
    def setup(ws, tmp_path, monkeypatch):
        for s in setups:
            s(ws, tmp_path, monkeypatch)
    return setup


def no_workspace(ws, tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")


def cache_is_a_file(ws, tmp_path, monkeypatch):
    (tmp_path / "cachefile").write_text("not a folder\n")
    monkeypatch.setenv("EXPOST_CACHE_DIR", str(tmp_path / "cachefile"))


def publish_is_a_file(ws, tmp_path, monkeypatch):
    (ws / "publish").write_text("not a folder\n")  # as root, chmod would not stop writes: a file does


def big_sweep(ws, tmp_path, monkeypatch):
    n = MAX_RUNS_WITHOUT_CONFIRM // 5 + 1
    values = ", ".join(str(0.001 * (i + 1)) for i in range(n))
    source = GOOD.replace('SWEEP = {"rate": [0.5, 1.0]}', f'SWEEP = {{"rate": [{values}]}}').replace("SEEDS = 3", "SEEDS = 5")
    (ws / "experiments" / "big.py").write_text(source)


def package_helpers(ws, tmp_path, monkeypatch):
    """toy imports a local package whose two __init__.py files would share one flat gist name."""
    pkg = ws / "experiments" / "helpers"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("SCALE = 1.0\n")
    (pkg / "sub" / "__init__.py").write_text("OFFSET = 0.0\n")
    toy = ws / "experiments" / "toy.py"
    toy.write_text("import helpers\n" + toy.read_text())


def gistfile_helper(ws, tmp_path, monkeypatch):
    """toy imports a local module named like GitHub's own gistfileN files."""
    (ws / "experiments" / "gistfile1.py").write_text("SCALE = 1.0\n")
    toy = ws / "experiments" / "toy.py"
    toy.write_text("import gistfile1\n" + toy.read_text())


@dataclass
class Case:
    id: str
    args: tuple
    code: int
    names: list  # fragments naming the file / field / flag involved
    fix: str  # a fragment of the hint at the fix
    setup: Callable | None = None
    xfail: str | None = None  # reason, while a fix outside this test's reach is pending


CASES = [
    # -- experiment specs ---------------------------------------------------------------------------
    Case("spec-without-run", ("run", "bad", "-q"), 1, ["bad.py", "run"], "def run(cfg, seed)",
         experiment(GOOD.replace("def run(cfg, seed):", "def train(cfg, seed):"))),
    Case("params-value-not-plain", ("run", "bad", "-q"), 1, ["bad.py", "PARAMS['steps']", "{'n': 5}"],
         "use plain values", experiment(GOOD.replace('"steps": 5}', '"steps": {"n": 5}}'))),
    Case("sweep-value-wrong-type", ("run", "bad", "-q"), 1, ["bad.py", "SWEEP['rate']", "'fast'"],
         "same type as the default", experiment(GOOD.replace("[0.5, 1.0]", '[0.5, "fast"]'))),
    Case("duplicate-params-key", ("run", "bad", "-q"), 1, ["bad.py", "PARAMS['rate']", "duplicate key"],
         "keep one 'rate' entry", experiment(GOOD.replace('"steps": 5}', '"steps": 5, "rate": 1.0}'))),
    Case("duplicate-outputs-key", ("run", "bad", "-q"), 1, ["bad.py", "OUTPUTS['final']", "duplicate key"],
         "keep one 'final' entry",
         experiment(GOOD.replace('"final": "scalar: last value"}', '"final": "scalar: last value", "final": "scalar: x"}'))),
    Case("claim-unknown-output", ("run", "bad", "-q"), 1, ["bad.py", "CLAIMS[0]", "'finale'"],
         "declared outputs: curve, final", experiment(GOOD.replace('r.scalar("final")', 'r.scalar("finale")'))),
    Case("claim-raises", ("run", "bad", "-q"), 1, ["bad.py", "CLAIMS[0]", "ZeroDivisionError"], "Fix the check",
         experiment(GOOD.replace('lambda r: r.scalar("final") < 1', "lambda r: 1 / 0"))),
    Case("spec-seeds-zero", ("run", "bad", "-q"), 1, ["bad.py", "SEEDS", "0"], "SEEDS = 10",
         experiment(GOOD.replace("SEEDS = 3", "SEEDS = 0"))),
    Case("experiment-syntax-error", ("run", "-q"), 1, [f"bad.py:{RUN_LINE}", "syntax error"], "python bad.py",
         experiment(GOOD.replace("def run(cfg, seed):", "def run(cfg, seed)"))),
    Case("sweep-over-guard-limit", ("run", "big", "-q"), 1, ["--yes", f"more than {MAX_RUNS_WITHOUT_CONFIRM} runs", f"big: {(MAX_RUNS_WITHOUT_CONFIRM // 5 + 1) * 5}"],
         "pass --yes", big_sweep),
    # -- flags --------------------------------------------------------------------------------------
    Case("set-unknown-key", ("run", "toy", "--set", "lr=0.1"), 1, ["--set", "'lr'", "toy"],
         "Allowed: fail_seed, nan_seed, rate, steps"),
    Case("set-wrong-type", ("run", "toy", "--set", "steps=many"), 1, ["--set steps=many", "steps"],
         "give a value of that type"),
    Case("set-malformed", ("run", "toy", "--set", "steps"), 2, ["--set", "'steps'"], "KEY=VALUE"),
    Case("seeds-flag-zero", ("run", "toy", "--seeds", "0"), 2, ["--seeds", "0"], "x>=1"),
    Case("where-matches-nothing", ("run", "toy", "--where", "rate=7"), 1, ["--where rate=7", "toy"], "Sweep points"),
    Case("unknown-experiment", ("run", "nope"), 1, ["'nope'", "experiments/"], "Available: other, toy"),
    # -- posts and templates ------------------------------------------------------------------------
    Case("unknown-post", ("build", "nope"), 1, ["'nope'", "templates/nope.md.j2"], "expost new post nope"),
    Case("template-undefined-name", BUILD, 1, [f"post.md.j2:{BODY_LINE + 1}", "'nope' is undefined"], "a typo?",
         post("fine\n{{ nope }}")),
    Case("template-syntax-error", BUILD, 1, [f"post.md.j2:{BODY_LINE + 2}", "template syntax error"],
         "every block ended", post("fine\n\n{% if %}")),
    Case("template-include-missing", BUILD, 1, [f"post.md.j2:{BODY_LINE}", "'_nope.md.j2'"],
         "create templates/_nope.md.j2", post('{% include "_nope.md.j2" %}')),
    Case("front-matter-unknown-key", BUILD, 1, ["post.md.j2:2", "'titel'"], "use title, summary",
         post("x", FRONT.replace("title:", "titel:"))),
    Case("front-matter-not-closed", BUILD, 1, ["post.md.j2:1", "front matter"], "Add a '---' line",
         post("x", FRONT[:-4])),
    Case("front-matter-duplicate-key", BUILD, 1, ["post.md.j2:3", "'title'", "twice"], "keep one title: line",
         post("x", FRONT.replace("summary:", "title: Again\nsummary:"))),
    Case("front-matter-bad-seeds", ("build", "post", "-q"), 1, ["post.md.j2", "seeds", "0"], "write seeds: 10",
         post("x", FRONT.replace("experiments: [toy]\n", "experiments: [toy]\nseeds: 0\n"))),
    Case("post-unknown-experiment", BUILD, 1, ["post.md.j2", "experiments", "'nope'"], "Available: other, toy",
         post("x", FRONT.replace("[toy]", "[toy, nope]"))),
    Case("post-experiment-listed-twice", BUILD, 1, ["post.md.j2", "experiments", "'toy'"], "list each experiment once",
         post("x", FRONT.replace("[toy]", "[toy, toy]"))),
    Case("figure-unknown-series", BUILD, 1, [f"post.md.j2:{BODY_LINE}", "'nope'"], "declared outputs: curve, final",
         post('{{ figure(results("toy"), "curves", "nope", by="rate") }}')),
    Case("code-unknown-symbol", BUILD, 1, [f"post.md.j2:{BODY_LINE}", "'nope'", "toy.py"], "defined: run",
         post('{{ code("toy", "nope") }}')),
    # -- workspace, cache, publish ------------------------------------------------------------------
    Case("no-workspace", ("list",), 1, ["no workspace found", "experiments/"], "expost new workspace", no_workspace),
    Case("workspace-flag-without-experiments", ("--workspace", "{tmp}", "list"), 1, ["--workspace"],
         "expost new workspace"),
    Case("invalid-expost-toml", ("list",), 1, ["expost.toml"], "Fix the file or remove it",
         lambda ws, tmp_path, mp: (ws / "expost.toml").write_text("image_base_url = \n")),
    Case("nan-outputs-are-flagged", ("run", "toy", "--seeds", "2", "-q", "--set", "nan_seed=2"), 0,
         ["flagged: toy [rate=0.5] seed 2", "flagged: toy [rate=1.0] seed 2", "NaN/inf in final"], "NaN/inf"),
    Case("publish-is-a-file", BUILD, 1, ["publish"], "move or delete that file",
         both(publish_is_a_file, post("fine"))),
    Case("cache-is-a-file-run", ("run", "toy", "-q"), 1, ["EXPOST_CACHE_DIR", "cachefile"],
         "point EXPOST_CACHE_DIR at a folder", cache_is_a_file),
    Case("cache-is-a-file-build", BUILD, 1, ["EXPOST_CACHE_DIR", "cachefile"],
         "point EXPOST_CACHE_DIR at a folder", both(cache_is_a_file, post("fine"))),
    Case("cache-is-a-file-check", ("check", "toy"), 1, ["EXPOST_CACHE_DIR", "cachefile"],
         "point EXPOST_CACHE_DIR at a folder", cache_is_a_file),
    Case("gist-names-collide", BUILD, 1, ["experiments/helpers/__init__.py", "experiments/helpers/sub/__init__.py",
                                          "'__init__.py'"], "rename one of them",
         both(package_helpers, post("fine"))),
    Case("gist-gistfile-name", BUILD, 1, ["'gistfile1.py'", "experiments/gistfile1.py"], "rename it",
         both(gistfile_helper, post("fine"))),
]


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_catalogue_is_large_and_unique():
    assert len(CASES) >= 22
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case, expost, ws, tmp_path, monkeypatch):
    if case.setup:
        case.setup(ws, tmp_path, monkeypatch)
    r = expost(*(str(a).format(tmp=tmp_path) for a in case.args))
    out = r.output
    assert r.exit_code == case.code, out
    assert "Traceback" not in out, out
    if case.code == 0:
        assert "Error:" not in out, out
        message = out
    else:
        errors = [line for line in out.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, out
        message = out[out.index("Error: "):]
    for fragment in case.names:
        assert fragment in message, (fragment, out)
    assert case.fix in message, (case.fix, out)


def test_experiment_named_twice_on_the_command_line_is_not_a_duplicate_file(expost):
    r = expost("list", "toy", "toy")
    assert r.exit_code == 0, r.output
    assert len([line for line in r.output.splitlines() if line.startswith("toy\t")]) == 1, r.output


@pytest.mark.parametrize("spec_text", [
    'SEEDS = 100000000',
    'SWEEP = {' + ", ".join(f'"a{i}": list(range(100))' for i in range(8)) + '}',
])
def test_a_huge_plan_is_refused_at_once_in_constant_memory(tmp_path, spec_text):
    """SEEDS = 10**8 or a 10**16-point sweep: every verb answers in moments with the guard's
    message, before a single run is built (the timeout only guards against a hang)."""
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    params = "{" + ", ".join(f'"a{i}": 0' for i in range(8)) + "}"
    sweep = spec_text.replace("list(range(100))", "[" + ", ".join(map(str, range(100))) + "]")
    (root / "experiments" / "huge.py").write_text(
        f'PARAMS = {params}\n{sweep}\nOUTPUTS = {{"x": "scalar: x"}}\n\n\ndef run(cfg, seed):\n    return {{"x": 1.0}}\n')
    env = {**os.environ, "EXPOST_CACHE_DIR": str(tmp_path / "cache")}
    for args, says in ((["run"], "more than 200000 runs"), (["run", "--yes"], "narrow it with --where"),
                       (["list"], "more than 200000 runs"), (["check"], "more than 200000 runs")):
        r = subprocess.run([sys.executable, "-m", "expost", *args], cwd=root, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
