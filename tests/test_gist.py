"""Publishing bundles: to a local bare git remote, and to a gist through the fake gist API.

Real git everywhere; the only stand-in is tests/fakegist.py, because GitHub is unreachable.
"""

import base64
import json
import logging
import subprocess
import tempfile
import traceback

import pytest
from fakegist import OWNER, fake_gist, fake_token  # noqa: F401  (fake_gist is a fixture)

from expost.publish import gist
from expost.errors import PublishError
from expost.publish.gist import get_token, publish

RAW = "https://example.org/raw/{commit}/{filename}"  # a remote's raw files, as expost.toml's raw_url_template
PNG = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256))


@pytest.fixture(autouse=True)
def isolated_git(tmp_path, monkeypatch):
    """No user or system git config, and temp clones under tmp_path so the test can inspect them."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GITHUB_TOKEN", "GH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


@pytest.fixture
def bundle(tmp_path):
    """A flat bundle as export writes it: publish/<post>/gist/."""
    b = tmp_path / "publish" / "scurves" / "gist"
    b.mkdir(parents=True)
    (b / "README.md").write_text("# S-curves\n\n![loss](loss.png)\n")
    (b / "scurves.py").write_text("import torch\nprint(torch.__version__)\n")
    (b / "results.csv").write_text("seed,loss\n1,0.5\n2,0.25\n")
    (b / "requirements.txt").write_text("torch==2.3.0\n")
    (b / "manifest.json").write_text(json.dumps({"seeds": [1, 2]}) + "\n")
    (b / "loss.png").write_bytes(PNG)
    return b


@pytest.fixture
def bare(tmp_path):
    repo = tmp_path / "remote.git"
    run("git", "init", "--quiet", "--bare", str(repo))
    return repo


def run(*cmd, cwd=None) -> str:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def checkout(url, dest):
    """The remote's default branch, cloned: {name: bytes} and the clone's path."""
    run("git", "clone", "--quiet", str(url), str(dest))
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir()) if p.name != ".git"}


def commits(url) -> list[str]:
    return run("git", "--git-dir", str(url).removeprefix("file://"), "rev-list", "HEAD").split()


def bundle_bytes(b):
    return {p.name: p.read_bytes() for p in sorted(b.iterdir())}


def test_remote_first_publish_pushes_every_file(bundle, bare, tmp_path):
    rec = publish(bundle, record=None, description="S-curves", token=None, remote=str(bare), raw_url_template=RAW)

    assert checkout(bare, tmp_path / "co") == bundle_bytes(bundle)
    assert rec["kind"] == "remote" and rec["git_url"].startswith("local:") and str(bare) not in str(rec)
    assert commits(bare) == [rec["commit"]]
    log = run("git", "-C", str(tmp_path / "co"), "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s")
    me = "expost <expost@users.noreply.github.com>"
    assert log == f"{me}|{me}|Publish scurves (expost)"
    assert rec["raw_urls"]["loss.png"] == f"https://example.org/raw/{rec['commit']}/loss.png"
    assert set(rec["raw_urls"]) == set(rec["files"]) == set(bundle_bytes(bundle))


def test_remote_republish_unchanged_makes_no_commit(bundle, bare):
    first = publish(bundle, record=None, description="S-curves", token=None, remote=str(bare), raw_url_template=RAW)
    again = publish(bundle, record=first, description="S-curves", token=None, remote=str(bare), raw_url_template=RAW)

    assert again == first
    assert commits(bare) == [first["commit"]]


def test_remote_changed_figure_and_removed_file(bundle, bare, tmp_path):
    template = "https://example.org/raw/{commit}/{filename}"
    kw = dict(description="d", token=None, remote=bare.as_uri(), raw_url_template=template)
    first = publish(bundle, record=None, **kw)
    (bundle / "loss.png").write_bytes(PNG + b"changed")
    (bundle / "results.csv").unlink()
    second = publish(bundle, record=first, **kw)

    assert commits(bare) == [second["commit"], first["commit"]]
    assert second["raw_urls"]["loss.png"] == f"https://example.org/raw/{second['commit']}/loss.png"
    assert second["raw_urls"]["loss.png"] != first["raw_urls"]["loss.png"]
    files = checkout(bare, tmp_path / "co")
    assert "results.csv" not in files and "results.csv" not in second["raw_urls"]
    assert files == bundle_bytes(bundle)


def test_remote_keeps_existing_history_and_default_branch(bundle, tmp_path):
    work = tmp_path / "work"
    run("git", "init", "--quiet", "--initial-branch=trunk", str(work))
    (work / "old.txt").write_text("old\n")
    run("git", "-C", str(work), "add", "old.txt")
    run("git", "-C", str(work), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "--quiet", "-m", "old")
    bare = tmp_path / "existing.git"
    run("git", "clone", "--quiet", "--bare", str(work), str(bare))
    old = commits(bare)

    rec = publish(bundle, record=None, description="d", token=None, remote=str(bare), raw_url_template=RAW)

    assert rec["branch"] == "trunk"
    assert commits(bare) == [rec["commit"], *old]
    assert "old.txt" not in checkout(bare, tmp_path / "co")


def test_bad_bundles_and_templates_are_refused(bundle, bare, tmp_path):
    with pytest.raises(PublishError, match="no such folder"):
        publish(tmp_path / "nope", record=None, description="d", token=None, remote=str(bare), raw_url_template=RAW)
    with pytest.raises(PublishError, match="placeholder"):
        publish(bundle, record=None, description="d", token=None, remote=str(bare), raw_url_template="{sha}/{file}")
    (bundle / "figures").mkdir()
    with pytest.raises(PublishError, match="figures/ is a folder"):
        publish(bundle, record=None, description="d", token=None, remote=str(bare), raw_url_template=RAW)
    assert commits_or_none(bare) is None


def commits_or_none(bare):
    p = subprocess.run(["git", "--git-dir", str(bare), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True)
    return p.stdout.strip() or None


def test_gist_create_then_update_same_gist(bundle, fake_gist):
    first = publish(bundle, record=None, description="S-curves", token=fake_gist.token, api_url=fake_gist.url)

    post = fake_gist.requests[0]
    assert (post.method, post.path) == ("POST", "/gists")
    assert post.body["public"] is False and post.body["description"] == "S-curves"
    assert sorted(post.body["files"]) == sorted(set(bundle_bytes(bundle)) - {"loss.png"})
    assert post.body["files"]["README.md"] == {"content": (bundle / "README.md").read_text()}
    repo = fake_gist.repo(first["id"])
    assert commits(repo)[0] == first["commit"] and len(commits(repo)) == 2  # API commit, then the figure by git
    raw = f"https://gist.githubusercontent.com/{OWNER}/{first['id']}/raw/{first['commit']}/loss.png"
    assert first["raw_urls"]["loss.png"] == raw
    assert first["owner"] == OWNER and first["git_url"] == repo.as_uri()
    assert _get(fake_gist, first["id"])["files"]["loss.png"]["raw_url"] == first["raw_urls"]["loss.png"]

    (bundle / "README.md").write_text("# S-curves, revised\n")
    second = publish(bundle, record=first, description="S-curves v2", token=fake_gist.token, api_url=fake_gist.url)

    patch = sent(fake_gist)[1]
    assert (patch.method, patch.path) == ("PATCH", f"/gists/{first['id']}")
    assert patch.body == {"description": "S-curves v2", "files": {"README.md": {"content": "# S-curves, revised\n"}}}
    assert second["id"] == first["id"] and second["commit"] != first["commit"]
    assert commits(repo)[0] == second["commit"]
    # the changed file is linked at the new commit; an unchanged one keeps its URL (the old commit
    # still holds the same bytes), so what links it need not change: publishing again settles
    assert second["raw_urls"]["README.md"].split("/raw/")[1].startswith(second["commit"])
    assert second["raw_urls"]["loss.png"] == first["raw_urls"]["loss.png"]
    gist_now = _get(fake_gist, first["id"])
    assert gist_now["files"]["README.md"]["raw_url"] == second["raw_urls"]["README.md"]
    assert gist_now["description"] == "S-curves v2"


def sent(fake):
    """What publish sent (the tests' own GETs left out)."""
    return [r for r in fake.requests if r.method != "GET"]


def _get(fake, gist_id):
    """GET /gists/{id} the way the docs show it (also what a reader of the gist would see)."""
    return gist._request("GET", f"{fake.url}/gists/{gist_id}", None, fake.token)


def test_gist_unchanged_and_changed_figure_and_removed_files(bundle, fake_gist):
    kw = dict(description="d", token=fake_gist.token, api_url=fake_gist.url)
    first = publish(bundle, record=None, **kw)
    again = publish(bundle, record=first, **kw)
    assert again["commit"] == first["commit"] and again["raw_urls"] == first["raw_urls"]
    assert sent(fake_gist)[1].body == {"description": "d"}  # nothing to change: no files, no revision

    (bundle / "loss.png").write_bytes(PNG + b"v2")
    (bundle / "results.csv").unlink()
    third = publish(bundle, record=again, **kw)
    assert sent(fake_gist)[2].body == {"description": "d", "files": {"results.csv": None}}
    assert third["raw_urls"]["loss.png"] != first["raw_urls"]["loss.png"]
    repo = fake_gist.repo(first["id"])
    assert commits(repo)[0] == third["commit"]
    assert sorted(_get(fake_gist, first["id"])["files"]) == sorted(bundle_bytes(bundle))
    pushed = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "blob", "HEAD:loss.png"], capture_output=True)
    assert pushed.stdout == PNG + b"v2"


