"""The preview's engine: one warm process watches the workspace and, on every change, reruns what
went stale and re-renders the posts it affects into the cache; the pages read its `State`.

    watch (stat every file of experiments/, templates/, expost.toml)
      -> plan each post (Workspace.posts) -> run what the cache lacks (Workspace.run_missing, workers
         forked from this process, which has torch, matplotlib and expost imported)
      -> render the posts whose key changed (Workspace.draft) into .expost/preview/NAME/PID-N/
      -> State: the new page, its claims' verdicts, progress and errors, pushed to the open pages

A post whose inputs did not change is not rendered again; a figure whose data did not change is not
redrawn (the render stage's own caches). A failed run or a template error is shown above the last
good render, and the next change that fixes it recovers. Nothing here writes publish/.
All of this runs on the calling (main) thread: the render's time limit uses signals, and runs fork.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from expost.errors import ExpostError
from expost.files import signature
from expost.workspace import Progress, Workspace

POLL_S = 0.1  # how often the workspace's files are stat'ed (a few dozen stats: microseconds)
KEEP = 2  # renders kept per post: the page may still be reading the one before the latest


@dataclass
class PostView:
    """What the pages know of one post: the last good render and the latest attempt's problem."""

    name: str
    gen: int = 0  # which render the page shows; 0 before the first good one
    page: str | None = None  # post.html of the last good render
    folder: Path | None = None  # its folder (figures, post.md, manifest.json)
    claims: list[dict] = field(default_factory=list)  # from its manifest: verdict, k of n per claim
    error: str | None = None  # why the latest attempt did not render (file:line first)
    key: str | None = None  # the render key of the last good render

    def public(self) -> dict:
        return {"gen": self.gen, "error": self.error, "claims": self.claims}


class State:
    """Shared between the session (the one writer) and the server's threads (readers).
    `version` goes up on every change; `wait` blocks a reader until it does."""

    def __init__(self):
        self.cond = threading.Condition()
        self.version = 0
        self.posts: dict[str, PostView] = {}
        self.progress = {"total": 0, "done": 0, "failed": 0, "running": [], "busy": False}
        self.error: str | None = None  # a problem of the whole workspace (expost.toml, templates/)

    def changed(self, **progress) -> None:
        """Tell the readers something changed (after updating `progress` with these items)."""
        with self.cond:
            self.progress.update(progress)
            self.version += 1
            self.cond.notify_all()

    def page(self, name: str) -> tuple[int, str | None, Path | None]:
        """(gen, post.html, folder) of a post's last good render, read together."""
        with self.cond:
            view = self.posts.get(name)
            return (view.gen, view.page, view.folder) if view else (0, None, None)

    def snapshot(self) -> dict:
        with self.cond:
            return {"version": self.version, "error": self.error, "progress": dict(self.progress),
                    "posts": {n: v.public() for n, v in self.posts.items()}}

    def wait(self, version: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.version != version, timeout)
            return self.version


class _Observer(Progress):
    """Run progress into the State: runs done of total, and which are out at a worker."""

    def __init__(self, state: State):
        self.state = state

    def started(self, total: int) -> None:
        self.state.changed(total=total, done=0, failed=0, running=[])

    def submitted(self, runs) -> None:
        self.state.changed(running=self.state.progress["running"] + [r.title for r in runs])

    def finished(self, outcome) -> None:
        p = self.state.progress
        label = outcome.run.title
        self.state.changed(done=p["done"] + 1, failed=p["failed"] + (not outcome.ok),
                           running=[r for r in p["running"] if r != label])


def watched_files(root: Path) -> dict[str, tuple]:
    """Every file the posts are built from, with its stat signature (size, mtime, ctime, inode:
    an edit that restores the mtime still changes the ctime)."""
    out = {}
    for folder in ("experiments", "templates"):
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            for name in filenames:
                path = os.path.join(dirpath, name)
                out[path] = signature(path)
    toml = root / "expost.toml"
    out[str(toml)] = signature(toml)
    return out


