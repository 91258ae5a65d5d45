"""`expost diff`: a post as committed at a revision vs the post as the working tree builds it.

Real git (the workspace is a folder inside a repository, as in a project that keeps its study in a
subfolder), real runs in worker processes, real figures. One workspace is built and committed once
per module (a stdlib-only experiment: 2 configs x 5 seeds); each test works on a copy of it and of
its cache.
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from expost.cli import cli
from expost.review.diff import ADDED, CHANGED, FLIPPED, REMOVED, compare_claims, verdict_text
from expost.review.images import score
from expost.review.prose import compare_prose

EXPERIMENT = '''"""A stdlib-only experiment for the diff tests: a curve that settles at scale + offset."""

import math
import random

PARAMS = {"scale": 1.0, "offset": 0.0, "steps": 20}
SWEEP = {"scale": [1.0, 2.0]}
SEEDS = 5
OUTPUTS = {
    "curve": "series: value at each step",
    "final": "scalar: value after the last step",
    "noise": "scalar: the seed's own share of the level",
}
CLAIMS = [{"claim": "The final value stays below 2.5.", "per": "scale",
           "check": lambda r: r.scalar("final") < 2.5, "metric": "final"}]


def run(cfg, seed):
    noise = 0.05 * random.Random(seed).random()
    level = cfg["scale"] + cfg["offset"] + noise
    curve = [level * (1 - math.exp(-0.3 * t)) for t in range(cfg["steps"])]
    return {"curve": curve, "final": curve[-1], "noise": noise}
'''

TEMPLATE = '''---
title: Level
summary: Where the curve settles.
experiments: [level]
---
{% set r = results("level") %}
The curve settles at {{ stat(r.where(scale=1.0), "final") }} for scale 1.

It is a plain curve, drawn per seed.

{{ figure(r, "curves", "curve", by="scale", caption="The curve by scale") }}

{{ claim("level", 0) }}
'''


def git(cwd, *args) -> str:
    done = subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A repository holding study/ (the workspace), built and committed: inputs, then publish/."""
    base = tmp_path_factory.mktemp("diff")
    repo, cache = base / "repo", base / "cache"
    ws = repo / "study"
    (ws / "experiments").mkdir(parents=True)
    (ws / "templates").mkdir()
    (ws / "experiments" / "level.py").write_text(EXPERIMENT)
    (ws / "templates" / "level.md.j2").write_text(TEMPLATE)
    git(base, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "inputs")
    r = invoke("--workspace", ws, "build", "-q", "-j", "2", env={"EXPOST_CACHE_DIR": str(cache)})
    assert r.exit_code == 0, r.output
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "publish")
    return base


@pytest.fixture
def study(built, tmp_path, cache_dir, monkeypatch):
    """A copy of the built repository and its cache; the cwd is the workspace."""
    shutil.copytree(built / "repo", tmp_path / "repo", symlinks=True)
    shutil.copytree(built / "cache", cache_dir, symlinks=True)
    ws = tmp_path / "repo" / "study"
    monkeypatch.chdir(ws)
    scratch = tmp_path / "tmp"  # where the working tree's side is rendered: must be empty afterwards
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return ws


def publish_tree(ws: Path) -> dict:
    return {p.relative_to(ws).as_posix(): p.read_bytes() for p in sorted((ws / "publish").rglob("*")) if p.is_file()}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_nothing_changed_says_so_and_exits_0(study, cache_dir):
    before = publish_tree(study)
    r = invoke("diff", "level")
    assert r.exit_code == 0, r.output
    assert "level: no change: the working tree builds it as committed at HEAD" in r.stdout
    assert "no claim verdict flipped" in r.stdout
    assert "10 planned run(s): 10 cached, 0 ran" in r.stderr
    assert publish_tree(study) == before  # rendered elsewhere, never into publish/
    assert git(study, "status", "--porcelain") == ""
    assert not list(Path(tempfile.tempdir).iterdir())  # the temporary render is gone
    assert not (cache_dir / "diff" / "level").exists()  # no figure changed: no images