def test_failed_push_after_create_keeps_the_gist(bundle, fake_gist, monkeypatch):
    real_push = gist._push_tree

    def refused(*args, **kwargs):
        raise PublishError("git push https://gist.github.com/x.git failed: remote rejected")

    monkeypatch.setattr(gist, "_push_tree", refused)
    kw = dict(description="d", token=fake_gist.token, api_url=fake_gist.url)
    with pytest.raises(PublishError, match="(?s)remote rejected.*publish again") as err:
        publish(bundle, record=None, **kw)
    assert err.value.record["id"] in fake_gist.gists

    monkeypatch.setattr(gist, "_push_tree", real_push)
    rec = publish(bundle, record=err.value.record, **kw)
    assert rec["id"] == err.value.record["id"] and len(fake_gist.gists) == 1
    assert [r.method for r in sent(fake_gist)] == ["POST", "PATCH"]
    assert _get(fake_gist, rec["id"])["files"]["loss.png"]["raw_url"] == rec["raw_urls"]["loss.png"]


def test_gist_needs_a_text_file(tmp_path, fake_gist):
    b = tmp_path / "only-figures"
    b.mkdir()
    (b / "a.png").write_bytes(PNG)
    with pytest.raises(PublishError, match="at least one text file"):
        publish(b, record=None, description="d", token=fake_gist.token, api_url=fake_gist.url)
    assert fake_gist.requests == []


