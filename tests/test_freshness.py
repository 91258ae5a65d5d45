"""Freshness: every edit that changes a post makes `build` rebuild it, and `build` never says
"up to date" for a post that `build --check` calls out of date. Real files, real stats."""

import os
import time

import pytest
from click.testing import CliRunner

from expost import freshness
from expost.cli import cli

EXPERIMENT = '''"""A stdlib experiment whose number comes from a helper module."""
import _fresh_helper

PARAMS = {"rate": 0.5}
SEEDS = 3
OUTPUTS = {"final": "scalar: a number from the helper"}


def run(cfg, seed):
    return {"final": _fresh_helper.value(cfg["rate"], seed)}
'''

POST = '''---
title: Fresh
summary: Which edits make a post stale.
experiments: [fresh]
---
{% import "_macros.md.j2" as m %}
{% include "parts/_intro.j2" %}
{% include "parts/note.md" %}
{{ m.says() }}
Final: {{ stat(results("fresh"), "final", kind="range") }}.
'''


@pytest.fixture
def fresh_ws(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates" / "parts").mkdir(parents=True)
    files = {
        "experiments/fresh.py": EXPERIMENT,
        "experiments/_fresh_helper.py": "def value(rate, seed):\n    return rate * seed * 10\n",
        "templates/fresh.md.j2": POST,
        "templates/_macros.md.j2": "{% macro says() %}MACRO-ONE{% endmacro %}\n",
        "templates/parts/_intro.j2": "INTRO-ONE {% include 'parts/deeper.txt' %}\n",
        "templates/parts/deeper.txt": "DEEPER-ONE\n",
        "templates/parts/note.md": "NOTE-ONE\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    old = time.time() - 60  # out of the racy window, so stats alone are trusted where allowed
    for p in root.rglob("*"):
        os.utime(p, (old, old))
    monkeypatch.chdir(root)
    return root


def build(*args):
    return CliRunner().invoke(cli, ["build", "-q", "-j", "1", *args], catch_exceptions=False)


def post_md(root) -> str:
    return (root / "publish" / "fresh" / "post.md").read_text()


def assert_stale_then_rebuilt(root, expect_text=None, check_differs=True):
    check = build("--check")
    if check_differs:
        assert check.exit_code == 1 and "OUT OF DATE" in check.output, check.output
    r = build()
    assert r.exit_code == 0, r.output
    assert "fresh: rendered" in r.output, r.output  # never "up to date" after the edit
    if expect_text:
        assert expect_text in post_md(root)
    again = build()
    assert "fresh: up to date" in again.output, again.output
    check = build("--check")
    assert check.exit_code == 0 and "fresh: up to date" in check.output, check.output


def edit_keeping_stats(path, old, new):
    """Rewrite a file in place with the same size and the same mtime (only ctime shows it)."""
    assert len(old) == len(new)
    st = path.stat()
    path.write_text(path.read_text().replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


@pytest.mark.parametrize("rel, old, new", [
    ("templates/parts/_intro.j2", "INTRO-ONE", "INTRO-TWO"),      # included from a subfolder
    ("templates/parts/deeper.txt", "DEEPER-ONE", "DEEPER-TWO"),   # included at depth 2, no .j2 suffix
    ("templates/parts/note.md", "NOTE-ONE", "NOTE-TWO"),          # included, no .j2 suffix
    ("templates/_macros.md.j2", "MACRO-ONE", "MACRO-TWO"),        # an imported macro file
])
def test_an_edited_template_at_any_depth_rebuilds(fresh_ws, rel, old, new):
    assert build().exit_code == 0
    assert old in post_md(fresh_ws)
    edit_keeping_stats(fresh_ws / rel, old, new)
    assert_stale_then_rebuilt(fresh_ws, new)


def test_an_in_place_experiment_edit_with_size_and_mtime_restored_reruns(fresh_ws):
    assert build().exit_code == 0
    assert "5–15" in post_md(fresh_ws)
    edit_keeping_stats(fresh_ws / "experiments" / "fresh.py", '"rate": 0.5', '"rate": 0.7')
    assert_stale_then_rebuilt(fresh_ws, "7–21")


def test_an_edited_helper_module_reruns(fresh_ws):
    assert build().exit_code == 0
    edit_keeping_stats(fresh_ws / "experiments" / "_fresh_helper.py", "* 10", "* 20")
    assert_stale_then_rebuilt(fresh_ws, "10–30")


def test_a_changed_package_version_rebuilds(fresh_ws, tmp_path, monkeypatch):
    """A newer jinja2 (a dist-info earlier on sys.path, as an upgrade would leave) re-renders."""
    assert build().exit_code == 0
    shadow = tmp_path / "shadow"
    (shadow / "jinja2-99.0.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(shadow))
    freshness.installed_versions.cache_clear()
    try:
        assert_stale_then_rebuilt(fresh_ws, check_differs=False)  # same bytes: --check agrees either way
    finally:
        freshness.installed_versions.cache_clear()


def test_a_new_publish_file_or_an_edited_one_rebuilds(fresh_ws):
    assert build().exit_code == 0
    out = fresh_ws / "publish" / "fresh"
    edit_keeping_stats(out / "post.md", "Final:", "FINAL:")
    assert_stale_then_rebuilt(fresh_ws, "Final:")


@pytest.mark.parametrize("source, names", [
    ('{% include "a.j2" %}', ["a.j2"]),
    ("{%- import 'm.md.j2' as m -%}", ["m.md.j2"]),
    ('{% from "m.j2" import x, y %}', ["m.j2"]),
    ('{% extends "base.j2" %}', ["base.j2"]),
    ('{% include ["a.j2", "b.txt"] ignore missing with context %}', ["a.j2", "b.txt"]),
    ('{% include "a.j2" without context %}{# {% include "c.j2" %} #}', ["a.j2", "c.j2"]),
    ("{% include name %}", None),
    ('{% include "parts/" ~ name %}', None),
    ('{% include ["a.j2", name] %}', None),
    ('{% extends layout if x else "b.j2" %}', None),
    ("no tags at all", []),
])
def test_referenced_templates_are_literal_names_or_unknown(source, names):
    assert freshness.referenced_templates(source) == names


def test_the_scan_finds_what_jinja_finds_in_the_example_templates():
    """On real templates, the import-free scan names exactly what Jinja's own parser names."""
    from pathlib import Path

    import jinja2
    from jinja2 import meta

    env = jinja2.Environment()
    folder = Path(__file__).resolve().parents[1] / "templates"
    for path in sorted(folder.glob("*.j2")):
        source = path.read_text()
        theirs = sorted(meta.find_referenced_templates(env.parse(source)))
        ours = freshness.referenced_templates(source)
        if None in theirs:
            assert ours is None, path.name
        else:  # ours may over-approximate (a tag inside a comment), never miss one
            assert set(theirs) <= set(ours), path.name


def test_a_computed_template_name_makes_every_template_an_input(fresh_ws):
    post = fresh_ws / "templates" / "fresh.md.j2"
    post.write_text(post.read_text() + '{% set which = "parts/note.md" %}{% include which %}\n')
    files = freshness.template_files(freshness.Layout(fresh_ws, {}), post)
    assert {p.name for p in files} >= {"_intro.j2", "deeper.txt", "note.md", "_macros.md.j2", "fresh.md.j2"}
    assert build().exit_code == 0
    edit_keeping_stats(fresh_ws / "templates" / "parts" / "note.md", "NOTE-ONE", "NOTE-TWO")
    assert_stale_then_rebuilt(fresh_ws, "NOTE-TWO")
