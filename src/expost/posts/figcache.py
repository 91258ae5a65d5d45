"""The figure cache: each drawn figure's bytes, remembered by everything that decides them.

A prose-only edit of a post then copies its figures instead of importing matplotlib (and, for an
experiment's own figure function, the experiment) to draw them again. The key
(freshness.figure_key) covers the drawing function (expost's code, or an experiment's figure
function by every byte of the experiment's files), every argument (arrays by the digest of their
exact bytes, results by the sha256 of each cache record they hold), the format, and what draws
(expost's code, the python, the installed packages). Entries are sealed (files.write_sealed): a
damaged one is drawn again, never served. A cache that cannot be read or written only loses the
speed-up.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np

from expost.files import atomic_write, read_sealed, write_sealed
from expost.freshness import figure_key
from expost.layout import CacheLayout
from expost.runs.results import ResultSet, identity


class Unkeyable(Exception):
    """An argument that no digest vouches for: its figure is drawn every time, never cached."""


def describe(value):
    """A JSON-able stand-in for a drawing argument that changes whenever the value does."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:  # the bytes would be pointers
            raise Unkeyable
        return {"array": value.dtype.str, "shape": list(value.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(value).data).hexdigest()}  # no copy of the bytes
    if isinstance(value, ResultSet):
        found = identity(value)
        if found is None:
            raise Unkeyable
        return {"results": found}
    if isinstance(value, dict):  # in order: the order of conditions decides their colours
        return {"dict": [[describe(k), describe(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [describe(v) for v in value]}
    if value is None or isinstance(value, (str, int, float, bool, np.generic)):
        return [type(value).__name__, repr(value)]
    raise Unkeyable


class FigureCache:
    """Figures by key, under the cache's figures/ (layout.CacheLayout.figure). With read=False
    (--force) every figure is drawn, and the drawings are remembered for next time."""

    def __init__(self, paths: CacheLayout, read: bool = True):
        self.paths, self.read = paths, read

    def key(self, function: str | dict, args: tuple, kwargs: dict, path: Path) -> str | None:
        """The figure's key, or None when an argument cannot be vouched for."""
        try:
            drawing = {"function": function, "args": describe(list(args)),
                       "kwargs": describe(dict(sorted(kwargs.items()))), "format": Path(path).suffix.lower()}
        except Unkeyable:
            return None
        return figure_key(drawing)

    def fetch(self, key: str | None, path: Path) -> bool:
        """Write the remembered bytes of `key` to `path`; False when there are none intact."""
        if key is None or not self.read:
            return False
        data = read_sealed(self.paths.figure(key))
        if data is None:
            return False
        atomic_write(path, data)
        return True

    def store(self, key: str, path: Path) -> None:
        """Remember the figure just drawn at `path` (a read-only or full cache only forgets it)."""
        with contextlib.suppress(OSError):
            write_sealed(self.paths.figure(key), Path(path).read_bytes())