def test_dry_run_sends_nothing(bundle, fake_gist, bare, monkeypatch, tmp_path):
    def no_token(env=None):
        raise AssertionError("a dry run needs no token")

    monkeypatch.setattr(gist, "get_token", no_token)
    new = publish(bundle, record=None, description="d", token=None, api_url=fake_gist.url, dry_run=True)
    [req] = new["dry_run"]["requests"]
    assert (req["method"], req["url"]) == ("POST", f"{fake_gist.url}/gists")
    assert req["headers"]["Authorization"] == "Bearer <token>"
    assert req["json"]["files"]["README.md"] == {
        "size": len((bundle / "README.md").read_bytes()),
        "sha256": gist.read_bundle(bundle)["README.md"].sha256,
        "head": "# S-curves",
    }
    assert "loss.png" not in req["json"]["files"]
    [png] = new["dry_run"]["git"]["push"]
    assert png == {"name": "loss.png", "size": len(PNG), "sha256": gist.read_bundle(bundle)["loss.png"].sha256}

    old = {"kind": "gist", "id": "abc123", "git_url": "https://gist.github.com/abc123.git",
           "files": {"old.png": "0" * 64, "gone.txt": "0" * 64}, "text_files": ["gone.txt"]}
    upd = publish(bundle, record=old, description="d", token=None, api_url=fake_gist.url, dry_run=True)
    [req] = upd["dry_run"]["requests"]
    assert (req["method"], req["url"]) == ("PATCH", f"{fake_gist.url}/gists/abc123")
    assert req["json"]["files"]["gone.txt"] is None
    assert upd["dry_run"]["git"]["delete"] == ["old.png"]

    rem = publish(bundle, record=None, description="d", token=None, remote=str(bare), raw_url_template=RAW,
                  dry_run=True)
    assert rem["dry_run"]["requests"] == []
    assert [f["name"] for f in rem["dry_run"]["git"]["push"]] == sorted(bundle_bytes(bundle))

    assert fake_gist.requests == []
    assert commits_or_none(bare) is None