def test_a_flipped_claim_moved_numbers_and_a_changed_figure(study, cache_dir, tmp_path):
    before = publish_tree(study)
    edit(study / "experiments" / "level.py", '"offset": 0.0', '"offset": 1.0')
    r = invoke("diff", "HEAD", "level", "-j", "2")
    assert r.exit_code == 1, r.output
    out = r.stdout
    assert "10 planned run(s): 0 cached, 10 ran" in r.stderr  # the working tree's runs, as build runs them
    assert "inputs: level: parameters offset 0.0 → 1.0" in out  # PARAMS are config, not code
    assert "FLIPPED  level [scale=2]: The final value stays below 2.5." in out
    assert "holds (5/5 hold) → fails (0/5 hold)" in out
    assert "scale=1]" not in out.split("claims:")[1].split("numbers:")[0]  # that one still holds in 5/5
    # numbers: final moved by +1 in every seed of both configs; the noise output did not move at all
    assert "numbers: 2 of 4 beyond seed noise (0 within seed noise, 2 unchanged)" in out
    lines = [line.strip() for line in out.splitlines()]
    moved = [line for line in lines if line.startswith("level [scale=") and " final: " in line]
    assert len(moved) == 2 and all("5 seeds paired: 5 up, 0 down" in line and ", +0.99" in line for line in moved)
    assert not any(" noise: " in line for line in lines if line.startswith("level [scale="))
    # the figure: scored, and before | after | changed pixels written under the cache
    fig = "fig1-curves-curve-scale.png"
    row = next(line for line in lines if line.startswith(fig))
    assert "of the area changed" in row and "SSIM 0." in row
    image = cache_dir / "diff" / "level" / fig
    assert image.is_file() and f"in {image}/" not in out and str(image.parent) in out
    with Image.open(image) as sheet, Image.open(study / "publish" / "level" / "figures" / fig) as original:
        assert sheet.width > 3 * original.width and sheet.height > original.height
    # the prose: the claim's sentences changed words; the statistics only numbers, folded
    assert "post.md: 2 line(s) removed, 2 added, 2 changed only in numbers" in out
    claim = "**Claim:** The final value stays below 2.5. — "
    removed = [line for line in lines if line.startswith("-" + claim)]
    added = [line for line in lines if line.startswith("+" + claim)]
    assert len(removed) == len(added) == 1 and "does not hold" in added[0] and "does not hold" not in removed[0]
    folded = out.split("changed only in numbers:")[1].splitlines()
    assert folded[1].strip().startswith("line 3: The curve settles at median 1.01→2.01 (95% CI 1→2–1.04→2.04, n=5)")
    assert publish_tree(study) == before
    assert not list(Path(tempfile.tempdir).iterdir())

    md = invoke("diff", "level", "--format", "md", "--out", tmp_path / "images")
    assert md.exit_code == 1
    text = md.stdout
    assert text.startswith("### expost diff: HEAD (`")
    assert "**1 claim verdict(s) flipped.**" in text
    assert ("| **flipped** | level | scale=2 | The final value stays below 2.5. | holds (5/5 hold) | "
            "fails (0/5 hold) |") in text
    assert "| level | scale=1.0 | final | " in text and "| 5 seeds paired: 5 up, 0 down |" in text
    assert f"`{tmp_path / 'images' / 'level' / fig}`" in text
    assert (tmp_path / "images" / "level" / fig).is_file()
    assert "<details><summary>" in text and "line(s) changed only in numbers" in text


def test_more_seeds_move_nothing_beyond_noise(study):
    """A rebuild with more seeds changes every statistic in the post, but paired by seed (1-5 on both
    sides) nothing moved: the claims keep their verdicts and the prose folds to numbers only."""
    edit(study / "experiments" / "level.py", "SEEDS = 5", "SEEDS = 8")
    r = invoke("diff", "level")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "16 planned run(s): 10 cached, 6 ran" in r.stderr  # seeds 6-8 of both configs
    assert "inputs: level: seeds 1-5 → 1-8" in out
    assert "numbers: 0 of 4 beyond seed noise (0 within seed noise, 4 unchanged)" in out
    assert "FLIPPED" not in out and "no claim verdict flipped" in out
    assert "CHANGED  level [scale=1]" in out and "holds (5/5 hold) → holds (8/8 hold)" in out
    assert "post.md: 0 line(s) removed, 0 added," in out and "@@" not in out
    assert "5→8" in out.split("changed only in numbers:")[1]


