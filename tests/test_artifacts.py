"""Each run gets a folder of its own (EXPOST_ARTIFACTS) whose files are cached with the run and
listed in the manifest; files a run writes into the workspace are named in a warning."""

import json
import os

from expost import Workspace
from expost.runs.cache import Cache

EXPERIMENT = '''
import os
from pathlib import Path

PARAMS = {"rate": 0.5, "stray": False}
SWEEP = {"rate": [0.5, 1.0]}
SEEDS = 2
OUTPUTS = {"final": "scalar: a number"}


def run(cfg, seed):
    folder = Path(os.environ.get("EXPOST_ARTIFACTS", "."))
    (folder / "ckpt").mkdir(exist_ok=True)
    (folder / "ckpt" / "model.txt").write_text(f"weights of seed {seed} at rate {cfg['rate']}")
    if cfg["stray"]:
        Path("checkpoint.pt").write_text(f"seed {seed}")  # the workspace root: seeds overwrite each other
    return {"final": cfg["rate"] * seed}
'''

POST = """---
title: Art
summary: Runs with files.
experiments: [art]
---
{{ stat(results("art", rate=0.5), "final") }}
"""


def test_a_runs_files_are_cached_with_it_and_listed_in_the_manifest(ws, expost, cache_dir):
    (ws / "experiments" / "art.py").write_text(EXPERIMENT)
    (ws / "templates" / "art.md.j2").write_text(POST)
    r = expost("build", "art", "-j", "2")
    assert r.exit_code == 0, r.output
    assert "wrote into the workspace" not in r.output
    w = Workspace(ws)
    _, plans = w.plan(("art",))
    cache = Cache(cache_dir)
    for run in plans["art"]:
        [(rel, path)] = cache.artifacts(run.key).items()
        assert rel == "ckpt/model.txt"
        assert path.read_text() == f"weights of seed {run.seed} at rate {run.cfg['rate']}"
    manifest = json.loads((ws / "publish" / "art" / "manifest.json").read_text())
    listed = [run["artifacts"] for run in manifest["experiments"]["art"]["runs"]]
    assert len(listed) == 4 and all(set(a) == {"ckpt/model.txt"} for a in listed)
    assert "EXPOST_ARTIFACTS" not in os.environ
    r = expost("log", "art", "--seed", "2", "--where", "rate=1.0")
    assert "artifact ckpt/model.txt: " in r.stdout


def test_a_damaged_artifact_makes_the_run_run_again(ws, expost, cache_dir):
    (ws / "experiments" / "art.py").write_text(EXPERIMENT)
    assert expost("run", "art", "--where", "rate=0.5", "--seeds", "1", "-j", "1").exit_code == 0
    [path] = cache_dir.glob("runs/*/*/artifacts/ckpt/model.txt")
    path.write_text("tampered")
    w = Workspace(ws)
    _, plans = w.plan(("art",), w.selection(seeds=1, where={"rate": 0.5}))
    assert Cache(cache_dir).artifacts(plans["art"][0].key) == {}  # set aside, not served
    r = expost("run", "art", "--where", "rate=0.5", "--seeds", "1", "-j", "1")
    assert r.exit_code == 0 and "0 cached, 1 ran" in r.output


def test_files_written_into_the_workspace_are_named(ws, expost):
    (ws / "experiments" / "art.py").write_text(EXPERIMENT)
    r = expost("run", "art", "--set", "stray=true", "-j", "2")
    assert r.exit_code == 0, r.output
    assert "warning: runs wrote into the workspace: checkpoint.pt" in r.output
    assert "EXPOST_ARTIFACTS" in r.output
