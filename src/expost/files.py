"""File primitives every stage shares: atomic writes, content hashes, locks, and the stat
signature that decides when a file must be read again (git's index rules)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

# As git does for its index: a file modified less than this before a record of its stats was
# written may change again within the same timestamp tick, so its stats alone are not trusted.
RACY_NS = 2_000_000_000


def signature(path) -> tuple | None:
    """What a stat says about a file's contents: size, mtime, ctime, inode (None when absent).
    ctime cannot be set by a user, so an in-place edit that restores size and mtime still shows."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def trusted(sig: tuple | None, recorded: tuple | None, written_ns: int) -> bool:
    """Does `sig` (now) vouch for the contents recorded at `written_ns` with signature `recorded`?
    Not when it differs, nor when its mtime is less than RACY_NS before the record (git's racy rule:
    a write in the same timestamp tick as the record would not show; ctime is compared, not aged)."""
    if sig != recorded:
        return False
    return sig is None or sig[1] <= written_ns - RACY_NS


# Errors of the disk rather than of the code: they end a command with one line, never a traceback.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_problem(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_ERRNOS


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new bytes, never half of them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; figures and publish/published.json are published
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def write_sealed(path: Path, data: bytes) -> None:
    """Write `data` behind its own sha256 (one line of hex), atomically: `read_sealed` then serves
    the bytes only while they are intact, so a truncated or damaged file is never passed on."""
    atomic_write(path, hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def read_sealed(path: Path) -> bytes | None:
    """The bytes `write_sealed` stored, or None when the file is missing, unreadable or damaged."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    seal, data = raw[:64], raw[65:]
    if raw[64:65] != b"\n" or hashlib.sha256(data).hexdigest().encode() != seal:
        return None
    return data


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock (flock) held for the block; released if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
