"""Publish an exported bundle (publish/<post>/gist/) as a GitHub gist, or to any git remote.

A gist takes text files through the REST API and binary files (figures) only through `git push` to
its git URL, because the API rejects binary content. So publishing is: create (POST /gists) or
update (PATCH /gists/{id}) the text files, then build a commit whose tree is exactly the bundle on
top of the gist's head and push it. The raw URLs handed back are pinned to that commit, so a post
that embeds them keeps showing these figures even after the gist changes. With `remote=` the same
commit-and-push goes to any git remote and the API is never called.

The token is sent in a request header and, for git, in environment-based config; it never appears
in argv, in a file, in a log record, in a returned value or in an error message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from expost.errors import PublishError

log = logging.getLogger(__name__)

API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
GIST_RAW_TEMPLATE = "https://gist.githubusercontent.com/{owner}/{id}/raw/{commit}/{filename}"
REMOTE_RAW_TEMPLATE = "{remote}/raw/{commit}/{filename}"
AUTHOR_NAME = "expost"
AUTHOR_EMAIL = "expost@users.noreply.github.com"
HTTP_TIMEOUT_S = 30
GIT_TIMEOUT_S = 300
TOKEN_FIX = (
    "create a token with the `gist` scope (https://github.com/settings/tokens) and set GITHUB_TOKEN, "
    "or run `gh auth login`"
)


@dataclass(frozen=True)
class BundleFile:
    name: str
    path: Path
    data: bytes
    sha256: str
    text: str | None  # the content, when it can go through the REST API (non-empty UTF-8, no NUL)


def read_bundle(bundle: Path, *, for_gist: bool = True) -> dict[str, BundleFile]:
    """The bundle's files by name (sorted). Gists are flat, so a subfolder is refused, not skipped."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise PublishError(
            f"bundle {bundle}: no such folder. Export the post first (it writes publish/<post>/gist/)."
        )
    files: dict[str, BundleFile] = {}
    for path in sorted(bundle.iterdir(), key=lambda p: p.name):
        name = path.name
        if name.startswith("."):
            continue  # editor and OS droppings (.DS_Store): never part of a post
        if path.is_dir():
            raise PublishError(
                f"bundle {bundle}: {name}/ is a folder, but gists (and expost bundles) are flat. "
                "Move its files up into the bundle or remove it."
            )
        if any(c in name for c in "\n\r\t\\"):
            raise PublishError(
                f"bundle {bundle}: file name {name!r} has a control character or backslash; rename it."
            )
        if for_gist and re.fullmatch(r"gistfile\d+(\..*)?", name):
            raise PublishError(
                f"bundle {bundle}: {name} clashes with GitHub's automatic gist file names (gistfileN); rename it."
            )
        data = path.read_bytes()
        files[name] = BundleFile(name, path, data, hashlib.sha256(data).hexdigest(), _as_text(data))
    if not files:
        raise PublishError(f"bundle {bundle} is empty. Export the post first (it writes publish/<post>/gist/).")
    return files


def _as_text(data: bytes) -> str | None:
    if not data or b"\0" in data:
        return None  # the API refuses empty content and binary; git carries these
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def get_token(env=None) -> str:
    """A GitHub token: GITHUB_TOKEN, then GH_TOKEN, then `gh auth token` when gh is installed."""
    env = os.environ if env is None else env
    for var in ("GITHUB_TOKEN", "GH_TOKEN"):
        value = (env.get(var) or "").strip()
        if value:
            return value
    detail = "gh is not installed"
    gh = shutil.which("gh", path=env.get("PATH"))
    if gh:
        try:
            p = subprocess.run([gh, "auth", "token"], capture_output=True, text=True, timeout=20, env=dict(env))
        except (OSError, subprocess.TimeoutExpired) as e:
            detail = f"`gh auth token` could not run ({type(e).__name__})"
        else:
            if p.returncode == 0 and p.stdout.strip():
                return p.stdout.strip()
            first = (p.stderr.strip().splitlines() or ["no output"])[0]
            detail = f"`gh auth token` gave no token ({first})"
    raise PublishError(f"no GitHub token: GITHUB_TOKEN and GH_TOKEN are unset and {detail}. Fix: {TOKEN_FIX}.")


def publish(
    bundle: Path,
    *,
    record: dict | None,
    description: str,
    token: str | None,
    api_url: str = API_URL,
    remote: str | None = None,
    raw_url_template: str | None = None,
    dry_run: bool = False,
    public: bool = False,
) -> dict:
    """Publish the bundle; returns the record to keep for the next publish (same gist, same remote).

    `record` is what the last publish returned (None the first time: a new gist is created). A token
    of None is looked up with get_token(), except for dry runs and remotes, which need none.
    """
    bundle = Path(bundle)
    files = read_bundle(bundle, for_gist=remote is None)
    post = bundle.parent.name if bundle.name == "gist" else bundle.name
    message = f"Publish {post} (expost)" + (f"\n\n{description}" if description else "")
    if remote is not None:
        return _publish_remote(remote, files, record, message, raw_url_template or REMOTE_RAW_TEMPLATE, dry_run)
    prev = record if record and record.get("kind") == "gist" and record.get("id") else None
    return _publish_gist(
        files, prev, message, description, public, token, api_url, raw_url_template or GIST_RAW_TEMPLATE, dry_run
    )


