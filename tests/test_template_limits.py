"""Templates cannot hang a build, flood a post, call arbitrary module attributes or leak object
reprs; partials are recognised by their basename in any subfolder."""

import pytest
from click.testing import CliRunner

from expost.cli import cli

from conftest import make_workspace

HEAD = "---\ntitle: T\nsummary: S.\nexperiments: [toy]\n---\n{% set r = results('toy') %}\n"


@pytest.fixture
def tws(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", ["toy.py"])
    (root / "expost.toml").write_text("render_timeout = 2\n")
    monkeypatch.chdir(root)
    assert CliRunner().invoke(cli, ["run", "-q", "-j", "1"]).exit_code == 0
    return root


def build(root, body):
    (root / "templates" / "t.md.j2").write_text(HEAD + body)
    return CliRunner().invoke(cli, ["build", "-q", "t"], catch_exceptions=False)


@pytest.mark.parametrize("body, says", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
     ["t.md.j2:7", "more than 2 s"]),
    ('{{ "x" * 100000000 }}\n', ["t.md.j2:7", "str * 100000000"]),
    ('{{ [0] * 100000000 }}\n', ["t.md.j2:7", "list * 100000000"]),
    ("Results: {{ r }}\n", ["t.md.j2:7", "writes an object into the post", "<ResultSet toy"]),
    ("{{ r.records[0].load_series }}\n", ["t.md.j2:7", "unsafe"]),
    ("{{ results }}\n", ["t.md.j2:7", "writes an object", "bound method"]),
    ('{{ figure(r, "__class__") }}\n', ["t.md.j2:7", "no figure function"]),
    ('{{ figure(r, "run") }}\n', ["t.md.j2:7", "def figure_run(ax, r)"]),
    ('{{ figure(r, "math") }}\n', ["t.md.j2:7", "no figure function"]),
])
def test_templates_that_would_hang_flood_or_leak_are_refused_with_file_and_line(tws, body, says):
    r = build(tws, body)
    assert r.exit_code == 1, r.output
    for s in says:
        assert s in r.output, r.output
    assert "Traceback" not in r.output and not (tws / "publish" / "t").exists()


def test_a_declared_figure_function_draws(tws):
    exp = tws / "experiments" / "toy.py"
    exp.write_text(exp.read_text() + "\n\ndef figure_finals(ax, r):\n    ax.plot(sorted(r.scalar('final')))\n")
    r = build(tws, '{{ figure(r.where(rate=0.5), "finals") }}\n')
    assert r.exit_code == 0, r.output
    assert "0 ran" in r.stderr  # a figure function is not part of any run's key
    assert any(p.name.startswith("fig1-finals") for p in (tws / "publish" / "t" / "figures").iterdir())


def test_a_partial_in_a_subfolder_is_a_partial(tws):
    (tws / "templates" / "parts").mkdir()
    (tws / "templates" / "parts" / "_intro.md.j2").write_text("INTRO without front matter\n")
    r = build(tws, '{% include "parts/_intro.md.j2" %}\n')
    assert r.exit_code == 0, r.output
    assert "INTRO without front matter" in (tws / "publish" / "t" / "post.md").read_text()


def test_a_bad_render_timeout_is_named(tws):
    (tws / "expost.toml").write_text('render_timeout = "soon"\n')
    r = build(tws, "x\n")
    assert r.exit_code == 1 and "render_timeout" in r.output and "expost.toml" in r.output, r.output
