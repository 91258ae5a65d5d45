"""A prose-only edit renders text only: figures and claim verdicts come from the cache by their
inputs, so the rebuild imports neither torch, nor matplotlib, nor the experiment; and no edit that
changes a figure or a verdict is ever served from that cache. Real processes, real files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from expost.cli import cli

EXPERIMENT = '''"""A tiny torch fit with a figure function of its own."""
import torch

PARAMS = {"lr": 0.1, "steps": 20}
SEEDS = 3
OUTPUTS = {"loss": "series: squared error per step", "final": "scalar: last loss"}
CLAIMS = [{"claim": "The loss ends below its start.",
           "check": lambda r: r.series("loss")[:, -1] < r.series("loss")[:, 0]}]


def run(cfg, seed):
    w = torch.zeros((), requires_grad=True)
    target = 1.0 + torch.rand(())
    losses = torch.empty(cfg["steps"])
    for t in range(cfg["steps"]):
        loss = (w - target) ** 2
        loss.backward()
        with torch.no_grad():
            w -= cfg["lr"] * w.grad
            w.grad.zero_()
        losses[t] = loss.detach()
    return {"loss": losses, "final": float(losses[-1])}


def figure_finals(ax, r):
    ax.bar(range(len(r.seeds)), r.scalar("final"), color="C0")
'''

POST = '''---
title: Text only
summary: A prose edit renders text only.
experiments: [tonly]
---
{% set r = results("tonly") %}
PROSE-ONE.
Final loss: {{ stat(r, "final", kind="range") }}.

{{ claim("tonly", 0) }}

{{ figure(r, "curves", "loss", logy=True) }}

{{ figure(r, "finals") }}
'''

# Runs `expost ARGS` in this process and says which of the heavy modules it imported.
PROBE = '''
import os
import sys
import click
from expost.cli import cli
try:
    code = cli.main(sys.argv[1:], standalone_mode=False) or 0
except click.ClickException as e:
    e.show()
    code = e.exit_code
here = os.path.join(os.getcwd(), "experiments", "")
found = [m for m in ("torch", "matplotlib") if m in sys.modules]
found += ["experiment"] * any(str(getattr(m, "__file__", "")).startswith(here) for m in list(sys.modules.values()))
print("LOADED", ",".join(found) or "-")
sys.exit(code)
'''

CURVES, OWN = "figures/fig1-curves-loss.png", "figures/fig2-finals.png"


def expost(root: Path, *args) -> subprocess.CompletedProcess:
    """`expost ARGS` in a fresh process in `root` (EXPOST_CACHE_DIR as the test set it)."""
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=root, capture_output=True, text=True,
                          timeout=300)


def loaded(p: subprocess.CompletedProcess) -> set[str]:
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("LOADED ")][-1]
    return set(line.split()[1].split(",")) - {"-"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workspace built once (runs, figures, verdicts cached): each test works on a copy."""
    base = tmp_path_factory.mktemp("textonly")
    root = base / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "experiments" / "tonly.py").write_text(EXPERIMENT)
    (root / "templates" / "tonly.md.j2").write_text(POST)
    p = subprocess.run([sys.executable, "-m", "expost", "build", "-q", "-j", "1"], cwd=root, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "EXPOST_CACHE_DIR": str(base / "cache")})
    assert p.returncode == 0, p.stderr
    return root, base / "cache"


@pytest.fixture
def ws(built, tmp_path, cache_dir):
    root, cache = built
    shutil.copytree(root, tmp_path / "ws")
    shutil.copytree(cache, cache_dir)
    return tmp_path / "ws"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def published(root: Path) -> dict[str, bytes]:
    out = root / "publish" / "tonly"
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def assert_same_as_fresh_render(root: Path) -> dict[str, bytes]:
    """publish/ equals, byte for byte, a render that draws and evaluates everything anew (in this
    process: torch and matplotlib are imported once for all the tests)."""
    before = published(root)
    r = CliRunner().invoke(cli, ["--workspace", str(root), "render", "--force"], catch_exceptions=False)
    assert r.exit_code == 0 and "tonly: rendered" in r.output, r.output
    assert published(root) == before
    return before


def build(root: Path) -> subprocess.CompletedProcess:
    p = expost(root, "build", "-q", "-j", "1")
    assert "tonly: rendered" in p.stdout, p.stdout + p.stderr
    return p


