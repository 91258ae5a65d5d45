"""The two sides of `expost diff`: a post's bundle as committed at a git revision (read with git;
nothing is checked out) or as rendered into a folder.

Only what the diff compares is read: manifest.json (claims, runs, configs), post.md,
figures/*.png and the per-seed numbers. Those come from the bundle's own gist/results-EXP.json
(every run's config, seed, key and scalars, as the post was built); where that file is missing or
does not match the sha256 its manifest records, from the cache by the run keys the manifest
records; where neither has them, the side says so (`missing`), never an empty comparison.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from expost.errors import DiffError


@dataclass(frozen=True)
class RunNumbers:
    """One run's scalars, by the label of its sweep point (as manifests write it) and its seed."""

    label: str
    seed: int
    scalars: dict  # output -> number; None where an optional output was not reached


@dataclass
class Bundle:
    name: str
    where: str  # for people: "HEAD (9f58f96)" or "the working tree"
    manifest: dict
    post_md: str
    figures: dict[str, bytes]  # file name in figures/ -> bytes
    numbers: dict[str, list[RunNumbers]]  # experiment -> its runs' scalars
    missing: dict[str, str] = field(default_factory=dict)  # experiment -> why its numbers are not here
    warnings: list[str] = field(default_factory=list)

    @property
    def experiments(self) -> dict:
        return self.manifest.get("experiments") or {}


# --- git ------------------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60)
    except FileNotFoundError:
        raise DiffError("git is not installed: `expost diff` reads the committed post with git; install git") from None


def resolve(root: Path, rev: str) -> str:
    """The full commit id REV names in the workspace's repository; DiffError naming REV and the fix."""
    if _git(root, "rev-parse", "--show-toplevel").returncode != 0:
        raise DiffError(f"{root} is not in a git repository: `expost diff` compares a post with the post as "
                        "committed at a revision. Put the workspace under git (`git init`, then commit it with "
                        "publish/), or check publish/ without git: `expost build --check`")
    if not rev or rev.startswith("-"):
        raise DiffError(f"REV {rev!r} is not a revision: give a branch, tag or commit id (HEAD, HEAD~1, main)")
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode != 0:
        empty = _git(root, "rev-parse", "--verify", "--quiet", "HEAD").returncode != 0
        raise DiffError(f"REV {rev!r} is not a commit in this repository" + (
            " (it has no commit yet: commit the workspace and publish/ first)" if empty else
            ": give a branch, tag or commit id (HEAD, HEAD~1, main, or an id from `git log`)"))
    return found.stdout.decode().strip()


def committed_posts(root: Path, commit: str) -> list[str]:
    """The posts whose publish/NAME/manifest.json is in `commit`."""
    names = set()
    for path in _listing(root, commit, "publish"):
        parts = path.split("/")
        if len(parts) == 3 and parts[2] == "manifest.json":
            names.add(parts[1])
    return sorted(names)


def _listing(root: Path, commit: str, folder: str) -> list[str]:
    """Every file under `folder` (relative to the workspace) in `commit`, relative to the workspace."""
    done = _git(root, "ls-tree", "-r", "-z", "--name-only", commit, "--", folder)
    if done.returncode != 0:
        raise DiffError(f"git ls-tree {commit[:12]} {folder} failed: {done.stderr.decode().strip()}")
    return [p for p in done.stdout.decode().split("\0") if p]


def read_committed(root: Path, commit: str, rev: str, name: str, cache_dir: Path) -> Bundle:
    """publish/NAME/ as committed at `commit` (which `rev` named)."""
    where = f"{rev} ({commit[:7]})" if rev != commit else commit[:7]
    prefix = f"publish/{name}/"
    files = {p[len(prefix):] for p in _listing(root, commit, prefix.rstrip("/"))}
    if "manifest.json" not in files:
        raise DiffError(f"post {name!r} is not committed at {where}: it has no {prefix}manifest.json. Build and "
                        f"commit the post first (`expost build {name}`, then `git add {prefix}` and `git commit`), "
                        "or name a revision that has it")

    def read(rel: str) -> bytes | None:
        if rel not in files:
            return None
        done = _git(root, "cat-file", "blob", f"{commit}:./{prefix}{rel}")
        if done.returncode != 0:
            raise DiffError(f"cannot read {prefix}{rel} at {where}: {done.stderr.decode().strip()}")
        return done.stdout

    return _bundle(name, where, f"{prefix} at {where}", sorted(files), read, cache_dir, rev)