def _publish_remote(remote, files, record, message, template, dry_run) -> dict:
    shown = _redact(remote)
    fields = {"remote": shown.rstrip("/"), "owner": None, "id": None}
    sample = _raw_urls(template, ["x.png"], {**fields, "commit": "0" * 40})["x.png"]  # fails before any push
    if not re.match(r"https?://", sample):
        raise PublishError(
            f"--remote {shown}: figure links would be {sample!r}, not an http(s) URL a forum can load. "
            "Set raw_url_template in expost.toml to where the remote serves raw files, e.g. "
            "raw_url_template = \"https://git.example.org/me/posts/raw/{commit}/{filename}\"; nothing was pushed")
    recorded = shown  # publish/published.json is committed: a local path (a home folder) never goes there
    if shown.lower().startswith("file:") or not re.match(r"[a-zA-Z][\w+.-]*://", shown):
        recorded = "local:" + hashlib.sha256(str(Path(remote).resolve()).encode()).hexdigest()[:16]
    if dry_run:
        prev = record if record and record.get("kind") == "remote" and record.get("git_url") == recorded else None
        plan = {"requests": [], "git": _git_plan(shown, files.values(), prev)}
        return {"kind": "remote", "git_url": recorded, "dry_run": plan}
    commit, branch, pushed = _push_tree(remote, files, message)
    log.debug("%s %s: %s", "pushed" if pushed else "unchanged", shown, commit)
    return {
        "kind": "remote",
        "id": None,
        "html_url": None,
        "git_url": recorded,
        "owner": None,
        "branch": branch,
        "commit": commit,
        "raw_urls": _kept(record if record and record.get("git_url") == recorded else None, files,
                          _raw_urls(template, files, {**fields, "commit": commit})),
        "files": {n: f.sha256 for n, f in files.items()},
    }


def _publish_gist(files, prev, message, description, public, token, api_url, template, dry_run) -> dict:
    text = {n: f for n, f in files.items() if f.text is not None}
    if not text:
        raise PublishError(
            "a gist needs at least one text file, and this bundle has only binary or empty files; "
            "export a README.md into the bundle."
        )
    _raw_urls(template, [], {"remote": None, "owner": "o", "id": "i"})
    base = api_url.rstrip("/")
    if prev is None:
        method, url = "POST", f"{base}/gists"
        contents = {n: {"content": f.text} for n, f in text.items()}
        body = {"description": description, "public": public, "files": contents}
    else:
        method, url = "PATCH", f"{base}/gists/{urllib.parse.quote(str(prev['id']), safe='')}"
        old, old_text = prev.get("files") or {}, set(prev.get("text_files") or [])
        changed = {n: {"content": f.text} for n, f in text.items() if old.get(n) != f.sha256 or n not in old_text}
        removed = {n: None for n in sorted(old_text - set(text))}  # `name: null` deletes a file
        body = {"description": description}
        if changed or removed:
            body["files"] = {**changed, **removed}
    if dry_run:
        binary = [f for n, f in files.items() if n not in text]  # text files travel in the request
        git_url = prev.get("git_url") if prev else "git_push_url from the POST response"
        return {
            "kind": "gist",
            "id": prev["id"] if prev else None,
            "dry_run": {"requests": [_describe(method, url, body, files)], "git": _git_plan(git_url, binary, prev)},
        }
    token = token or get_token()
    gist = _gist_fields(_request(method, url, body, token), url)
    try:
        commit, branch, pushed = _push_tree(gist["git_push_url"], files, message, token=token, user=gist["owner"])
    except PublishError as e:
        err = PublishError(
            f"{e}\nThe text files are on {gist['html_url']}, the figures are not: publish again to finish "
            "(keep the record on this error, .record, so that the same gist is updated)."
        )
        err.record = {"kind": "gist", **{k: gist[k] for k in ("id", "html_url", "owner", "public")},
                      "git_url": gist["git_push_url"], "files": {}, "text_files": []}
        raise err from None
    log.debug("gist %s %s: %s", gist["id"], "pushed" if pushed else "unchanged", commit)
    fields = {"remote": gist["git_push_url"], "owner": gist["owner"], "id": gist["id"], "commit": commit}
    return {
        "kind": "gist",
        "id": gist["id"],
        "html_url": gist["html_url"],
        "git_url": gist["git_push_url"],
        "owner": gist["owner"],
        "branch": branch,
        "commit": commit,
        "public": gist["public"],
        "description": description,
        "raw_urls": _kept(prev, files, _raw_urls(template, files, fields)),
        "files": {n: f.sha256 for n, f in files.items()},
        "text_files": sorted(text),
    }


