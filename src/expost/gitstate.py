"""Which commit a post's inputs come from: read by the manifest and by the no-op build check."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def git_state(root: Path, inputs: list[Path]) -> dict:
    """The last commit that touched the post's inputs (files or folders), and whether they differ
    from it; when they do, `diff_sha256` identifies the difference (the diff of tracked files and
    the bytes of untracked ones), so two dirty builds from different edits never look alike."""
    rels = [str(p.relative_to(root)) for p in inputs]
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "log", "-1", "--format=%H", "--", *rels], capture_output=True, text=True,
                                timeout=30)
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=all", "--", *rels],
                                capture_output=True, text=True, timeout=30)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        state = {"commit": commit.stdout.strip() or None, "dirty": bool(status.stdout.strip())}
        if state["dirty"]:
            h = hashlib.sha256(subprocess.run([*git, "diff", "HEAD", "--binary", "--", *rels], capture_output=True,
                                              timeout=30).stdout)
            for line in sorted(status.stdout.splitlines()):
                if line.startswith("??"):
                    name = line[3:]
                    h.update(name.encode() + b"\0" + (root / name).read_bytes())
            state["diff_sha256"] = h.hexdigest()
        return state
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def head(root: Path) -> str | None:
    """HEAD's commit id read from .git's files (no subprocess); None when it cannot be read simply."""
    for folder in (root, *root.parents):
        dotgit = folder / ".git"
        if dotgit.is_dir():
            gitdir = dotgit
            break
        if dotgit.is_file():  # a worktree or submodule: follow it
            text = dotgit.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            gitdir = (folder / text[len("gitdir:"):].strip()).resolve()
            break
    else:
        return None
    try:
        ref = (gitdir / "HEAD").read_text().strip()
        if not ref.startswith("ref:"):
            return ref or None
        name = ref[4:].strip()
        common = gitdir
        if (gitdir / "commondir").is_file():
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        for base in (gitdir, common):
            if (base / name).is_file():
                return (base / name).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + name):
                    return line.split()[0]
    except OSError:
        return None
    return None


def init_and_commit(root: Path, message: str) -> tuple[bool, str]:
    """A new workspace under version control, so that its manifests can record a commit: `git init`
    and a first commit (when a git identity is configured). (ok, what happened, for the user)."""
    root = Path(root).resolve()
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                                text=True, timeout=30)
        if inside.returncode == 0:
            top = inside.stdout.strip()
            return True, (f"{root} is inside the git repository at {top}: commit the new files there "
                          "(`git add` and `git commit`) so that manifests record the commit")
        subprocess.run(["git", "init", "-q", str(root)], check=True, capture_output=True, timeout=30)
        subprocess.run(["git", "-C", str(root), "add", "-A"], check=True, capture_output=True, timeout=30)
        done = subprocess.run(["git", "-C", str(root), "commit", "-q", "-m", message], capture_output=True, text=True,
                              timeout=30)
    except FileNotFoundError:
        return False, ("git is not installed: manifests will record no commit, so a post cannot be traced back "
                       "to its inputs; install git, then `git init` and commit the workspace")
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"git init failed ({e}); run `git init` and commit the workspace so manifests record a commit"
    if done.returncode != 0:
        return False, ("initialised a git repository but could not commit (no git identity? set `git config "
                       "user.name` and `user.email`); commit the files yourself, or manifests record no commit")
    return True, "initialised a git repository and committed the new files"
