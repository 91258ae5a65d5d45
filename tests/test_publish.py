"""Export, manifest, secret scan, build --check, verify and publishing to a real git remote."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.footnote import footnote_plugin

from expost.cli import cli
from expost.errors import PublishError
from expost.publish.export import _add, check_gist

from conftest import make_workspace
from fakegist import OWNER, fake_gist  # noqa: F401  (fake_gist is a fixture)



@pytest.fixture
def post_ws(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", ["tiny_torch.py", "noisy.py"], ["tiny.md.j2", "noisy.md.j2"])
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "inputs"],
                   check=True)
    monkeypatch.chdir(root)
    return root


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def parse(md: str):
    md_it = MarkdownIt("commonmark").enable("table").use(dollarmath_plugin).use(footnote_plugin)
    return md_it.parse(md)


def walk(tokens):
    for t in tokens:
        yield t
        yield from walk(t.children or [])


def test_gist_bundle_is_flat_complete_and_consistent(post_ws):
    assert invoke("build", "tiny", "-q").exit_code == 0
    gist = post_ws / "publish" / "tiny" / "gist"
    names = sorted(p.name for p in gist.iterdir())
    assert all(p.is_file() for p in gist.iterdir())
    assert names == sorted(["README.md", "tiny_torch.py", "results-tiny_torch.csv", "results-tiny_torch.json",
                            "fig1-curves-loss-lr.png", "fig2-seeds-loss.png", "requirements.txt", "manifest.json",
                            "reproduce.py"])
    readme = (gist / "README.md").read_text()
    images = [t.attrs["src"] for t in walk(parse(readme)) if t.type == "image"]
    assert images and all((gist / src).is_file() for src in images)
    assert (gist / "tiny_torch.py").read_bytes() == (post_ws / "experiments" / "tiny_torch.py").read_bytes()
    csv = (gist / "results-tiny_torch.csv").read_text().splitlines()
    assert csv[0] == "lr,seed,final" and len(csv) == 11
    assert re.match(r"^torch==\d+\.\d+", (gist / "requirements.txt").read_text().splitlines()[1])


def test_manifest_records_provenance(post_ws):
    assert invoke("build", "tiny", "-q").exit_code == 0
    out = post_ws / "publish" / "tiny"
    text = (out / "manifest.json").read_text()
    m = json.loads(text)
    assert text == json.dumps(m, sort_keys=True, indent=1) + "\n"  # sorted and stable
    assert set(m["versions"]) == {"python", "torch", "numpy", "matplotlib", "pillow", "jinja2", "markupsafe",
                                  "markdown-it-py", "mdit-py-plugins", "pygments", "latex2mathml", "expost",
                                  "expost_code_sha256"}
    from expost.freshness import code_hash
    assert m["versions"]["expost_code_sha256"] == code_hash()
    assert m["git"]["commit"] and m["git"]["dirty"] is False
    assert m["command"] == "expost build tiny"
    exp = m["experiments"]["tiny_torch"]
    assert exp["seeds"] == [1, 2, 3, 4, 5] and len(exp["configs"]) == 2 and len(exp["runs"]) == 10
    assert all(len(r["key"]) == 64 and "wall_s" not in r for r in exp["runs"])  # timings stay in the cache
    assert "post.md" in m["files"] and "post.html" in m["files"]
    assert {c["verdict"] for c in m["claims"]} == {"holds"}
    for rel, digest in m["files"].items():
        import hashlib
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    assert str(post_ws) not in text and str(Path.home()) + "/" not in text


def test_forum_post_parses_as_lesswrong_markdown(post_ws):
    (post_ws / "expost.toml").write_text('image_base_url = "https://example.org/posts"\n')
    assert invoke("build", "tiny", "-q").exit_code == 0
    md = (post_ws / "publish" / "tiny" / "post.md").read_text()
    tokens = list(walk(parse(md)))
    maths = [t.content.strip() for t in tokens if t.type in ("math_inline", "math_block")]
    assert "L(w) = (w - t)^2" in maths and any("w_{t+1}" in m for m in maths)
    images = [t.attrs["src"] for t in tokens if t.type == "image"]
    assert images == ["https://example.org/posts/tiny/figures/fig1-curves-loss-lr.png",
                      "https://example.org/posts/tiny/figures/fig2-seeds-loss.png"]
    assert "{{" not in md and "{%" not in md and str(post_ws) not in md


def test_relative_images_warn(post_ws):
    r = invoke("build", "tiny", "-q")
    assert "relative" in r.stderr and "image_base_url" in r.stderr


def test_gist_name_rules():
    files = {}
    _add(files, "a.py", "experiments/a.py")
    with pytest.raises(PublishError, match="would both be named 'a.py'"):
        _add(files, "a.py", "figures/a.py")
    with pytest.raises(PublishError, match="gistfileN"):
        _add(files, "gistfile1.txt", "x")


def test_gist_size_limits(tmp_path):
    (tmp_path / "big.csv").write_bytes(b"x" * 1_500_000)
    assert "over 1 MB" in check_gist(tmp_path)[0]
    (tmp_path / "huge.csv").write_bytes(b"x" * 10_500_000)
    with pytest.raises(PublishError, match="over the 10 MB limit"):
        check_gist(tmp_path)
    (tmp_path / "sub").mkdir()


def test_secret_in_bundle_is_refused(post_ws):
    t = post_ws / "templates" / "tiny.md.j2"
    t.write_text(t.read_text() + "\nMY_API_TOKEN=abcdefgh12345678\n")
    r = invoke("build", "tiny", "-q")
    assert r.exit_code == 1
    assert "looks like a token assignment" in r.output and "post.md:" in r.output
    assert not (post_ws / "publish" / "tiny").exists()
    assert invoke("build", "tiny", "-q", "--allow-secrets").exit_code == 0


def test_build_check(post_ws):
    assert invoke("build", "-q").exit_code == 0
    r = invoke("build", "--check", "-q")
    assert r.exit_code == 0, r.output
    assert "tiny: up to date" in r.output
    post = post_ws / "publish" / "tiny" / "post.md"
    post.write_text(post.read_text() + "edited\n")
    r = invoke("build", "--check", "-q")
    assert r.exit_code == 1
    assert "post.md: differs" in r.output
    assert post.read_text().endswith("edited\n")  # --check writes nothing


def test_verify_reports_identical_and_drift(post_ws):
    assert invoke("build", "tiny", "-q").exit_code == 0
    r = invoke("verify", "tiny", "--seeds", "2")
    assert r.exit_code == 0, r.output
    assert "tiny_torch\tfinal\t4 runs\tidentical" in r.output
    assert "tiny_torch\tloss\t4 runs\tidentical" in r.output
    path = post_ws / "publish" / "tiny" / "gist" / "results-tiny_torch.json"
    data = json.loads(path.read_text())
    data["runs"][0]["scalars"]["final"] *= 1.5
    path.write_text(json.dumps(data))
    r = invoke("verify", "tiny", "--seeds", "2")
    assert r.exit_code == 1
    assert re.search(r"final\t4 runs\tdrifted \(largest relative difference 0\.33", r.output)
    assert "results drifted" in r.output


def test_verify_tells_nondeterminism(post_ws):
    assert invoke("build", "noisy", "-q").exit_code == 0
    r = invoke("verify", "noisy")
    assert r.exit_code == 1
    assert "NONDETERMINISTIC" in r.output and "make it deterministic" in r.output


def git(*args, cwd=None):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_publish_to_a_git_remote_pins_image_urls(post_ws, tmp_path):
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(remote))
    (post_ws / "expost.toml").write_text('raw_url_template = "https://example.org/raw/{commit}/{filename}"\n')
    assert invoke("build", "tiny", "-q").exit_code == 0
    r = invoke("publish", "gist", "tiny", "--remote", str(remote))
    assert r.exit_code == 0, r.output
    head = git("--git-dir", str(remote), "rev-parse", "HEAD")
    # two commits: the bundle, then its README with the figures linked by their pinned URLs
    first = git("--git-dir", str(remote), "rev-parse", "HEAD~1")
    assert git("--git-dir", str(remote), "rev-list", "--count", "HEAD") == "2"
    files = git("--git-dir", str(remote), "ls-tree", "--name-only", "HEAD").splitlines()
    assert "fig1-curves-loss-lr.png" in files and "README.md" in files
    md = (post_ws / "publish" / "tiny" / "post.md").read_text()
    images = [t.attrs["src"] for t in walk(parse(md)) if t.type == "image"]
    pinned = [f"https://example.org/raw/{first}/fig1-curves-loss-lr.png",
              f"https://example.org/raw/{first}/fig2-seeds-loss.png"]
    assert images == pinned
    readme = git("--git-dir", str(remote), "show", "HEAD:README.md")  # what the gist shows is the bundle
    assert [t.attrs["src"] for t in walk(parse(readme)) if t.type == "image"] == pinned
    assert readme + "\n" == (post_ws / "publish" / "tiny" / "gist" / "README.md").read_text()
    record = json.loads((post_ws / "publish" / "published.json").read_text())["tiny"]
    assert record["commit"] == head
    first_figures, first = first, head
    # publishing again changes nothing
    assert invoke("publish", "gist", "tiny", "--remote", str(remote)).exit_code == 0
    assert git("--git-dir", str(remote), "rev-parse", "HEAD") == first
    # a changed figure: a new commit, new pinned URLs
    t = post_ws / "templates" / "tiny.md.j2"
    t.write_text(t.read_text().replace('logy=True, caption="Loss by learning rate"', 'caption="Loss by learning rate"'))
    assert invoke("publish", "gist", "tiny", "--remote", str(remote)).exit_code == 0
    second = git("--git-dir", str(remote), "rev-parse", "HEAD~1")  # the new figure's commit
    assert git("--git-dir", str(remote), "rev-parse", "HEAD~2") == first
    md = (post_ws / "publish" / "tiny" / "post.md").read_text()
    assert f"https://example.org/raw/{second}/fig1-curves-loss-lr.png" in md
    assert f"https://example.org/raw/{first_figures}/fig2-seeds-loss.png" in md  # unchanged: its old URL
    assert invoke("build", "--check", "-q", "tiny").exit_code == 0


def test_publish_gist_through_the_cli(post_ws, fake_gist, monkeypatch, capfd):
    """`expost publish gist` end to end against the loopback stand-in for the GitHub gist API."""
    monkeypatch.setenv("EXPOST_GITHUB_API", fake_gist.url)
    monkeypatch.setenv("GITHUB_TOKEN", fake_gist.token)
    assert invoke("build", "tiny", "-q").exit_code == 0
    dry = invoke("publish", "gist", "tiny", "--dry-run")
    assert dry.exit_code == 0 and '"requests"' in dry.output
    assert [r for r in fake_gist.requests if r.method != "GET"] == []  # a dry run sends nothing
    r = invoke("publish", "gist", "tiny")
    assert r.exit_code == 0, r.output
    record = json.loads((post_ws / "publish" / "published.json").read_text())["tiny"]
    assert record["kind"] == "gist" and record["owner"] == OWNER
    md = (post_ws / "publish" / "tiny" / "post.md").read_text()
    images = [t.attrs["src"] for t in walk(parse(md)) if t.type == "image"]
    assert images == [record["raw_urls"][name] for name in ("fig1-curves-loss-lr.png", "fig2-seeds-loss.png")]
    assert all(url.startswith(f"https://gist.githubusercontent.com/{OWNER}/{record['id']}/raw/") for url in images)
    readme = (post_ws / "publish" / "tiny" / "gist" / "README.md").read_text()
    assert [t.attrs["src"] for t in walk(parse(readme)) if t.type == "image"] == images  # the gist shows them too
    again = invoke("publish", "gist", "tiny")
    assert again.exit_code == 0
    methods = [(q.method, q.path) for q in fake_gist.requests if q.method != "GET"]
    assert methods[0] == ("POST", "/gists") and all(m == "PATCH" for m, _ in methods[1:])
    assert json.loads((post_ws / "publish" / "published.json").read_text())["tiny"]["id"] == record["id"]
    out, err = capfd.readouterr()
    everything = r.output + again.output + dry.output + out + err
    everything += "".join(p.read_text(errors="ignore") for p in post_ws.rglob("*") if p.is_file())
    assert fake_gist.token not in everything


def test_remote_without_an_http_raw_url_rule_refuses_before_pushing(post_ws, tmp_path):
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(remote))
    assert invoke("build", "tiny", "-q").exit_code == 0
    r = invoke("publish", "gist", "tiny", "--remote", str(remote))
    assert r.exit_code == 1
    assert "not an http(s) URL a forum can load" in r.output and "raw_url_template" in r.output
    assert "nothing was pushed" in r.output
    assert subprocess.run(["git", "--git-dir", str(remote), "rev-parse", "HEAD"], capture_output=True).returncode != 0
    assert not (post_ws / "publish" / "published.json").exists()
    assert invoke("build", "tiny", "-q").exit_code == 0  # and later builds go on as before


def test_published_json_holds_no_local_path(post_ws, tmp_path):
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(remote))
    (post_ws / "expost.toml").write_text('raw_url_template = "https://example.org/raw/{commit}/{filename}"\n')
    assert invoke("build", "tiny", "-q").exit_code == 0
    r = invoke("publish", "gist", "tiny", "--remote", str(remote))
    assert r.exit_code == 0, r.output
    text = (post_ws / "publish" / "published.json").read_text()
    assert str(tmp_path) not in text and "remote.git" not in text
    assert json.loads(text)["tiny"]["git_url"].startswith("local:")
    first = git("--git-dir", str(remote), "rev-parse", "HEAD")
    assert invoke("publish", "gist", "tiny", "--remote", str(remote)).exit_code == 0  # still the same remote
    assert git("--git-dir", str(remote), "rev-parse", "HEAD") == first


@pytest.mark.parametrize("damage", ["{not json", '{"tiny": "a string"}', '["a", "list"]',
                                    '{"tiny": {"raw_urls": {"fig1-curves-loss-lr.png": "/tmp/x.png"}, '
                                    '"files": {"fig1-curves-loss-lr.png": "0"}}}',
                                    '{"tiny": {"raw_urls": "not a dict", "files": 3}}'])
def test_a_damaged_publish_record_never_blocks_a_build(post_ws, damage):
    (post_ws / "publish").mkdir(exist_ok=True)
    (post_ws / "publish" / "published.json").write_text(damage)
    r = invoke("build", "tiny", "-q")
    assert r.exit_code == 0, r.output
    assert "/tmp/x.png" not in (post_ws / "publish" / "tiny" / "post.md").read_text()


@pytest.mark.parametrize("secret", ["ghp&#95;" + "a" * 36, "ghp\\_" + "b" * 36, "ghp&amp;#95;" + "c" * 36,
                                    "https://alice:hunter22@git.example.org/repo.git",
                                    "postgres://admin:s3cretpw@db.internal:5432/runs"])
def test_secret_scan_sees_what_the_forum_shows(post_ws, secret):
    t = post_ws / "templates" / "tiny.md.j2"
    t.write_text(t.read_text() + f"\nSee {secret} for the data.\n")
    r = invoke("build", "tiny", "-q")
    assert r.exit_code == 1
    assert "looks like a" in r.output and "post.md" in r.output


def test_new_workspace_is_a_git_repository_with_a_first_commit(tmp_path, monkeypatch):
    for var, value in (("GIT_AUTHOR_NAME", "t"), ("GIT_AUTHOR_EMAIL", "t@t"), ("GIT_COMMITTER_NAME", "t"),
                       ("GIT_COMMITTER_EMAIL", "t@t"), ("GIT_CONFIG_GLOBAL", str(tmp_path / "none")),
                       ("GIT_CONFIG_NOSYSTEM", "1")):
        monkeypatch.setenv(var, value)
    r = CliRunner().invoke(cli, ["new", "workspace", str(tmp_path / "study")])
    assert r.exit_code == 0, r.output
    assert "git: initialised a git repository and committed the new files" in r.stderr
    assert git("-C", str(tmp_path / "study"), "ls-files").splitlines() == [
        ".gitignore", "experiments/example.py", "templates/example-post.md.j2"]
    monkeypatch.chdir(tmp_path / "study")
    r = CliRunner().invoke(cli, ["build", "-q", "--seeds", "2"])
    assert r.exit_code == 0, r.output
    assert "records no commit" not in r.output
    manifest = json.loads((tmp_path / "study" / "publish" / "example-post" / "manifest.json").read_text())
    assert manifest["git"]["commit"] == git("-C", str(tmp_path / "study"), "rev-parse", "HEAD")


def test_new_workspace_without_a_git_identity_warns(tmp_path, monkeypatch):
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "none"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.gitconfig identity either
    r = CliRunner().invoke(cli, ["new", "workspace", str(tmp_path / "study")])
    assert r.exit_code == 0, r.output
    if "committed the new files" in r.stderr:  # git guessed an identity from the host: nothing to warn about
        return
    assert "warning: initialised a git repository but could not commit" in r.stderr
    monkeypatch.chdir(tmp_path / "study")
    r = CliRunner().invoke(cli, ["build", "-q", "--seeds", "2"])
    assert r.exit_code == 0 and "manifest.json records no commit" in r.output


def test_new_workspace_inside_a_repository_is_not_nested(tmp_path):
    git("init", "-q", str(tmp_path / "project"))
    r = CliRunner().invoke(cli, ["new", "workspace", str(tmp_path / "project" / "study")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "project" / "study" / ".git").exists()
    assert "is inside the git repository at" in r.stderr


def test_the_recorded_commit_reproduces_the_bundle(post_ws, tmp_path, monkeypatch):
    """Check the manifest's commit out into a fresh clone, build there with an empty cache: the same
    bundle, byte for byte. A dirty build says so, with a hash of what differs."""
    assert invoke("build", "tiny", "-q").exit_code == 0
    git("-C", str(post_ws), "add", "-A")
    git("-C", str(post_ws), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "publish")
    manifest = json.loads((post_ws / "publish" / "tiny" / "manifest.json").read_text())
    assert manifest["git"] == {"commit": git("-C", str(post_ws), "log", "-1", "--format=%H", "--", "experiments",
                                             "templates"), "dirty": False}
    clone = tmp_path / "clone"
    git("clone", "-q", str(post_ws), str(clone))
    git("-C", str(clone), "checkout", "-q", manifest["git"]["commit"])
    shutil.rmtree(clone / "publish", ignore_errors=True)
    monkeypatch.setenv("EXPOST_CACHE_DIR", str(tmp_path / "fresh-cache"))
    monkeypatch.chdir(clone)
    assert invoke("build", "tiny", "-q").exit_code == 0
    built = {p.relative_to(clone / "publish" / "tiny"): p.read_bytes()
             for p in sorted((clone / "publish" / "tiny").rglob("*")) if p.is_file()}
    committed = {p.relative_to(post_ws / "publish" / "tiny"): p.read_bytes()
                 for p in sorted((post_ws / "publish" / "tiny").rglob("*")) if p.is_file()}
    assert built == committed
    # an uncommitted edit: dirty, with a hash that tells two different edits apart
    t = clone / "templates" / "tiny.md.j2"
    states = []
    for extra in ("\nOne more line.\n", "\nAnother line.\n"):
        t.write_text(t.read_text() + extra)
        assert invoke("build", "tiny", "-q").exit_code == 0
        states.append(json.loads((clone / "publish" / "tiny" / "manifest.json").read_text())["git"])
    assert all(s["dirty"] is True and len(s["diff_sha256"]) == 64 for s in states)
    assert states[0]["diff_sha256"] != states[1]["diff_sha256"]