def _kept(prev: dict | None, files: dict, urls: dict[str, str]) -> dict[str, str]:
    """The raw URLs to record: a file unchanged since the last publish keeps its URL (pinned to
    the older commit, which still holds those bytes), so the README and post.md that link it do
    not change, and publishing again settles instead of making a new commit each time."""
    from expost.publish.records import pinned

    return {n: hit[0] if (hit := pinned(prev or {}, n)) and hit[1] == files[n].sha256 else url
            for n, url in urls.items()}


def _raw_urls(template: str, names, fields: dict) -> dict[str, str]:
    try:
        template.format(**{"filename": "f", "commit": "c", **fields})
        return {n: template.format(filename=urllib.parse.quote(n), **fields) for n in names}
    except (KeyError, IndexError, ValueError) as e:
        raise PublishError(
            f"raw URL template {template!r}: unknown or malformed placeholder ({e}). "
            "Use {commit}, {filename}, {owner}, {id} and {remote}."
        ) from None


def _describe(method, url, body, files) -> dict:
    """What one request would send, with file contents shortened to size, hash and a first line."""
    shown = dict(body)
    if "files" in body:
        shown["files"] = {
            n: None if v is None else _summary(files[n], v["content"]) for n, v in body["files"].items()
        }
    headers = dict(_HEADERS, Authorization="Bearer <token>")
    if body is not None:
        headers["Content-Type"] = "application/json"
    return {"method": method, "url": url, "headers": headers, "json": shown}


def _summary(f: BundleFile, text: str) -> dict:
    line = next((x for x in text.splitlines() if x.strip()), "")
    return {"size": len(f.data), "sha256": f.sha256, "head": line[:77] + "..." if len(line) > 80 else line}


def _git_plan(url, files, prev) -> dict:
    names = {f.name for f in files}
    gone = sorted(set((prev or {}).get("files") or {}) - names - set((prev or {}).get("text_files") or []))
    return {
        "url": url,
        "push": [{"name": f.name, "size": len(f.data), "sha256": f.sha256} for f in files],
        "delete": gone,
        "author": f"{AUTHOR_NAME} <{AUTHOR_EMAIL}>",
    }


# -- HTTP --------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect becomes an HTTPError we explain, never a resend to another host


_OPENER = urllib.request.build_opener(_NoRedirect)
_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION, "User-Agent": "expost"}


