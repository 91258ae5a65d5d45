"""The repository's own example posts and the scaffolds that `expost new` writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from browser import check_page, require_browser

REPO = Path(__file__).resolve().parents[1]
POSTS = sorted(p.parent.name for p in (REPO / "publish").glob("*/post.html"))


def test_every_post_template_has_a_committed_bundle():
    templates = sorted(p.name[:-len(".md.j2")] for p in (REPO / "templates").glob("*.md.j2")
                       if not p.name.startswith("_"))
    assert templates and POSTS == templates
    for name in POSTS:
        for part in ("post.md", "post.html", "manifest.json", "gist/README.md", "figures"):
            assert (REPO / "publish" / name / part).exists(), (name, part)


@pytest.mark.parametrize("name", POSTS)
def test_committed_post_html_renders_in_a_browser(name, tmp_path):
    require_browser()
    facts = check_page(REPO / "publish" / name / "post.html", tmp_path / f"{name}.png")
    assert facts["images"] > 0 and facts["images_loaded"] == facts["images"], facts
    assert facts["maths"] > 0 and facts["maths_sized"] == facts["maths"], facts
    assert facts["requests"] == [] and facts["console_errors"] == [], facts


def test_new_workspace_experiment_and_post_build_out_of_the_box(tmp_path, cache_dir):
    env = {**os.environ, "EXPOST_CACHE_DIR": str(cache_dir)}

    def expost(*args, cwd):
        r = subprocess.run([sys.executable, "-m", "expost", *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    expost("new", "workspace", "study", cwd=tmp_path)
    ws = tmp_path / "study"
    expost("new", "experiment", "decay", cwd=ws)
    expost("new", "post", "decay-results", "--experiment", "decay", cwd=ws)
    r = expost("build", "-j", "2", "-q", cwd=ws)
    assert "example-post: rendered" in r.stdout and "decay-results: rendered" in r.stdout
    md = (ws / "publish" / "decay-results" / "post.md").read_text()
    assert "def train(" in md and "## Seed variance and reproducibility" in md
    script = subprocess.run([sys.executable, str(ws / "experiments" / "decay.py")], capture_output=True, text=True,
                            timeout=120)
    assert script.returncode == 0 and "drop_step" in script.stdout
