"""The preview's HTTP side: pages of the posts the session renders, kept live by Server-Sent Events.

    GET /                    the workspace's posts, their status and claims
    GET /post/NAME           the post's page (its post.html) with the live panel
    GET /post/NAME/page      the latest good post.html (what the panel swaps in on a change)
    GET /files/NAME/PATH     a file of the latest render (figures, post.md, manifest.json, gist/)
    GET /events              the session's state as a stream of JSON events
    GET /preview.js          the panel's script

Security: it listens on 127.0.0.1 only; every request must carry the random token printed in the
URL (as ?token=, or the cookie set on the first such request) and a Host header naming this
server (so a web page cannot reach it by DNS rebinding); files are served only from under a
render's folder in the cache. Responses are not cached and send no Referer onward (the token
stays on this machine).
"""

from __future__ import annotations

import hmac
import html
import json
import mimetypes
import secrets
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, quote, unquote, urlsplit

from expost.preview.session import State

HEARTBEAT_S = 15.0
CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'self'; "
       "connect-src 'self'; font-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class PreviewServer(ThreadingHTTPServer):
    daemon_threads = True  # an open page never keeps the process alive after Ctrl-C
    allow_reuse_address = True

    def __init__(self, state: State, port: int = 0, token: str | None = None):
        self.state = state
        self.token = token or secrets.token_urlsafe(24)
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", port), Handler)
        self.port = self.server_address[1]
        self.cookie = f"expost_preview_{self.port}"
        self.script = resources.files("expost.preview").joinpath("preview.js").read_bytes()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def stop(self) -> None:
        self.stopping.set()
        with self.state.cond:
            self.state.cond.notify_all()  # event streams see `stopping` and end
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: PreviewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # the terminal shows the session's lines, not each request
        pass

    # --- gate -------------------------------------------------------------------------------------

    def _allowed(self, query: dict) -> tuple[bool, bool]:
        """(allowed, came with the token in the URL: set the cookie)."""
        host = self.headers.get("Host", "")
        if host not in (f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}"):
            return False, False
        given = (query.get("token") or [""])[0]
        if given and hmac.compare_digest(given.encode(), self.server.token.encode()):
            return True, True
        jar = SimpleCookie(self.headers.get("Cookie", ""))
        cookie = jar.get(self.server.cookie)
        return bool(cookie and hmac.compare_digest(cookie.value.encode(), self.server.token.encode())), False

    def do_GET(self):
        self.set_cookie = False
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        allowed, from_url = self._allowed(query)
        if not allowed:
            return self._send(HTTPStatus.FORBIDDEN, b"expost preview: this page needs the token from the URL that "
                              b"`expost preview` printed; open that URL.\n", "text/plain")
        self.set_cookie = from_url
        path = unquote(parts.path)
        pieces = [p for p in path.split("/") if p]
        try:
            if not pieces:
                return self._index()
            if pieces == ["events"]:
                return self._events()
            if pieces == ["preview.js"]:
                return self._send(HTTPStatus.OK, self.server.script, "text/javascript")
            if pieces[0] == "post" and len(pieces) == 2:
                return self._post(pieces[1])
            if pieces[0] == "post" and len(pieces) == 3 and pieces[2] == "page":
                return self._raw_page(pieces[1])
            if pieces[0] == "files" and len(pieces) >= 3:
                return self._file(pieces[1], pieces[2:])
        except (BrokenPipeError, ConnectionResetError):
            return
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    # --- responses --------------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self._headers(ctype)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _headers(self, ctype: str) -> None:
        if ctype.startswith("text/") or ctype.endswith("json"):
            ctype += "; charset=utf-8"
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        if getattr(self, "set_cookie", False):
            self.send_header("Set-Cookie", f"{self.server.cookie}={self.server.token}; Path=/; HttpOnly; "
                                           "SameSite=Strict")

    def _events(self) -> None:
        """Server-Sent Events: the state now, then after every change (a comment line as heartbeat)."""
        self.send_response(HTTPStatus.OK)
        self._headers("text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        state, version = self.server.state, None
        while not self.server.stopping.is_set():
            now = state.wait(version, HEARTBEAT_S) if version is not None else state.version
            if self.server.stopping.is_set():
                return
            if now == version:
                self.wfile.write(b": heartbeat\n\n")
            else:
                version = now
                self.wfile.write(f"data: {json.dumps(state.snapshot())}\n\n".encode())
            self.wfile.flush()

    def _post(self, name: str) -> None:
        if name not in self.server.state.posts:
            return self._send(HTTPStatus.NOT_FOUND, f"no post {name!r} in this preview\n".encode(), "text/plain")
        gen, page, _ = self.server.state.page(name)
        page = page or _EMPTY.format(title=html.escape(name))
        panel = (f'<div id="expost-preview" data-post="{html.escape(name)}" data-gen="{gen}"></div>'
                 f'<script src="/preview.js" data-token="{html.escape(self.server.token)}"></script>\n')
        cut = page.rfind("</body>")
        page = page[:cut] + panel + page[cut:] if cut >= 0 else page + panel
        self._send(HTTPStatus.OK, page.encode(), "text/html")

    def _raw_page(self, name: str) -> None:
        gen, page, _ = self.server.state.page(name)
        if page is None:
            return self._send(HTTPStatus.NOT_FOUND, b"not rendered yet\n", "text/plain")
        self._send(HTTPStatus.OK, page.encode(), "text/html", {"X-Expost-Gen": str(gen)})

    def _file(self, name: str, rel: list[str]) -> None:
        """A file of the post's latest render; nothing outside its folder, whatever the path says."""
        _, _, folder = self.server.state.page(name)
        if folder is None or any(p in ("..", ".") or "\\" in p or p.startswith("~") for p in rel):
            return self._send(HTTPStatus.FORBIDDEN, b"refused: only files of a render can be read\n", "text/plain")
        path = folder.joinpath(*rel)
        try:
            real = path.resolve(strict=True)
            if not real.is_relative_to(folder.resolve()) or not real.is_file():
                raise FileNotFoundError
            body = real.read_bytes()
        except OSError:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        ctype = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
        if real.suffix in (".md", ".py", ".txt", ".csv"):
            ctype = "text/plain"
        self._send(HTTPStatus.OK, body, ctype)

    def _index(self) -> None:
        snap = self.server.state.snapshot()
        rows = []
        for name, post in snap["posts"].items():
            claims = post["claims"]
            held = sum(c["verdict"] == "holds" for c in claims)
            status = "error" if post["error"] else ("rendered" if post["gen"] else "waiting")
            rows.append(f'<li><a href="/post/{quote(name)}">{html.escape(name)}</a> '
                        f'<span class="status">{status}</span> '
                        f'<span class="claims">{held} of {len(claims)} claim results hold</span></li>')
        error = f'<pre class="error">{html.escape(snap["error"])}</pre>' if snap["error"] else ""
        body = _INDEX.format(error=error, rows="\n".join(rows) or "<li>no posts in templates/</li>",
                             token=html.escape(self.server.token))
        self._send(HTTPStatus.OK, body.encode(), "text/html")


_EMPTY = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n</head>\n"
          "<body>\n<article><p>Not rendered yet: waiting for its runs and its first render.</p></article>\n"
          "</body>\n</html>\n")
_INDEX = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>expost preview</title>\n"
          "<style>body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; }} "
          ".status, .claims {{ color: #555; margin-left: .5em; }} .error {{ color: #a00; white-space: pre-wrap; }}"
          "</style>\n</head>\n<body>\n<h1>expost preview</h1>\n{error}<ul id=\"posts\">\n{rows}\n</ul>\n"
          "<div id=\"expost-preview\" data-index=\"1\"></div>"
          "<script src=\"/preview.js\" data-token=\"{token}\"></script>\n</body>\n</html>\n")
