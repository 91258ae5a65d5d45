"""`expost build` / `render` end to end: real workers, real files, a real browser."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from browser import check_page, require_browser
from expost.cli import cli

from conftest import make_workspace



@pytest.fixture
def post_ws(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", ["tiny_torch.py"], ["tiny.md.j2"])
    monkeypatch.chdir(root)
    return root


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_render_lists_missing_runs_and_never_runs(post_ws, cache_dir):
    r = invoke("render", "tiny")
    assert r.exit_code == 1
    assert "10 run(s) are not in the cache" in r.output
    assert "tiny_torch [lr=0.05] seed 1" in r.output
    assert not (cache_dir / "runs").exists()
    assert not (post_ws / "publish" / "tiny").exists()


def test_build_twice_is_byte_identical_and_complete(post_ws):
    r = invoke("build", "-q", "-j", "2")
    assert r.exit_code == 0, r.output
    out = post_ws / "publish" / "tiny"
    first = tree(out)
    assert {"post.md", "post.html", "manifest.json", "figures/fig1-curves-loss-lr.png",
            "figures/fig2-seeds-loss.png", "gist/README.md"} <= set(first)
    md = first["post.md"].decode()
    assert md.startswith("*")  # the summary: the title is LessWrong's own field, pasted from title.txt
    assert first["title.txt"].decode() == "Tiny $x^2$ post\n"
    assert "## Seed variance and reproducibility" in md
    assert "The loss ends below its start. (lr = 0.05) **holds in all 5 seeds.**" in md
    assert "`expost build tiny`" in md
    assert "Only 5 seeds" not in md  # 5 seeds is the threshold, not below it
    assert invoke("build", "-q").output.strip() == "tiny: up to date"
    r = invoke("build", "-q", "--force")  # reruns and re-renders everything
    assert r.exit_code == 0
    second = tree(out)
    assert set(second) == set(first)
    assert second == first  # every byte, manifests included (timings stay in the cache)
    assert invoke("render", "--force").exit_code == 0  # re-render from the same cache: every byte
    assert tree(out) == second
    assert not [p for p in (post_ws / "publish").iterdir() if p.name.startswith(".")]


def test_render_after_template_edit_only_rerenders(post_ws):
    assert invoke("build", "-q").exit_code == 0
    t = post_ws / "templates" / "tiny.md.j2"
    t.write_text(t.read_text() + "\nAn added sentence.\n")
    r = invoke("build", "-q")
    assert "tiny: rendered" in r.output
    assert "0 ran" in r.stderr
    assert "An added sentence." in (post_ws / "publish" / "tiny" / "post.md").read_text()


def test_noop_build_imports_neither_torch_nor_matplotlib_nor_numpy(post_ws):
    assert invoke("build", "-q").exit_code == 0
    probe = ("import sys\nfrom expost.cli import cli\n"
             "try:\n    cli.main(['build'], standalone_mode=False)\n"
             "finally:\n    print('IMPORTED', 'torch' in sys.modules, 'matplotlib' in sys.modules, 'numpy' in sys.modules,"
             " 'jinja2' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=post_ws, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "tiny: up to date" in r.stdout
    assert "IMPORTED False False False False" in r.stdout  # nor numpy, nor jinja2


def test_built_html_renders_in_a_real_browser(post_ws, tmp_path):
    require_browser()
    assert invoke("build", "-q").exit_code == 0
    html = post_ws / "publish" / "tiny" / "post.html"
    text = html.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
    facts = check_page(html, tmp_path / "shot.png")
    assert facts["images"] == 2 and facts["images_loaded"] == 2, facts
    assert facts["maths"] == 4 and facts["maths_sized"] == facts["maths"], facts
    assert facts["requests"] == [] and facts["console_errors"] == [], facts