def test_fewer_seeds_on_the_command_line_pair_what_both_sides_ran(study):
    r = invoke("diff", "level", "--seeds", "3")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "6 planned run(s): 6 cached, 0 ran" in r.stderr
    assert "inputs: built by `expost build level` there, by `expost build level --seeds 3` here" in out
    assert "inputs: level: seeds 1-5 → 1-3" in out
    assert "numbers: 0 of 4 beyond seed noise (0 within seed noise, 4 unchanged)" in out
    r = invoke("diff", "level", "--seeds", "2")  # two paired seeds cannot tell a move from noise
    assert r.exit_code == 1  # and two seeds make the claims inconclusive: a verdict that changed
    assert "holds (5/5 hold) → inconclusive (2/2 hold)" in r.stdout
    assert "numbers: 0 of 0 beyond seed noise" in r.stdout
    assert "too few seeds to tell: level [scale=1.0] final: 2 seed(s) paired" in r.stdout


def test_noise_within_seeds_is_not_beyond_noise(study):
    """A change that moves one seed's number (and no other) stays within seed noise."""
    edit(study / "experiments" / "level.py", "    noise = 0.05 * random.Random(seed).random()\n",
         "    noise = 0.05 * random.Random(seed).random() + (0.2 if seed == 3 else 0.0)\n")
    r = invoke("diff", "level")
    assert r.exit_code == 0, r.output
    assert "numbers: 0 of 4 beyond seed noise (4 within seed noise, 0 unchanged)" in r.stdout


def test_numbers_come_from_the_cache_when_the_bundle_lacks_them(study, monkeypatch, tmp_path):
    (study / "publish" / "level" / "gist" / "results-level.json").unlink()
    git(study, "commit", "-qam", "drop the per-seed results")
    edit(study / "experiments" / "level.py", '"offset": 0.0', '"offset": 1.0')
    r = invoke("diff", "level")
    assert r.exit_code == 1
    assert "numbers: 2 of 4 beyond seed noise" in r.stdout  # the committed runs' keys, read from the cache
    monkeypatch.setenv("EXPOST_CACHE_DIR", str(tmp_path / "empty-cache"))
    r = invoke("diff", "level")
    assert r.exit_code == 1  # the claim still flipped
    out = r.stdout
    assert "numbers of level NOT compared" in out
    assert "NOT COMPARED: level: publish/level/ at HEAD (" in out and "has no gist/results-level.json" in out
    assert "git worktree add /tmp/expost-rev HEAD" in out and "run level" in out


def test_bad_revisions_and_posts_exit_2_with_one_message(study, tmp_path):
    r = invoke("diff", "no-such-branch", "level")
    assert r.exit_code == 2
    assert r.stderr.strip() == ("Error: REV 'no-such-branch' is not a commit in this repository: give a branch, tag "
                                "or commit id (HEAD, HEAD~1, main, or an id from `git log`)")
    r = invoke("diff", "HEAD", "nopost")
    assert r.exit_code == 2 and "no post 'nopost' in templates/" in r.stderr
    r = invoke("diff", "HEAD~1", "level")  # the inputs' commit: publish/ came one commit later
    assert r.exit_code == 2
    assert "post 'level' is not committed at HEAD~1 (" in r.stderr and "expost build level" in r.stderr
    shutil.copy(study / "templates" / "level.md.j2", study / "templates" / "fresh.md.j2")
    r = invoke("diff", "fresh")
    assert r.exit_code == 2 and "post 'fresh' is not committed at HEAD" in r.stderr
    r = invoke("diff")  # every post: the new one is listed, the committed one compared
    assert r.exit_code == 0, r.output
    assert "fresh: new since HEAD; nothing to compare with" in r.stdout
    assert "level: no change" in r.stdout
    (study / "templates" / "fresh.md.j2").unlink()
    edit(study / "templates" / "level.md.j2", "for scale 1.", "for scale {{ no_such_name }}.")
    r = invoke("diff", "level")  # fails while rendering the working tree's side: the temporary folder goes too
    assert r.exit_code == 2 and "level.md.j2:7" in r.stderr and "no_such_name" in r.stderr
    assert not list(Path(tempfile.tempdir).iterdir())
    outside = tmp_path / "nogit"
    shutil.copytree(study, outside, ignore=shutil.ignore_patterns("publish"))
    r = invoke("--workspace", outside, "diff", "level")
    assert r.exit_code == 2 and "is not in a git repository" in r.stderr
    assert not list(Path(tempfile.tempdir).iterdir())


