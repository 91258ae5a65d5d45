"""Open a built HTML page in headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Never `playwright install`: it downloads browsers. The system Chromium is used instead; set
EXPOST_CHROMIUM to point at another binary. Without Chromium (or the playwright package) the
browser tests skip locally and fail under CI (CI set), where they must run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 30_000


def chromium_path() -> str | None:
    """The Chromium binary to drive, or None."""
    explicit = os.environ.get("EXPOST_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def require_browser() -> str:
    """The Chromium path; skip the calling test when it cannot run here, fail instead under CI."""
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[test]')"
    path = chromium_path()
    if path is None:
        problem = "Chromium is not installed (apt-get install chromium, or set EXPOST_CHROMIUM)"
    if problem is None:
        return path
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"browser test cannot run under CI: {problem}")
    pytest.skip(problem)


_FACTS_JS = """() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const imgs = [...document.images];
  const maths = [...document.querySelectorAll('math')];
  const fracs = [...document.querySelectorAll('mfrac')].filter(f => f.children.length === 2);
  return {
    title: document.title,
    images: imgs.length,
    images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    image_sizes: imgs.map(i => [i.naturalWidth, i.naturalHeight]),
    maths: maths.length,
    math_boxes: maths.map(box),
    maths_sized: maths.filter(m => { const [w, h] = box(m); return w > 0 && h > 0; }).length,
    // MathML really laid out (not shown as a run of text): numerator sits above denominator.
    fractions: fracs.length,
    fractions_stacked: fracs.filter(f => f.children[0].getBoundingClientRect().bottom
                                         <= f.children[1].getBoundingClientRect().top + 1).length,
    display_maths: maths.filter(m => m.getAttribute('display') === 'block').length,
    page_width: document.documentElement.scrollWidth,
    viewport_width: window.innerWidth,
  };
}"""


def check_page(html_path: Path, screenshot_path: Path, *, width: int = 900) -> dict:
    """Load `html_path` from file://, wait for load, save a full-page screenshot, return facts.

    Facts: title, images / images_loaded (naturalWidth > 0), maths / maths_sized (non-zero box),
    fractions / fractions_stacked, console_errors (console errors and page exceptions), and
    requests: every URL the page asked for that is not file: or data: (all are blocked).
    """
    from playwright.sync_api import sync_playwright

    executable = require_browser()
    console_errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                    timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))

            def route(r):
                if r.request.url.startswith(("file:", "data:")):
                    r.continue_()
                else:
                    requests.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
            page.evaluate("() => Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
            facts = page.evaluate(_FACTS_JS)
            page.screenshot(path=str(screenshot_path), full_page=True)
        finally:
            browser.close()
    facts["console_errors"] = console_errors
    facts["requests"] = requests
    return facts


_OVERFLOW_JS = """() => {
  const vw = document.documentElement.clientWidth;
  const scroller = el => { for (let a = el.parentElement; a; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if ((o === 'auto' || o === 'scroll') && a.getBoundingClientRect().right <= vw + 1) return a; }
    return null; };
  const out = [], scrollable = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= vw + 1) continue;
    const s = scroller(el);
    if (s) { if (!scrollable.includes(s)) scrollable.push(s); }
    else out.push(el.tagName + (el.className ? '.' + el.className : '') + ' right=' + Math.round(r.right));
  }
  return {page_width: document.documentElement.scrollWidth, viewport_width: vw, overflowing: out.slice(0, 10),
          scrollers: scrollable.map(s => s.tagName + ':' + getComputedStyle(s).overflowX)};
}"""


def overflow(html_path: Path, width: int) -> dict:
    """At `width` px: the page's and the viewport's widths, elements reaching past the viewport
    that no scrollable box holds (`overflowing`), and the boxes that scroll what is wider."""
    from playwright.sync_api import sync_playwright

    executable = require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                    timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
            return page.evaluate(_OVERFLOW_JS)
        finally:
            browser.close()