class Session:
    """The watch-run-render loop over one workspace (`names`: the posts to preview, () for all)."""

    def __init__(self, root: Path, names=(), sel=None, *, jobs: int | None = None, timeout: float | None = None,
                 log: Callable[[str], None] = lambda line: None):
        self.root = Path(root)
        self.names = tuple(names)
        self.sel = sel
        self.jobs, self.timeout = jobs, timeout
        self.log = log
        self.state = State()
        self.observer = _Observer(self.state)
        self.seen: dict[str, tuple] | None = None
        try:  # the pages of the posts exist (waiting) from the start, before the first update
            self.state.posts = {n: PostView(n) for n in self._post_names(Workspace(self.root))}
        except ExpostError:
            pass  # the first update shows the problem

    @staticmethod
    def warm() -> None:
        """Import now what every run and render would import: workers forked from this process
        start with torch (and torch.optim's lazily imported torch._dynamo, about 1 s) in place."""
        import matplotlib.backends.backend_agg  # noqa: F401
        try:
            import torch
            import torch._dynamo  # noqa: F401
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        except ImportError:
            pass

    # --- the loop ---------------------------------------------------------------------------------

    def poll(self) -> bool:
        """Whether any watched file changed since the last call (True the first time)."""
        now = watched_files(self.root)
        changed = now != self.seen
        self.seen = now
        return changed

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Update now, then after every change, until `stop` is set (or Ctrl-C)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if self.poll():
                self.update()
                continue  # files edited while it updated are seen at once
            stop.wait(POLL_S)

    def update(self) -> None:
        """One pass: plan every post, run what is missing, render what changed."""
        t0 = time.perf_counter()
        state = self.state
        state.changed(busy=True)
        try:
            ws = Workspace(self.root, progress=self.observer)  # expost.toml is read again
            names = self._post_names(ws)
            state.error = None
        except ExpostError as e:
            state.error = str(e)
            self.log(f"error: {e}")
            return self._idle()
        sel = self.sel or ws.selection()
        with state.cond:
            for name in names:
                state.posts.setdefault(name, PostView(name))
        for name in names:
            view = state.posts[name]
            try:
                self._update_post(ws, name, view, sel)
            except ExpostError as e:
                view.error = str(e)
            except Exception:  # a bug of ours must not end the preview: show it, go on watching
                view.error = "internal error (please report it):\n" + traceback.format_exc()
            state.changed()
            if view.error:
                self.log(f"{name}: {view.error}")
        for gone in set(state.posts) - set(names):
            del state.posts[gone]
        self._idle()
        self.log(f"updated in {time.perf_counter() - t0:.2f} s")

    def _idle(self) -> None:
        self.state.changed(busy=False, running=[])

    def _post_names(self, ws: Workspace) -> list[str]:
        from expost.posts.post import SUFFIX, discover, find_posts

        if self.names:
            find_posts(ws.layout.templates_dir, self.names)  # a clear error for a name with no template
            return list(self.names)
        return [p.name[: -len(SUFFIX)] for p in discover(ws.layout.templates_dir)]

    def _update_post(self, ws: Workspace, name: str, view: PostView, sel) -> None:
        from expost import spine

        pp = ws.posts((name,), sel)[0]
        key = spine.render_key(ws.layout, pp, spine.command_for(pp.post, sel))
        if key == view.key and view.error is None:
            return  # nothing it reads changed
        report = ws.run_missing([pp], sel, jobs=self.jobs, timeout=self.timeout)
        if report.failures:
            view.error = "\n".join(_failure(ws, o) for o in report.failures)
            return
        self._render(ws, pp, sel, view, key)

    def _render(self, ws: Workspace, pp, sel, view: PostView, key: str) -> None:
        folder = ws.layout.cache.preview(pp.post.name)
        out = folder / f"{os.getpid()}-{view.gen + 1}"  # two previews of one workspace never share one
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        try:
            ws.draft(pp, sel, out)
            page = (out / "post.html").read_text(encoding="utf-8")
            claims = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("claims", [])
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        with self.state.cond:
            view.page, view.folder, view.claims, view.key, view.error = page, out, claims, key, None
            view.gen += 1
        _prune(folder, view.gen)


def _prune(folder: Path, gen: int) -> None:
    """Remove this preview's renders older than the latest KEEP, and those of previews that ended."""
    for old in folder.iterdir():
        pid, _, n = old.name.partition("-")
        if not (pid.isdigit() and n.isdigit()):
            continue
        if int(pid) == os.getpid():
            if not gen - KEEP < int(n) <= gen:
                shutil.rmtree(old, ignore_errors=True)
        elif not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _failure(ws: Workspace, outcome) -> str:
    """One failed run as the page shows it: the experiment's file:line where it raised (from the
    traceback in its log), the error, and the log's path."""
    where = ""
    try:
        text = Path(outcome.log).read_text(encoding="utf-8", errors="replace") if outcome.log else ""
    except OSError:
        text = ""
    experiments = str(ws.layout.experiments_dir)
    frames = [(f, line) for f, line in _FRAME.findall(text) if f.startswith(experiments)]
    if frames:
        where = f"{ws.layout.rel(Path(frames[-1][0]))}:{frames[-1][1]}: "
    log = f" (log: {outcome.log})" if outcome.log else ""
    return f"{where}{outcome.run.title} failed: {outcome.error}{log}"

