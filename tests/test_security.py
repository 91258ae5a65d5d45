"""What a template, a post name or an experiment cannot do: read outside the workspace, write
outside its folders, reach Python internals, or take the command down with a crash."""

from __future__ import annotations

import pytest

FRONT = "---\ntitle: A post\nsummary: One line.\nexperiments: [toy]\n---\n"
BODY_LINE = FRONT.count("\n") + 1
BUILD = ("build", "post", "--seeds", "1", "-q")
SECRET = "TOP-SECRET-MARKER-3141"


def write_post(ws, body: str, front: str = FRONT) -> None:
    (ws / "templates" / "post.md.j2").write_text(front + body + "\n")


def assert_refused(r, *fragments):
    """Exit 1, one clear message with no traceback, naming what was refused; nothing leaked."""
    out = r.output
    assert r.exit_code == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out
    message = out[out.index("Error: "):]
    for fragment in fragments:
        assert fragment in message, (fragment, out)
    assert SECRET not in out and "root:" not in out, out


def assert_nothing_published(ws):
    assert not (ws / "publish" / "post").exists()
    for p in (ws / "publish").rglob("*") if (ws / "publish").exists() else []:
        assert not p.is_file() or SECRET.encode() not in p.read_bytes(), p


@pytest.fixture
def secret(tmp_path, ws):
    """A file outside templates/ (in the workspace root) and one outside the workspace."""
    (ws / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    return tmp_path / "secret.txt"


# -- templates cannot read files outside templates/ ----------------------------------------------------

@pytest.mark.parametrize("body,name", [
    ('{% include "../../../etc/passwd" %}', "../../../etc/passwd"),
    ('{% import "/etc/passwd" as x %}', "/etc/passwd"),
    ('{% from "../../../../etc/passwd" import x %}', "../../../../etc/passwd"),
    ('{% extends "/etc/passwd" %}', "/etc/passwd"),
    ('{% include "../secret.txt" %}', "../secret.txt"),  # an existing file in the workspace root
    ('{% include "{SECRET_PATH}" %}', "{SECRET_PATH}"),  # an absolute path to an existing file
    ('{% include "sub/../../secret.txt" %}', "sub/../../secret.txt"),
    ('{% include "..\\\\secret.txt" %}', "..\\\\secret.txt"),
], ids=["include-dotdot", "import-absolute", "from-import-dotdot", "extends-absolute", "include-workspace-file",
        "include-absolute-existing", "include-nested-dotdot", "include-backslash"])
def test_templates_cannot_read_outside_templates(expost, ws, secret, body, name):
    body = body.replace("{SECRET_PATH}", str(secret))
    name = name.replace("{SECRET_PATH}", str(secret)).replace("\\\\", "\\")
    write_post(ws, "fine\n" + body)
    r = expost(*BUILD)
    assert_refused(r, f"post.md.j2:{BODY_LINE + 1}", "outside templates/", repr(name))
    assert_nothing_published(ws)


def test_template_symlink_out_of_templates_is_refused(expost, ws, secret):
    (ws / "templates" / "_link.md.j2").symlink_to(secret)
    write_post(ws, '{% include "_link.md.j2" %}')
    assert_refused(expost(*BUILD), f"post.md.j2:{BODY_LINE}", "'_link.md.j2'", "outside templates/")
    assert_nothing_published(ws)


def test_post_template_symlink_out_of_templates_is_refused(expost, ws, secret):
    (ws / "templates" / "post.md.j2").symlink_to(secret)
    assert_refused(expost(*BUILD), "post.md.j2", "outside templates/")


def test_macro_file_cannot_read_outside_either(expost, ws, secret):
    (ws / "templates" / "_macros.md.j2").write_text('{% macro leak() %}\n{% include "../secret.txt" %}\n{% endmacro %}\n')
    write_post(ws, '{% import "_macros.md.j2" as m %}\n{{ m.leak() }}')
    assert_refused(expost(*BUILD), "_macros.md.j2:2", "'../secret.txt'", "outside templates/")


# -- code embeds reach only the post's experiments ------------------------------------------------------

@pytest.mark.parametrize("body,name", [
    ('{{ code("../x", "run") }}', "'../x'"),
    ('{{ code("../../etc/passwd", "run") }}', "'../../etc/passwd'"),
    ('{{ code("other", "run") }}', "'other'"),  # a real experiment, but not in this post's front matter
    ('{{ code("other", region="x") }}', "'other'"),
])
def test_code_embed_cannot_reach_outside_the_front_matter(expost, ws, body, name):
    write_post(ws, body)
    assert_refused(expost(*BUILD), f"post.md.j2:{BODY_LINE}", name, "not in this post's front matter", "add it there")


# -- names never become paths outside their folders -----------------------------------------------------

@pytest.mark.parametrize("args,fragments", [
    (("build", "../evil"), ["post name '../evil' is not allowed", "no slashes"]),
    (("render", "a/b"), ["post name 'a/b' is not allowed", "no slashes"]),
    (("verify", "../evil"), ["post name '../evil' is not allowed"]),
    (("publish", "gist", "../evil", "--dry-run"), ["post name '../evil' is not allowed"]),
    (("new", "post", "../x"), ["post name '../x' is not allowed"]),
    (("new", "post", "/tmp/x"), ["post name '/tmp/x' is not allowed"]),
    (("new", "post", "x", "--experiment", "../toy"), ["--experiment '../toy'", "not in experiments/"]),
    (("new", "experiment", "../x"), ["experiment name '../x' is not allowed"]),
    (("new", "experiment", "a/b"), ["experiment name 'a/b' is not allowed"]),
    (("new", "experiment", ".hidden"), ["experiment name '.hidden' is not allowed"]),
    (("run", "a/b"), ["no experiment 'a/b'", "Available: other, toy"]),
    (("run", "../toy"), ["no experiment '../toy'", "Available: other, toy"]),
    (("check", "../../toy"), ["no experiment '../../toy'"]),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_names_cannot_traverse_paths(expost, ws, tmp_path, args, fragments):
    before = sorted(p for p in tmp_path.rglob("*") if "cache" not in p.parts)
    assert_refused(expost(*args), *fragments)
    after = sorted(p for p in tmp_path.rglob("*") if "cache" not in p.parts)
    assert after == before, "a refused name must not create any file"
    assert not (tmp_path / "evil").exists() and not (ws / "x.py").exists() and not (ws / "x.md.j2").exists()


@pytest.mark.parametrize("listed", ["../toy", "sub/toy", "/etc/passwd", "toy.py"])
def test_front_matter_experiment_names_cannot_be_paths(expost, ws, listed):
    write_post(ws, "fine", FRONT.replace("[toy]", f"[{listed}]"))
    assert_refused(expost(*BUILD), "post.md.j2", "front matter experiments", repr(listed), "no slashes")


# -- the sandbox: templates see numbers and text, never internals or files ------------------------------

@pytest.mark.parametrize("body,attribute", [
    ("{{ results.__globals__ }}", "__globals__"),
    ("{{ ''.__class__.__mro__ }}", "__class__"),
    ("{{ stat.__self__ }}", "__self__"),
    ("{{ cycler.__init__.__globals__.os }}", "__init__"),
    ("{{ post.path.read_text() }}", "path"),
    ('{{ post.path.parent.joinpath("/etc/passwd").read_text() }}', "path"),
    ('{{ results("toy").records[0].load_series("../../../../../etc/passwd") }}', "load_series"),
])
def test_sandbox_blocks_attribute_escapes(expost, ws, body, attribute):
    write_post(ws, "fine\n" + body)
    assert_refused(expost(*BUILD), f"post.md.j2:{BODY_LINE + 1}", f"access to attribute {attribute!r}", "unsafe",
                   "templates run in a sandbox")
    assert_nothing_published(ws)


# -- experiment code runs in worker processes -----------------------------------------------------------

CRASH = '''
import os

PARAMS = {"x": 1}
SEEDS = 3
OUTPUTS = {"value": "scalar: the seed"}


def run(cfg, seed):
    if seed == 2:
        os._exit(3)  # kills the worker process outright: no exception, no traceback
    return {"value": float(seed)}
'''


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_crash_in_experiment_code_cannot_take_down_the_command(expost, ws, jobs):
    (ws / "experiments" / "crash.py").write_text(CRASH)
    r = expost("run", "crash", "-q", "-j", jobs)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    message = r.output[r.output.index("Error: "):]
    assert "1 run(s) failed" in message and "crash [default] seed 2" in message, r.output
    assert "seed 1" not in message and "seed 3" not in message, r.output
    explain = expost("run", "crash", "--explain")
    lines = {tuple(line.split("\t")[2:]) for line in explain.output.splitlines()}
    assert ("seed 1", "cached") in lines and ("seed 3", "cached") in lines, explain.output
    assert ("seed 2", "cached") not in lines, explain.output