def read_folder(folder: Path, name: str, where: str, cache_dir: Path) -> Bundle:
    """A bundle rendered into `folder` (the working tree's side)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def read(rel: str) -> bytes | None:
        path = folder / rel
        return path.read_bytes() if path.is_file() else None

    return _bundle(name, where, where, files, read, cache_dir, None)


# --- one bundle -----------------------------------------------------------------------------------


def _bundle(name: str, where: str, shown: str, files: list[str], read: Callable[[str], bytes | None],
            cache_dir: Path, rev: str | None) -> Bundle:
    try:
        manifest = _valid(json.loads(read("manifest.json") or b""))
    except ValueError as e:
        raise DiffError(f"{shown}: manifest.json is not a manifest expost wrote ({e}); rebuild the post with "
                        "`expost build` and commit publish/") from None
    recorded = manifest.get("files") or {}
    warnings = []

    def checked(rel: str) -> bytes | None:
        data = read(rel)
        if data is not None and rel in recorded and hashlib.sha256(data).hexdigest() != recorded[rel]:
            warnings.append(f"{shown}: {rel} differs from the sha256 its manifest records (edited after the "
                            "build?); compared as it is")
        return data

    md = checked("post.md")
    if md is None:
        warnings.append(f"{shown}: no post.md; its prose is compared as empty")
    figures = {rel[len("figures/"):]: checked(rel) for rel in files
               if rel.startswith("figures/") and rel.count("/") == 1}
    numbers, missing = {}, {}
    for exp, info in (manifest.get("experiments") or {}).items():
        labels = {r["key"]: r["config"] for r in info.get("runs", [])}
        rel = f"gist/results-{exp}.json"
        data = read(rel)
        trusted = data is not None and (rel not in recorded or hashlib.sha256(data).hexdigest() == recorded[rel])
        runs = _from_results(data, labels) if trusted else None
        if runs is None:
            runs = _from_cache(cache_dir, info.get("runs", []))
        if runs is None:
            why = "has no" if data is None else "has a damaged (or hand-edited)"
            fix = (f"run them at that revision into this cache: `git worktree add /tmp/expost-rev {rev} && "
                   f"EXPOST_CACHE_DIR={cache_dir} expost --workspace /tmp/expost-rev run {exp}`, then `git worktree "
                   "remove /tmp/expost-rev`") if rev else f"rebuild the post (`expost build {name}`)"
            missing[exp] = (f"{shown} {why} {rel} and the cache lacks some of the runs its manifest lists; to "
                            f"compare {exp}'s numbers, {fix}")
        else:
            numbers[exp] = runs
    return Bundle(name, where, manifest, (md or b"").decode("utf-8", errors="replace"), figures, numbers,
                  missing, warnings)


def _valid(manifest) -> dict:
    """The parts of a manifest the diff reads, in the shapes export writes (ValueError: not so)."""
    def dicts(items, what):
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            raise ValueError(f"{what} is not a list of objects")

    if not isinstance(manifest, dict):
        raise ValueError("not an object")
    dicts(manifest.get("claims", []), "claims")
    experiments = manifest.get("experiments", {})
    if not isinstance(experiments, dict) or not all(isinstance(x, dict) for x in experiments.values()):
        raise ValueError("experiments is not an object of objects")
    for name, info in experiments.items():
        dicts(info.get("runs", []), f"experiments.{name}.runs")
        if not all(isinstance(r.get("key"), str) and isinstance(r.get("config"), str) and isinstance(r.get("seed"), int)
                   for r in info.get("runs", [])):
            raise ValueError(f"experiments.{name}.runs: a run lacks its key, config or seed")
        dicts(info.get("configs", []), f"experiments.{name}.configs")
    if not isinstance(manifest.get("files", {}), dict):
        raise ValueError("files is not an object")
    return manifest


def _from_results(data: bytes, labels: dict) -> list[RunNumbers] | None:
    """gist/results-EXP.json: every run's key, seed and scalars (None: unreadable)."""
    try:
        runs = json.loads(data)["runs"]
        return [RunNumbers(labels.get(r["key"]) or _label(r["config"]), int(r["seed"]), dict(r["scalars"]))
                for r in runs]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _from_cache(cache_dir: Path, runs: list) -> list[RunNumbers] | None:
    """The same numbers from the cache, by the run keys the manifest records (None: some missing)."""
    from expost.runs.cache import Cache

    cache = Cache(cache_dir)
    out = []
    for r in runs:
        entry = cache.read(r["key"]) if cache.has(r["key"]) else None
        if entry is None:
            return None
        out.append(RunNumbers(r["config"], int(r["seed"]), dict(entry.scalars)))
    return out or None


def _label(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(config.items())) or "default"
