"""`expost preview`: a live preview in the browser that reruns and re-renders on save.

    session.Session   watch -> plan -> run what is stale -> render into the cache (the main thread)
    server.PreviewServer   the pages, kept live by Server-Sent Events (threads reading the State)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable


def preview(root: Path, names=(), sel=None, *, port: int = 0, jobs: int | None = None,
            timeout: float | None = None, log: Callable[[str], None] = print,
            ready: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> None:
    """Serve the preview of a workspace's posts until `stop` is set or Ctrl-C (KeyboardInterrupt
    propagates, after the server has stopped; every completed run is cached by then)."""
    from expost.preview.server import PreviewServer
    from expost.preview.session import Session

    session = Session(root, names, sel, jobs=jobs, timeout=timeout, log=log)
    server = PreviewServer(session.state, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name="expost-preview-http")
    thread.start()
    try:
        if ready:
            ready(server.url())
        session.warm()
        session.serve_forever(stop)
    finally:
        server.stop()