def test_prose_edit_imports_neither_torch_nor_matplotlib_nor_the_experiment(ws):
    edit(ws / "templates" / "tonly.md.j2", "PROSE-ONE", "PROSE-TWO")
    p = build(ws)
    assert p.returncode == 0 and "0 ran" in p.stderr, p.stderr
    assert loaded(p) == set()
    text = (ws / "publish" / "tonly" / "post.md").read_text()
    assert "PROSE-TWO" in text and "holds in all 3 seeds" in text
    before = published(ws)
    forced = expost(ws, "render", "--force")  # draws and evaluates anew, reading neither cache
    assert forced.returncode == 0 and {"torch", "matplotlib", "experiment"} <= loaded(forced)
    assert published(ws) == before
    check = expost(ws, "build", "--check", "-q")
    assert check.returncode == 0 and "tonly: up to date" in check.stdout, check.stdout + check.stderr


def test_edited_figure_function_and_claim_are_drawn_and_evaluated_anew(ws):
    old = published(ws)
    edit(ws / "experiments" / "tonly.py", 'color="C0"', 'color="C3"')
    edit(ws / "experiments" / "tonly.py", '[:, -1] < r.series("loss")[:, 0]', '[:, -1] > r.series("loss")[:, 0]')
    p = build(ws)
    assert p.returncode == 0 and "0 ran" in p.stderr, p.stderr  # neither is what a run computes
    assert {"matplotlib", "experiment"} <= loaded(p)
    new = assert_same_as_fresh_render(ws)
    assert new[OWN] != old[OWN] and new[CURVES] == old[CURVES]
    assert "does not hold" in new["post.md"].decode()


def test_changed_runs_redraw_and_reevaluate(ws):
    old = published(ws)
    edit(ws / "experiments" / "tonly.py", '"lr": 0.1', '"lr": 0.0')  # the loss never moves: the claim fails
    p = build(ws)
    assert p.returncode == 0 and "3 ran" in p.stderr, p.stderr
    new = assert_same_as_fresh_render(ws)
    assert new[CURVES] != old[CURVES] and new[OWN] != old[OWN]
    assert "does not hold" in new["post.md"].decode()


def test_damaged_cached_figures_are_drawn_again(ws, cache_dir):
    entries = sorted((cache_dir / "figures").rglob("*"))
    entries = [e for e in entries if e.is_file()]
    assert len(entries) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:-100])  # truncated
    data = bytearray(entries[1].read_bytes())
    data[200] ^= 0xFF  # one byte flipped
    entries[1].write_bytes(bytes(data))
    edit(ws / "templates" / "tonly.md.j2", "PROSE-ONE", "PROSE-TWO")
    p = build(ws)
    assert p.returncode == 0, p.stderr
    assert "matplotlib" in loaded(p)  # drawn, not served
    assert_same_as_fresh_render(ws)
    edit(ws / "templates" / "tonly.md.j2", "PROSE-TWO", "PROSE-THREE")  # the entries were written anew
    assert loaded(build(ws)) == set()


def test_claim_error_is_evaluated_and_reported_again(ws):
    # the dry run's placeholder results have 4 seeds, the runs 3: the check raises on the runs only
    edit(ws / "experiments" / "tonly.py", 'r.series("loss")[:, -1] < r.series("loss")[:, 0]',
         'r.scalar("final") < 9 if len(r.seeds) == 4 else 1 / 0')
    first = CliRunner().invoke(cli, ["--workspace", str(ws), "build", "-q", "-j", "1"], catch_exceptions=False)
    assert first.exit_code == 1 and "ZeroDivisionError" in first.output, first.output
    again = expost(ws, "build", "-q", "-j", "1")  # not remembered: evaluated anew, reported again
    assert again.returncode == 1, again.stdout + again.stderr
    assert "could not be evaluated" in again.stderr and "ZeroDivisionError" in again.stderr, again.stderr
    assert "experiment" in loaded(again)
    edit(ws / "experiments" / "tonly.py", "else 1 / 0", 'else r.scalar("final") < 9')  # fixed: it holds
    fixed = CliRunner().invoke(cli, ["--workspace", str(ws), "build", "-q", "-j", "1"], catch_exceptions=False)
    assert fixed.exit_code == 0, fixed.output
    assert_same_as_fresh_render(ws)
    assert "holds in all 3 seeds" in (ws / "publish" / "tonly" / "post.md").read_text()


def test_a_cache_that_cannot_hold_figures_or_verdicts_only_loses_the_speed_up(ws, cache_dir):
    for folder in ("figures", "verdicts"):  # files where the folders go: every read and write fails
        shutil.rmtree(cache_dir / folder)
        (cache_dir / folder).write_text("")
    edit(ws / "templates" / "tonly.md.j2", "PROSE-ONE", "PROSE-TWO")
    r = CliRunner().invoke(cli, ["--workspace", str(ws), "build", "-q", "-j", "1"], catch_exceptions=False)
    assert r.exit_code == 0 and "tonly: rendered" in r.output, r.output
    assert "PROSE-TWO" in (ws / "publish" / "tonly" / "post.md").read_text()
    assert_same_as_fresh_render(ws)