def test_http_401_is_clear_and_hides_the_token(bundle, fake_gist):
    wrong = fake_token()
    with pytest.raises(PublishError) as err:
        publish(bundle, record=None, description="d", token=wrong, api_url=fake_gist.url)
    msg = str(err.value)
    assert "401" in msg and "Bad credentials" in msg and "`gist` scope" in msg and "GITHUB_TOKEN" in msg
    assert wrong not in msg and wrong not in "".join(traceback.format_exception(err.value))


def test_missing_gist_says_what_to_do(bundle, fake_gist):
    old = {"kind": "gist", "id": "deadbeef", "files": {}, "text_files": []}
    with pytest.raises(PublishError, match="404.*deleted.*forget the stored gist id"):
        publish(bundle, record=old, description="d", token=fake_gist.token, api_url=fake_gist.url)


def test_unreachable_api_is_clear(bundle):
    token = fake_token()
    with pytest.raises(PublishError, match="could not reach GitHub") as err:
        publish(bundle, record=None, description="d", token=token, api_url="http://127.0.0.1:9")
    assert token not in str(err.value)


def test_token_never_leaks(bundle, fake_gist, tmp_path, isolated_git, capsys, caplog, monkeypatch):
    token = fake_gist.token
    monkeypatch.setenv("GITHUB_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    argvs = []
    real_run = subprocess.run

    def spy(cmd, *args, **kwargs):
        argvs.append(" ".join(map(str, cmd)))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    seen = []
    first = publish(bundle, record=None, description="d", token=None, api_url=fake_gist.url)
    (bundle / "loss.png").write_bytes(PNG + b"v2")
    second = publish(bundle, record=first, description="d", token=token, api_url=fake_gist.url)
    seen += [json.dumps(first), json.dumps(second)]
    seen.append(json.dumps(publish(bundle, record=second, description="d", token=token, dry_run=True)))
    fake_gist.token = "ghp_" + "x" * 36  # the real token is now refused
    with pytest.raises(PublishError) as err:
        publish(bundle, record=second, description="d", token=token, api_url=fake_gist.url)
    seen.append("".join(traceback.format_exception(err.value)))
    with pytest.raises(PublishError) as err:  # a git failure, with the token in play
        gist._push_tree("https://127.0.0.1:9/nope.git", gist.read_bundle(bundle), "m", token=token, user="u")
    seen.append("".join(traceback.format_exception(err.value)))

    out = capsys.readouterr()
    seen += [out.out, out.err, caplog.text, "\n".join(argvs)]
    repo = fake_gist.repo(first["id"])
    seen.append(run("git", "--git-dir", str(repo), "log", "-p", "--format=%an %ae %cn %ce %B"))
    seen.append(run("git", "--git-dir", str(repo), "config", "--list"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            seen.append(path.read_bytes().decode("latin-1"))
    assert list(isolated_git.iterdir()) == []  # temporary clones are gone
    assert all(token not in text for text in seen)
    assert len(caplog.records) > 0 and len(argvs) > 10


def test_git_gets_the_token_from_the_environment_only():
    token = fake_token()
    env = gist._git_env("https://gist.github.com/abc.git", token, "octocat")
    keys = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))}
    header = keys["http.https://gist.github.com/.extraHeader"]
    assert base64.b64decode(header.split()[-1]).decode() == f"octocat:{token}"
    assert keys["credential.helper"] == ""
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GIT_CONFIG_COUNT" not in gist._git_env("file:///tmp/x.git", token, "octocat")
    assert gist._scrub(f"fatal: {header} {token}", token) == "fatal: Authorization: Basic *** ***"


def test_get_token_order(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text('#!/bin/sh\n[ "$1 $2" = "auth token" ] && echo gho_fromgh && exit 0\nexit 1\n')
    gh.chmod(0o755)
    path = str(bin_dir)

    assert get_token({"GITHUB_TOKEN": "a", "GH_TOKEN": "b", "PATH": path}) == "a"
    assert get_token({"GITHUB_TOKEN": " ", "GH_TOKEN": "b", "PATH": path}) == "b"
    assert get_token({"PATH": path}) == "gho_fromgh"
    gh.write_text("#!/bin/sh\necho 'no oauth token found for github.com' >&2\nexit 1\n")
    with pytest.raises(PublishError, match="no oauth token found.*`gist` scope.*gh auth login"):
        get_token({"PATH": path})
    with pytest.raises(PublishError, match="GITHUB_TOKEN and GH_TOKEN are unset and gh is not installed"):
        get_token({"PATH": str(tmp_path / "empty")})