def _request(method: str, url: str, body: dict | None, token: str) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method, headers=_HEADERS)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    req.add_unredirected_header("Authorization", f"Bearer {token}")
    log.debug("%s %s (%d files)", method, url, len((body or {}).get("files") or {}))
    try:
        with _OPENER.open(req, timeout=HTTP_TIMEOUT_S) as resp:
            payload = resp.read()
    except urllib.error.HTTPError as e:
        raise PublishError(_scrub(_http_error(method, url, e), token)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        said = f"{method} {url}: could not reach GitHub ({reason}). Check the network or --api-url."
        raise PublishError(_scrub(said, token)) from None
    try:
        return json.loads(payload)
    except ValueError:
        raise PublishError(
            f"{method} {url}: the answer is not JSON; check --api-url points at the GitHub API."
        ) from None


def _http_error(method: str, url: str, e: urllib.error.HTTPError) -> str:
    try:
        answer = json.loads(e.read() or b"{}")
    except ValueError:
        answer = {}
    finally:
        e.close()
    said = answer.get("message") if isinstance(answer, dict) else None
    errors = answer.get("errors") if isinstance(answer, dict) else None
    head = f"{method} {url}: GitHub answered {e.code}" + (f" ({said})" if said else f" {e.reason}")
    if errors:
        head += f": {json.dumps(errors)[:500]}"
    if e.code == 401:
        return f"{head}. The token was rejected (wrong, expired or revoked). Fix: {TOKEN_FIX}."
    if e.code == 403:
        return f"{head}. The token lacks the `gist` scope, or a rate limit was hit. Fix: {TOKEN_FIX}."
    if e.code == 404:
        return (
            f"{head}. The gist does not exist for this token: it was deleted or belongs to another account, "
            f"or the token lacks the `gist` scope (GitHub then answers 404). Fix: {TOKEN_FIX}; "
            "to start a new gist, forget the stored gist id."
        )
    if e.code == 422:
        return f"{head}. GitHub refused the files; check the bundle's file names and that text files are UTF-8."
    if 300 <= e.code < 400:
        return f"{head}, a redirect to {e.headers.get('Location')}. Check --api-url."
    return f"{head}. Try again later, or check https://www.githubstatus.com."


def _gist_fields(answer: dict, url: str) -> dict:
    try:
        return {
            "id": str(answer["id"]),
            "html_url": answer["html_url"],
            "git_push_url": answer["git_push_url"],
            "owner": answer["owner"]["login"],
            "public": bool(answer.get("public")),
        }
    except (KeyError, TypeError) as e:
        raise PublishError(
            f"{url}: the answer lacks the gist field {e}; check --api-url points at the GitHub API."
        ) from None


# -- git ---------------------------------------------------------------------------------------


def _push_tree(url: str, files: dict[str, BundleFile], message: str, *, token=None, user=None) -> tuple:
    """Commit a tree holding exactly `files` on top of the remote's default branch and push it.

    Returns (commit, branch, pushed). When the remote's tree already equals the bundle, nothing is
    committed and the remote's head is returned, so an unchanged bundle keeps its pinned URLs.
    """
    env = _git_env(url, token, user)
    shown = _redact(url)
    secret = [token, urllib.parse.urlsplit(url).password]
    with tempfile.TemporaryDirectory(prefix="expost-publish-") as tmp:
        repo = os.path.join(tmp, "repo.git")
        # --no-local keeps --depth working for plain paths; a clone learns the default branch even of an empty repo
        _git(["clone", "--quiet", "--bare", "--no-local", "--depth=1", "--", url, repo], env, shown, secret)

        def git(*args, stdin=None, check=True):
            return _git(["--git-dir", repo, *args], env, shown, secret, stdin=stdin, check=check)

        branch = git("symbolic-ref", "--short", "HEAD")
        parent = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
        paths = "".join(f"{f.path}\n" for f in files.values())
        blobs = git("hash-object", "-w", "--no-filters", "--stdin-paths", stdin=paths).split()
        listing = "".join(f"100644 blob {b}\t{n}\n" for n, b in zip(files, blobs))
        tree = git("mktree", stdin=listing)
        if parent and git("rev-parse", f"{parent}^{{tree}}") == tree:
            return parent, branch, False
        commit = git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
        git("push", "--quiet", "--", url, f"{commit}:refs/heads/{branch}")
        return commit, branch, True


def _git_env(url: str, token: str | None, user: str | None) -> dict:
    """Environment for git: fixed author, no prompts, and the token (https only) as config from env."""
    env = dict(os.environ)
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
    )
    parts = urllib.parse.urlsplit(url)
    if token and parts.scheme in ("http", "https"):
        _require_git(2, 31)  # GIT_CONFIG_COUNT
        origin = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/"
        basic = base64.b64encode(f"{user or 'x-access-token'}:{token}".encode()).decode()
        n = int(env.get("GIT_CONFIG_COUNT") or 0)
        # The header is scoped to the gist host; an empty helper list keeps git from storing it anywhere.
        for i, (key, value) in enumerate(
            [(f"http.{origin}.extraHeader", f"Authorization: Basic {basic}"), ("credential.helper", "")], start=n
        ):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        env["GIT_CONFIG_COUNT"] = str(n + 2)
    return env


def _git(args, env, shown, secret, *, stdin=None, check=True) -> str:
    try:
        p = subprocess.run(
            ["git", *args], env=env, input=stdin, capture_output=True, timeout=GIT_TIMEOUT_S,
            encoding="utf-8", errors="replace",
        )
    except FileNotFoundError:
        raise PublishError("git is not installed; install git to publish.") from None
    except subprocess.TimeoutExpired:
        raise PublishError(
            f"git took over {GIT_TIMEOUT_S}s talking to {shown}; check the network and the remote."
        ) from None
    if p.returncode != 0:
        if not check:
            return ""
        verb = args[2] if args[0] == "--git-dir" else args[0]
        said = _scrub((p.stderr or p.stdout).strip(), *secret) or f"exit status {p.returncode}"
        hint = {
            "clone": "check the URL and that you may read it",
            "push": "check that you may write to it; if someone else pushed meanwhile, publish again",
        }.get(verb, "see git's message")
        raise PublishError(f"git {verb} {shown} failed: {said}\nFix: {hint}.")
    return p.stdout.strip()


def _require_git(major: int, minor: int) -> None:
    try:
        out = subprocess.run(["git", "version"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise PublishError("git is not installed; install git to publish.") from None
    found = tuple(int(x) for x in re.findall(r"\d+", out)[:2])
    if found < (major, minor):
        raise PublishError(
            f"{out.strip()} is too old to receive the token safely; install git {major}.{minor} or later."
        )


def _redact(url: str) -> str:
    """The URL without user:password, for records and messages."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", url)


def _scrub(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(Authorization:\s*\w+\s+)\S+", r"\1***", text, flags=re.I)
