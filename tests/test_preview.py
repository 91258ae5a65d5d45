"""`expost preview` as a user meets it: a real `expost preview` process, a real Chromium page
(Playwright driving Debian's chromium, see tests/browser.py), real edits of real files."""

from __future__ import annotations

import http.client
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from browser import CHROMIUM_ARGS, TIMEOUT_MS, require_browser
from conftest import FIXTURES

TEMPLATE = """---
title: Toy preview
summary: A toy post drafted live.
experiments: [toy]
seeds: 3
---
Marker: ALPHA.

{{ figure(results("toy"), "curves", "curve", by="rate") }}

The final value is {{ stat(results("toy", rate=0.5), "final") }}.
"""


class Preview:
    """A running `expost preview` process: its URL, and its stderr lines as they come."""

    def __init__(self, root: Path, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "expost", "preview", *args], cwd=root, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait_for(r"http://127\.0\.0\.1:\d+/\?token=\S+").group(0)
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self.token = parts.query.split("=", 1)[1]

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.seen:
                if (m := re.search(pattern, line)):
                    return m
            try:
                self.seen.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        raise AssertionError(f"no line matching {pattern!r}; stderr so far:\n{''.join(self.seen)}")

    def get(self, path: str, host: str | None = None) -> tuple[int, bytes]:
        """A raw GET (no browser path normalisation), with the Host header given."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{self.port}")
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, body

    def output(self) -> str:
        """All of stderr, once the process has ended."""
        self.proc.wait(timeout=30)
        time.sleep(0.2)  # the reader thread's last lines
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def toy_ws(tmp_path):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    shutil.copy(FIXTURES / "toy.py", root / "experiments" / "toy.py")
    (root / "templates" / "toy.md.j2").write_text(TEMPLATE)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_preview_in_a_browser_follows_edits_errors_and_fixes(toy_ws, cache_dir):
    executable = require_browser()
    from playwright.sync_api import sync_playwright

    template = toy_ws / "templates" / "toy.md.j2"
    experiment = toy_ws / "experiments" / "toy.py"
    preview = Preview(toy_ws, "toy", "-j", "2")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                        timeout=TIMEOUT_MS)
            # bypass_csp: Playwright evaluates its waits as strings, which the page's CSP (no eval) refuses.
            page = browser.new_page(viewport={"width": 900, "height": 700}, bypass_csp=True)
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(preview.url.replace("/?", "/post/toy?"))
            page.wait_for_function("document.body.dataset.gen !== '0' && document.querySelector('article img')")
            assert "Marker: ALPHA." in page.inner_text("article")
            panel = page.inner_text("#expost-preview")
            assert "up to date" in panel
            claims = page.inner_text("#expost-claims")
            assert re.search(r"holds 3/3 seeds\s*toy: The final value is below 1. \[rate=0.5\]", claims), claims
            assert re.search(r"holds 3/3 seeds\s*toy: A faster rate ends lower.", claims), claims
            figure = page.get_attribute("article img", "src")
            page.evaluate("window.__notReloaded = true")

            # A template edit: the new text appears without a reload, at the same scroll position.
            page.evaluate("window.scrollTo(0, 40)")
            y = page.evaluate("window.scrollY")
            gen = page.evaluate("document.body.dataset.gen")
            edit(template, "ALPHA", "BETA")
            page.wait_for_function(f"document.body.dataset.gen !== '{gen}' && "
                                   "document.querySelector('article').innerText.includes('Marker: BETA.')")
            assert page.evaluate("window.__notReloaded") is True
            assert page.evaluate("window.scrollY") == y
            assert page.get_attribute("article img", "src") == figure  # nothing it shows changed

            # An experiment edit: new runs, a new figure and new numbers.
            before = page.inner_text("article")
            gen = page.evaluate("document.body.dataset.gen")
            edit(experiment, "start = 1 + rng.random()", "start = 3 + rng.random()")
            page.wait_for_function(f"document.body.dataset.gen !== '{gen}'")
            assert page.get_attribute("article img", "src") != figure
            assert page.inner_text("article") != before
            assert "Marker: BETA." in page.inner_text("article")
            assert page.evaluate("window.__notReloaded") is True

            # A run that fails: its file:line and error above the last good render; fixed, it recovers.
            shown = page.inner_text("article")
            edit(experiment, '"fail_seed": 0,', '"fail_seed": 2,')
            page.wait_for_selector("#expost-error:not([hidden])")
            message = page.inner_text("#expost-error")
            line = next(i for i, text in enumerate(experiment.read_text().splitlines(), 1) if "raise RuntimeError" in text)
            assert f"experiments/toy.py:{line}: toy [rate=0.5] seed 2 failed: RuntimeError: seed 2 fails on purpose" \
                in message, message
            assert page.inner_text("article") == shown
            gen = page.evaluate("document.body.dataset.gen")
            edit(experiment, '"fail_seed": 2,', '"fail_seed": 0,')
            page.wait_for_selector("#expost-error[hidden]", state="attached")
            page.wait_for_function(f"document.body.dataset.gen !== '{gen}'")

            # A broken template: the error with file:line above the last good render.
            edit(template, "Marker: BETA.", "Marker: BETA.\n\n{{ stat(results('toy'), 'no_such_output') }}")
            page.wait_for_selector("#expost-error:not([hidden])")
            message = page.inner_text("#expost-error")
            assert re.search(r"toy\.md\.j2:9\b", message), message
            assert "no_such_output" in message
            assert "Marker: BETA." in page.inner_text("article")  # the last good render stays

            # Fixed: the page recovers, without a restart or a reload.
            gen = page.evaluate("document.body.dataset.gen")
            edit(template, "\n\n{{ stat(results('toy'), 'no_such_output') }}", "\n\nMarker: GAMMA.")
            page.wait_for_function(f"document.body.dataset.gen !== '{gen}'")
            page.wait_for_selector("#expost-error[hidden]", state="attached")
            assert "Marker: GAMMA." in page.inner_text("article")
            assert page.evaluate("window.__notReloaded") is True
            assert errors == []
            browser.close()
        assert not (toy_ws / "publish").exists()  # the preview never publishes
    finally:
        preview.stop()


def test_preview_refuses_requests_without_token_and_files_outside(toy_ws, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    preview = Preview(toy_ws, "toy")
    try:
        token = preview.token
        preview.wait_for(r"updated in")
        assert preview.get(f"/post/toy?token={token}")[0] == 200
        assert preview.get(f"/files/toy/post.md?token={token}")[0] == 200
        # Without the token, or with a wrong one: refused, whatever the path.
        for path in ("/", "/post/toy", "/files/toy/post.md", "/events", "/preview.js", "/post/toy?token=x" + token):
            assert preview.get(path)[0] == 403, path
        # Outside a render's folder: refused, however the path is spelled.
        for path in ("/files/toy/../../../../../../etc/passwd", "/files/toy/%2e%2e/%2e%2e/secret.txt",
                     "/files/toy/..%2f..%2f..%2fsecret.txt", f"/files/toy/{'/..' * 12}{secret}",
                     "/files/toy//etc/passwd", "/files/nope/post.md"):
            status, body = preview.get(f"{path}?token={token}")
            assert status in (403, 404), (path, status)
            assert b"do not serve" not in body and b"root:" not in body
        # A link inside the render that points outside it is not followed.
        folder = next((Path(os.environ["EXPOST_CACHE_DIR"]) / "preview" / "toy").iterdir())  # PID-N
        (folder / "leak.txt").symlink_to(secret)
        assert preview.get(f"/files/toy/leak.txt?token={token}")[0] == 404
        # A page of another site reaching it by DNS rebinding carries its own Host: refused.
        assert preview.get(f"/post/toy?token={token}", host=f"evil.example:{preview.port}")[0] == 403
        # It listens on the loopback interface only.
        assert preview.host == "127.0.0.1"
    finally:
        preview.stop()


def test_progress_on_the_page_and_ctrl_c_mid_sweep_keeps_completed_runs(tmp_path, cache_dir):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    shutil.copy(FIXTURES / "slow.py", root / "experiments" / "slow.py")
    (root / "templates" / "slow.md.j2").write_text(
        "---\ntitle: Slow\nsummary: s.\nexperiments: [slow]\n---\n{{ stat(results('slow'), 'final') }}\n")
    executable = require_browser()
    from playwright.sync_api import sync_playwright

    preview = Preview(root, "-j", "2", "--set", "pause=1.0")
    try:
        # 12 runs of 1 s on 2 workers: the page shows their progress; then stop it half-way.
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                        timeout=TIMEOUT_MS)
            page = browser.new_page(bypass_csp=True)
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(preview.url.replace("/?", "/post/slow?"))
            page.wait_for_function("/running: [1-9]\\d* of 12 runs done \\| in progress: slow \\[rate=/"
                                   ".test(document.getElementById('expost-status').innerText)")
            browser.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(cache_dir.glob("runs/*/*/result.json"))) < 2:
            time.sleep(0.05)
        assert len(list(cache_dir.glob("runs/*/*/result.json"))) >= 2
        preview.proc.send_signal(signal.SIGINT)  # how fast it stops is measured in bench/preview.py
        assert preview.proc.wait(timeout=30) == 130
        cached = len(list(cache_dir.glob("runs/*/*/result.json")))
        assert 2 <= cached < 12
        stderr = preview.output()
        assert "stopped: completed runs are cached." in stderr
        assert "Traceback" not in stderr
        # A build afterwards runs only what is missing.
        r = subprocess.run([sys.executable, "-m", "expost", "run", "slow", "-j", "2", "--set", "pause=1.0"], cwd=root,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"{cached} cached, {12 - cached} ran" in r.stderr
    finally:
        preview.stop()
