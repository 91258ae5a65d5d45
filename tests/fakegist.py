"""A stand-in for GitHub's gist REST API, only because GitHub is unreachable from tests.

It serves POST /gists, GET and PATCH /gists/{id} on 127.0.0.1, refuses anything that does not
match the documented request shape (headers, `files: {name: {"content": str}}`, `name: null` to
delete), and records every request. Each gist is a local bare git repository, so `git_push_url`
is a file:// URL that the real git pushes to, and GET shows what was pushed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

API_VERSION = "2022-11-28"
DOCS = "https://docs.github.com/rest"
OWNER = "octocat"
_FAKE_AUTHOR = {
    "GIT_AUTHOR_NAME": "gist web",
    "GIT_AUTHOR_EMAIL": "noreply@github.com",
    "GIT_COMMITTER_NAME": "gist web",
    "GIT_COMMITTER_EMAIL": "noreply@github.com",
}


def fake_token() -> str:
    """A string shaped like a classic personal access token."""
    alphabet = string.ascii_letters + string.digits
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: object  # parsed JSON, or None


class FakeGistAPI:
    def __init__(self, root: Path, token: str):
        self.root = root
        self.token = token
        self.requests: list[Request] = []
        self.gists: dict[str, dict] = {}  # id -> {"description", "public", "repo"}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.fake = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def repo(self, gist_id: str) -> Path:
        return self.gists[gist_id]["repo"]

    # -- the API ---------------------------------------------------------------------------

    def answer(self, method: str, path: str, headers, raw: bytes) -> tuple[int, dict]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = ValueError
        self.requests.append(Request(method, path, dict(headers), body))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        if not headers.get("User-Agent"):
            return 403, {"message": "Request forbidden by administrative rules. Please make sure your request has a "
                                    "User-Agent header"}
        if headers.get("Accept") != "application/vnd.github+json":
            return 400, {"message": "fake: Accept must be application/vnd.github+json"}
        if headers.get("X-GitHub-Api-Version") != API_VERSION:
            return 400, {"message": f"fake: X-GitHub-Api-Version must be {API_VERSION}"}
        if method in ("POST", "PATCH"):
            if headers.get("Content-Type", "").split(";")[0] != "application/json":
                return 415, {"message": "fake: Content-Type must be application/json"}
            if body is ValueError:
                return 400, {"message": "Problems parsing JSON"}
        elif raw:
            return 400, {"message": f"fake: {method} takes no body"}
        m = re.fullmatch(r"/gists/([0-9a-f]+)", path)
        if method == "POST" and path == "/gists":
            return self._create(body)
        if m and m.group(1) in self.gists and method == "GET":
            return 200, self._gist(m.group(1))
        if m and m.group(1) in self.gists and method == "PATCH":
            return self._update(m.group(1), body)
        return 404, {"message": "Not Found", "documentation_url": DOCS}

    def _create(self, body):
        problem = _check_body(body, create=True)
        if problem:
            return 422, {"message": "Validation Failed", "errors": [problem]}
        gist_id = secrets.token_hex(16)
        repo = self.root / f"{gist_id}.git"
        _git(None, "init", "--quiet", "--bare", "--initial-branch=main", str(repo))
        self.gists[gist_id] = {"description": body.get("description"), "public": bool(body.get("public")),
                               "repo": repo}
        _commit(repo, {n: v["content"].encode() for n, v in body["files"].items()})
        return 201, self._gist(gist_id)

    def _update(self, gist_id, body):
        problem = _check_body(body, create=False)
        current = _tree(self.repo(gist_id))
        if not problem:
            unknown = [n for n, v in (body.get("files") or {}).items() if v is None and n not in current]
            problem = f"cannot delete missing files {unknown}" if unknown else None
        if problem:
            return 422, {"message": "Validation Failed", "errors": [problem]}
        if "description" in body:
            self.gists[gist_id]["description"] = body["description"]
        changes = {n: None if v is None else v["content"].encode() for n, v in (body.get("files") or {}).items()}
        if changes:
            _commit(self.repo(gist_id), changes)
        return 200, self._gist(gist_id)

    def _gist(self, gist_id: str) -> dict:
        g = self.gists[gist_id]
        repo = g["repo"]
        history = _git(repo, "rev-list", "main").split()
        head = history[0]
        files = {}
        for name, (blob, size) in sorted(_tree(repo).items()):
            data = _git_bytes(repo, "cat-file", "blob", blob)
            entry = {
                "filename": name,
                "type": "text/plain",
                "language": None,
                "raw_url": f"https://gist.githubusercontent.com/{OWNER}/{gist_id}/raw/{head}/{name}",
                "size": size,
                "truncated": False,
            }
            try:
                entry["content"] = data.decode("utf-8")
            except UnicodeDecodeError:
                entry["type"] = "application/octet-stream"
            files[name] = entry
        owner = {"login": OWNER, "id": 1, "type": "User"}
        return {
            "url": f"{self.url}/gists/{gist_id}",
            "id": gist_id,
            "git_pull_url": repo.as_uri(),
            "git_push_url": repo.as_uri(),
            "html_url": f"https://gist.github.com/{gist_id}",
            "files": files,
            "public": g["public"],
            "description": g["description"],
            "comments": 0,
            "user": None,
            "owner": owner,
            "truncated": False,
            "history": [{"user": owner, "version": v, "url": f"{self.url}/gists/{gist_id}/{v}"} for v in history],
        }


def _check_body(body, *, create: bool) -> str | None:
    """Why the body does not match the documented shape, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    allowed = {"description", "public", "files"} if create else {"description", "files"}
    if set(body) - allowed:
        return f"unexpected keys {sorted(set(body) - allowed)}"
    if "description" in body and not isinstance(body["description"], (str, type(None))):
        return "description must be a string"
    if "public" in body and not isinstance(body["public"], bool):
        return "public must be a boolean"
    files = body.get("files")
    if create and not (isinstance(files, dict) and files):
        return "files is required and must hold at least one file"
    if not create and not body:
        return "description or files is required"
    for name, value in (files or {}).items():
        if not name or "/" in name:
            return f"bad file name {name!r}"
        if value is None and not create:
            continue  # deletes the file
        keys = set(value) if isinstance(value, dict) else None
        if keys is None or keys - {"content", "filename"} or (create and keys != {"content"}):
            return f"files[{name!r}] must be {{'content': str}}"
        content = value.get("content")
        if not isinstance(content, str) or not content:
            return f"files[{name!r}].content must be a non-empty string"
        if "\0" in content:
            return f"files[{name!r}] looks binary; the API takes text only"
    return None