def test_prose_folds_number_only_lines():
    before = "Title\n\nThe drop is at median 340 steps (95% CI 310–372, n=10).\nIt is sharp.\nEnd 1.\n"
    after = "Title\n\nThe drop is at median 352 steps (95% CI 318–372, n=12).\nIt is quite sharp.\nEnd 1.\n"
    p = compare_prose(before, after)
    assert [(f.line, f.pairs) for f in p.folded] == [(3, [("340", "352"), ("310", "318"), ("10", "12")])]
    assert p.folded[0].text == "The drop is at median 340→352 steps (95% CI 310→318–372, n=10→12)."
    assert (p.removed, p.added) == (1, 1)
    assert p.diff == ["@@ -2,4 +2,4 @@", " ", " The drop is at median 352 steps (95% CI 318–372, n=12).",
                      "-It is sharp.", "+It is quite sharp.", " End 1."]
    assert compare_prose(before, before).same
    # digits inside names are not numbers: a renamed output is a word change
    assert compare_prose("see learned_1\n", "see learned_2\n").removed == 1


def test_figure_scores():
    img = np.full((60, 80, 3), 255, np.uint8)
    img[20:40, 10:70] = (30, 60, 200)
    moved = np.full_like(img, 255)
    moved[25:45, 10:70] = (30, 60, 200)

    def png(a):
        import io
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    same = score(png(img), png(img))
    assert same.ssim == pytest.approx(1.0) and same.changed == 0 and not same.visible
    s = score(png(img), png(moved))
    assert s.visible and 0.1 < s.changed < 0.3 and s.ssim < 0.95


def test_claims_are_matched_by_sentence_then_by_index():
    def v(claim, verdict, k, index=0, group="", **kw):
        return {"experiment": "e", "claim": claim, "index": index, "group": group, "verdict": verdict, "k": k,
                "n": 10, "n_seeds": 10, "per_seed": True, "missing": 0, "xfail": "", **kw}

    before = [v("A holds.", "holds", 10), v("B holds.", "holds", 9, 1), v("C holds.", "fails", 2, 2),
              v("Gone.", "holds", 10, 3)]
    after = [v("A holds.", "holds", 10), v("B holds.", "fails", 5, 1), v("C still holds.", "fails", 2, 2),
             v("New.", "holds", 10, 4)]
    changes = {c.claim: c for c in compare_claims(before, after)}
    assert set(changes) == {"B holds.", "C still holds.", "New.", "Gone."}  # A did not change
    assert changes["B holds."].kind == FLIPPED
    assert verdict_text(changes["B holds."].before) == "holds (9/10 hold)"
    assert changes["C still holds."].kind == CHANGED and changes["C still holds."].reworded == "C holds."
    assert changes["New."].kind == ADDED and changes["Gone."].kind == REMOVED
    xpass = v("X.", "holds", 10, xfail="a finding")
    assert verdict_text(xpass) == "holds (10/10 hold; XPASS: xfail claim holds)"


def test_a_damaged_committed_manifest_is_one_message(study):
    manifest = study / "publish" / "level" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["experiments"]["level"]["runs"][0] = "not a run"
    manifest.write_text(json.dumps(data))
    git(study, "commit", "-qam", "a hand edit")
    r = invoke("diff", "level")
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("Error: publish/level/ at HEAD (")
    assert "manifest.json is not a manifest expost wrote (experiments.level.runs is not a list of objects)" in r.stderr
