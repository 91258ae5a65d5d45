"""Cache stage: content-addressed run results on disk, written atomically, checked on read.

An entry (paths: expost.layout.CacheLayout) is a folder holding result.json (scalars, metadata,
the sha256 of each series file) and one float32 .npy per series. result.json carries the sha256
of everything else in it (`record_sha256`), so an edited scalar or flag is caught as a corrupt
series is; an entry without it (written before it existed) cannot be verified and counts as corrupt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from expost.files import atomic_write_text, file_lock, sha256_file
from expost.layout import CacheLayout

RECORD_SHA = "record_sha256"
OUTPUT = "output.txt"  # what a run printed, beside its result
MAX_OUTPUT = 1_000_000  # characters of it kept: the last ones (where the end of a run shows)


ARTIFACTS = "artifacts"  # the files a run wrote to EXPOST_ARTIFACTS, beside its result


def _write_artifacts(folder: Path, files: dict) -> dict:
    digests = {}
    for rel, data in sorted(files.items()):
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"artifact path {rel!r} leaves the run's folder")
        path = folder.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digests[Path(rel).as_posix()] = sha256_file(path)
    return digests


def _bounded(text: str) -> str:
    if len(text) <= MAX_OUTPUT:
        return text
    return f"(the first {len(text) - MAX_OUTPUT} characters of this run's output are left out)\n" + text[-MAX_OUTPUT:]


def record_digest(meta: dict) -> str:
    """sha256 of a result.json's content (all but its own digest), as JSON reads it back."""
    import hashlib

    body = {k: v for k, v in meta.items() if k != RECORD_SHA}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Entry:
    """One cached run: metadata and scalars in memory, series loaded on demand."""

    key: str
    dir: Path
    meta: dict

    @property
    def scalars(self) -> dict:
        return self.meta["scalars"]

    def series(self, name: str):
        import numpy as np

        return np.load(self.dir / f"{name}.npy", allow_pickle=False)


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.paths = CacheLayout(self.root)
        self.quarantined: list[str] = []  # keys of corrupt entries set aside by this instance

    def lock(self, name: str):
        """Serialise work on one run key (or post) across processes: two builds never run it twice."""
        return file_lock(self.paths.lock(name))

    def ensure_writable(self) -> None:
        from expost.errors import WorkspaceError

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise WorkspaceError(f"cache folder {self.root} is not writable ({e.strerror}). "
                                 "Fix: set EXPOST_CACHE_DIR to a writable folder, or fix the permissions") from None

    def remove(self, key: str) -> None:
        """Drop an entry (for --force): renamed away first, so readers never see half of it."""
        d = self.entry_dir(key)
        if d.exists():
            trash = d.with_name(f".{key[:12]}.{os.getpid()}.removed")
            os.rename(d, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def valid(self, key: str) -> bool:
        """Present and intact (checksums verified); a corrupt entry is set aside and counts as missing."""
        return self.has(key) and self.read(key) is not None

    def entry_dir(self, key: str) -> Path:
        return self.paths.entry(key)

    def log_path(self, experiment: str, label: str, seed: int) -> Path:
        return self.paths.log(experiment, label, seed)

    def has(self, key: str) -> bool:
        return (self.entry_dir(key) / "result.json").exists()

    def write(self, key: str, meta: dict, series: dict, output: str | None = None,
              artifacts: dict | None = None) -> None:
        """Write an entry atomically: build it in a temp dir, then rename into place. `output` (what
        the run printed) and `artifacts` (the files it wrote to EXPOST_ARTIFACTS: relative path ->
        bytes, under artifacts/) are kept beside it, their sha256 in result.json like the series'."""
        import numpy as np

        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key[:12]}.", suffix=".tmp"))
        try:
            files = {}
            for name, arr in series.items():
                p = tmp / f"{name}.npy"
                with np.errstate(over="ignore"):  # beyond float32: inf, flagged by convert_outputs
                    arr32 = np.asarray(arr, dtype=np.float32)
                np.save(p, arr32, allow_pickle=False)
                files[name] = sha256_file(p)
            if output is not None:
                (tmp / OUTPUT).write_text(_bounded(output), encoding="utf-8", errors="replace")
                meta = {**meta, "output_sha256": sha256_file(tmp / OUTPUT)}
            if artifacts:
                meta = {**meta, "artifacts_sha256": _write_artifacts(tmp / ARTIFACTS, artifacts)}
            meta = json.loads(json.dumps({**meta, "key": key, "series_sha256": files}))  # as a reader sees it
            meta[RECORD_SHA] = record_digest(meta)
            (tmp / "result.json").write_text(json.dumps(meta, sort_keys=True, indent=1))
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process finished the same key first: same inputs, same result; keep theirs.
                if not (final / "result.json").exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def read(self, key: str) -> Entry | None:
        """The entry, or None when missing or corrupt (a corrupt entry is moved aside)."""
        d = self.entry_dir(key)
        try:
            meta = json.loads((d / "result.json").read_text())
            if meta.get(RECORD_SHA) != record_digest(meta):  # edited (or too old to tell)
                raise ValueError("result.json checksum mismatch")
            for name, digest in meta["series_sha256"].items():
                if sha256_file(d / f"{name}.npy") != digest:
                    raise ValueError(f"checksum mismatch in {name}.npy")
        except FileNotFoundError:
            if d.exists():
                self._quarantine(d)
            return None
        except (ValueError, KeyError, TypeError, AttributeError, OSError):  # not the JSON it wrote
            self._quarantine(d)
            return None
        return Entry(key, d, meta)

    def output(self, key: str) -> str | None:
        """What a cached run printed; None for an entry written without it. A damaged log says so."""
        entry = self.read(key)
        if entry is None or "output_sha256" not in entry.meta:
            return None
        path = entry.dir / OUTPUT
        try:
            ok = sha256_file(path) == entry.meta["output_sha256"]
            return path.read_text(encoding="utf-8", errors="replace") if ok else "(this run's log is damaged)\n"
        except OSError:
            return "(this run's log is missing)\n"

    def artifacts(self, key: str) -> dict[str, Path]:
        """The files a cached run wrote (relative path -> path in the cache), each checked against its
        sha256 here, when asked for (not on every read: checkpoints can be large). A damaged one
        makes the entry corrupt: set aside, so the run runs again."""
        entry = self.read(key)
        if entry is None:
            return {}
        found = {}
        for rel, digest in entry.meta.get("artifacts_sha256", {}).items():
            path = entry.dir / ARTIFACTS / rel
            if not path.is_file() or sha256_file(path) != digest:
                self._quarantine(entry.dir)
                return {}
            found[rel] = path
        return found

    def _quarantine(self, d: Path) -> None:
        bad = self.paths.corrupt
        bad.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(d, bad / f"{d.name}.{os.getpid()}")
        except OSError:
            shutil.rmtree(d, ignore_errors=True)
        self.quarantined.append(d.name)

    # --explain bookkeeping: the last key seen for each (experiment, sweep point, seed)
    def index_path(self, experiment: str) -> Path:
        return self.paths.index(experiment)

    def read_index(self, experiment: str) -> dict:
        try:
            return json.loads(self.index_path(experiment).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def read_parts(self, experiment: str) -> dict:
        """source hash -> {part: digest} for this experiment's recent sources."""
        try:
            data = json.loads(self.paths.index_parts(experiment).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update_parts(self, experiment: str, source: str, parts: dict, keep: int = 20) -> None:
        known = self.read_parts(experiment)
        known.pop(source, None)
        known[source] = parts
        recent = dict(list(known.items())[-keep:])
        atomic_write_text(self.paths.index_parts(experiment), json.dumps(recent, indent=0))

    def update_index(self, experiment: str, records: dict) -> None:
        index = self.read_index(experiment)
        index.update(records)
        atomic_write_text(self.index_path(experiment), json.dumps(index, sort_keys=True, indent=0))