def _git(repo, *args, stdin: str | None = None) -> str:
    cmd = ["git", *(["--git-dir", str(repo)] if repo else []), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True, env=_env()).stdout.strip()


def _git_bytes(repo, *args, stdin: bytes | None = None) -> bytes:
    cmd = ["git", "--git-dir", str(repo), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, check=True, env=_env()).stdout


def _env():
    return {**os.environ, **_FAKE_AUTHOR}


def _tree(repo: Path) -> dict[str, tuple[str, int]]:
    """name -> (blob, size) at the head of main; empty for a new repository."""
    try:
        out = _git(repo, "ls-tree", "-l", "main")
    except subprocess.CalledProcessError:
        return {}
    entries = {}
    for line in out.splitlines():
        meta, name = line.split("\t", 1)
        _mode, _kind, blob, size = meta.split()
        entries[name] = (blob, int(size))
    return entries


def _commit(repo: Path, changes: dict[str, bytes | None]) -> None:
    """Apply changes (None deletes) on top of main, as the web editor would."""
    entries = {n: blob for n, (blob, _size) in _tree(repo).items()}
    for name, data in changes.items():
        if data is None:
            entries.pop(name, None)
        else:
            entries[name] = _git_bytes(repo, "hash-object", "-w", "--stdin", stdin=data).decode().strip()
    tree = _git(repo, "mktree", stdin="".join(f"100644 blob {b}\t{n}\n" for n, b in sorted(entries.items())))
    cmd = ["git", "--git-dir", str(repo), "rev-parse", "-q", "--verify", "main"]
    found = subprocess.run(cmd, capture_output=True)
    parent = found.stdout.decode().strip()
    if parent and _git(repo, "rev-parse", f"{parent}^{{tree}}") == tree:
        return
    commit = _git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", "")
    _git(repo, "update-ref", "refs/heads/main", commit)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass

    def _handle(self, method):
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with fake.lock:
            status, payload = fake.answer(method, self.path, self.headers, raw)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")


@pytest.fixture
def fake_gist(tmp_path, monkeypatch):
    """A running fake gist API; `.url` is the api_url, `.token` the only token it accepts."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    api = FakeGistAPI(tmp_path / "fake-gists", fake_token())
    api.start()
    yield api
    api.stop()
