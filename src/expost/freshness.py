"""Freshness: every key and stamp that decides whether a run or a post is stale, in one place.

- A run's key: the code a run computes with (what `run` reaches, see runs/reach.py), the
  resolved config, the seed and a coarse environment fingerprint (`run_key`, `env_fingerprint`).
- A static spec is remembered by the stat signatures of every file that decides it (`StaticSpecs`).
- A drawn figure's key (`figure_key`) and a set of claim verdicts' key (`verdicts_key`): what
  was drawn or evaluated, on which exact cached records, by which code, with which packages.
- A post's key (`post_key`): every template it reads at any depth, its run keys and experiment
  sources, expost's own code, the versions of every installed package that decides the bundle's
  bytes, the settings, and the published record. Its stamp (`PostStamp`) remembers the key and
  what publish/NAME held after the render.

Stat fast paths follow git's index rules (files.signature / files.trusted: size, mtime, ctime,
inode, and the racy-timestamp rule); where they cannot vouch for a file, it is read and hashed.
Nothing here imports torch, numpy, jinja2 or matplotlib: a no-op build runs all of it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import marshal
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import quote

from expost import RESULT_FORMAT, __version__, numerics
from expost.files import atomic_write, atomic_write_text, sha256_file, signature, trusted
from expost.layout import Layout
from expost.posts.post import LAYOUT, PACKAGE_LAYOUTS

EXPOST_ROOT = Path(__file__).parent

# --- keys ---------------------------------------------------------------------------------------

def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def run_key(experiment: str, source_hash: str, config_hash: str, seed: int, env_hash: str) -> str:
    return digest({"experiment": experiment, "source": source_hash, "config": config_hash, "seed": seed,
                   "env": env_hash})


def _minor(dist: str) -> str:
    """major.minor of an installed package, without importing it (torch takes seconds to import)."""
    version = installed_versions().get(_normal(dist))
    if version is None and importlib.util.find_spec(dist) is None:
        return "none"
    if version is None:
        return "unknown"
    return ".".join(version.split("+")[0].split(".")[:2])


def env_fingerprint(device: str = "cpu") -> dict:
    """Coarse environment: what could change a run's numbers. Read without importing torch."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "torch": _minor("torch"),
        "numpy": _minor("numpy"),
        "device": device.split(":")[0],
        "machine": os.uname().machine,  # what platform.machine() returns on POSIX, without importing it
        "format": RESULT_FORMAT,
        # the CPU kernels torch is told to use (expost.numerics): results made with others are others
        "cpu_kernels": ",".join(os.environ.get(v, "native") for v in numerics.PINNED),
    }


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    """name -> version of every distribution on sys.path, the first found winning (as imports do),
    read from the names of *.dist-info folders: one listdir per path entry, nothing imported."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info"):
                dist, _, version = n[: -len(".dist-info")].partition("-")
                found.setdefault(_normal(dist), version)
    return found


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of expost's own code: a new caveat wording or figure style re-renders every post."""
    h = hashlib.sha256()
    for p in sorted(EXPOST_ROOT.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".j2", ".tmpl", ".css") and "__pycache__" not in p.parts:
            h.update(p.relative_to(EXPOST_ROOT).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def figure_key(drawing: dict) -> str:
    """A figure's bytes are decided by what is drawn (the drawing function, or an experiment's own
    figure function by every byte of its files; each argument, arrays by the digest of their exact
    bytes, results by the sha256 of each cache record) and by what draws it: `made_by`."""
    return digest({"figure": drawing, **made_by()})


def verdicts_key(experiment: str, file_hash: str, selection: dict, planned_seeds: int, records: dict) -> str:
    """Claim verdicts are decided by every byte of the experiment's files (CLAIMS included), the
    selection and the planned seeds (missing seeds make a verdict inconclusive), the exact cache
    records evaluated, and `made_by` (claims are user code: any installed package may matter)."""
    return digest({"verdicts": experiment, "file": file_hash, "selection": selection, "planned_seeds": planned_seeds,
                   "records": records, **made_by()})


def made_by() -> dict:
    """What decides a derived result besides its inputs: expost's code, the python, and the version
    of every installed distribution (user figure functions and claims may import any of them)."""
    return {"code": code_hash(), "python": sys.version, "packages": installed_versions()}


# --- static specs -------------------------------------------------------------------------------

class StaticSpecs:
    """runs.spec.load_static, remembered in the cache by the stat signatures of every file that
    decides it, so a no-op build parses and hashes no source (a file git's rules cannot vouch for
    is read again)."""

    VERSION = 7  # 5: spec fields may be Python over constants (runs/spec_eval.py); 6: PROFILES; 7: PROFILES
    # kept in the record (6 lost them whenever the remembered spec was used), LABELS

    def __init__(self, ws: Layout):
        self.path = ws.cache.specs_store

    def load(self, paths: list[Path]) -> list:
        from expost.runs.spec import from_static_record, load_static, static_inputs, static_record

        entries = self._read()
        changed = False
        specs = []
        for path in paths:
            entry = entries.get(str(path))
            if entry is not None and self._fresh(entry):
                specs.append(from_static_record(path, entry[2]))
                continue
            written = time.time_ns()
            before = [(str(p), signature(p)) for p in static_inputs(path)]
            spec = load_static(path)  # raises SpecError for a bad spec: nothing is remembered
            entries[str(path)] = (written, before, static_record(spec))
            changed = True
            specs.append(spec)
        if changed:
            try:
                atomic_write(self.path, marshal.dumps((self.VERSION, sys.version, entries)))
            except OSError:  # a read-only cache still works, only slower
                pass
        return specs

    def _read(self) -> dict:
        try:
            version, python, entries = marshal.loads(self.path.read_bytes())
        except (OSError, EOFError, ValueError, TypeError):
            return {}
        return entries if (version, python) == (self.VERSION, sys.version) and isinstance(entries, dict) else {}

    @staticmethod
    def _fresh(entry) -> bool:
        written, inputs, _ = entry
        return all(trusted(signature(name), sig, written) for name, sig in inputs)


# --- why a run is (not) cached ------------------------------------------------------------------

def explain(cache, runs: list, parts: dict | None = None) -> list[tuple]:
    """(run, why) for each planned run of one experiment: cached, or why it must run. With the
    experiment's code parts, a changed source names what changed ("source changed: `train`")."""
    if not runs:
        return []
    index = cache.read_index(runs[0].experiment)
    known_parts = cache.read_parts(runs[0].experiment) if parts else {}
    known_points = {slot.split("|")[0] for slot in index}
    out = []
    for run in runs:
        if cache.has(run.key):
            out.append((run, "cached"))
            continue
        prev = index.get(run.slot)
        if prev is None:
            point = run.slot.split("|")[0]
            reason = "never run" if not index else "new seed" if point in known_points else "new config"
        else:
            reasons = [label for field_, label in (("source", "source changed"), ("config", "config changed"),
                                                   ("env", "environment changed"))
                       if prev.get(field_) != getattr(run, f"{field_}_hash")]
            before = known_parts.get(prev.get("source"))
            if "source changed" in reasons and before is not None:
                reasons[0] = f"source changed: {code_changes(before, parts)}"
            if not reasons:
                reasons = ["failed last time" if prev.get("status") == "failed" else "cache entry missing or corrupt"]
            reason = ", ".join(reasons)
        out.append((run, reason))
    return out


def code_changes(before: dict, now: dict) -> str:
    """What differs between two sets of code parts, for people: "`train` changed, `LR` added"."""
    def name(part: str) -> str:
        return part.split(".", 1)[1] if "." in part else part

    out = [f"`{name(p)}` changed" for p in now if p in before and before[p] != now[p]]
    out += [f"`{name(p)}` added" for p in now if p not in before]
    out += [f"`{name(p)}` removed" for p in before if p not in now]
    return ", ".join(out) or "the declared output kinds"


# --- posts --------------------------------------------------------------------------------------

_TAG = re.compile(r"\{%-?\s*(include|import|extends|from)\s+(.*?)-?%\}", re.S)
_STRING = r"""(?:"[^"\\]*"|'[^'\\]*')"""
_STATIC_REF = re.compile(rf"""\s*(?P<one>{_STRING})|\s*\[(?P<many>\s*{_STRING}(?:\s*,\s*{_STRING})*\s*,?\s*)\]""")
_TAIL = re.compile(r"\s*(?:as\s+\w+|import\s+.*|ignore\s+missing(?:\s+with(?:out)?\s+context)?|"
                   r"with(?:out)?\s+context)?\s*(?:with(?:out)?\s+context\s*)?$", re.S)


def referenced_templates(source: str) -> list[str] | None:
    """Names of the templates a Jinja source includes, imports or extends, or None when one of
    them is not a string literal (a name computed at render time: any template may be read)."""
    names: list[str] = []
    for m in _TAG.finditer(source):
        ref = _STATIC_REF.match(m.group(2))
        if ref is None or not _TAIL.match(m.group(2)[ref.end():]):
            return None
        names += [s[1:-1] for s in re.findall(_STRING, ref.group("one") or ref.group("many"))]
    return names


def template_files(ws: Layout, post_path: Path) -> list[Path]:
    """Every template file a post's render can read, at any depth and with any suffix: its own,
    the layout, and what they include, import or extend (all of templates/ and the package's
    layouts when a name is computed at render time)."""
    folders = [ws.templates_dir, PACKAGE_LAYOUTS]

    def everything() -> list[Path]:
        return [p for f in folders for p in sorted(f.rglob("*")) if p.is_file()]

    def resolve(name: str) -> Path | None:
        """As the template loader finds a name; None for one it refuses (outside the folders)."""
        for folder in folders:
            candidate = folder / name
            if candidate.is_file() and candidate.resolve().is_relative_to(folder.resolve()):
                return candidate
        return None

    seen: list[Path] = []
    todo = [Path(post_path), resolve(LAYOUT)]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.append(path)
        try:
            names = referenced_templates(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if names is None:
            return list(dict.fromkeys([*seen, *everything()]))
        for name in names:
            found = resolve(name)
            if found is None:  # missing or refused: the render fails; the name is kept in the key
                seen.append(ws.templates_dir / f"missing-{quote(name, safe='')}")
            else:
                todo.append(found)
    return seen


def own_code(root: Path) -> list[Path]:
    """expost's sources and the pyproject.toml beside them, when they lie inside `root` (expost
    developed in the workspace's repository); else nothing (an installed expost: its version and
    code hash are in the manifest)."""
    src = EXPOST_ROOT.resolve()
    if not src.is_relative_to(Path(root).resolve()):
        return []
    project = src.parents[1] / "pyproject.toml"
    return [src] + ([project] if project.is_file() else [])


def post_inputs(ws: Layout, post_path: Path, specs) -> list[Path]:
    """The files a post is built from, in the workspace: its templates and experiment sources."""
    from expost.runs.spec import local_sources

    inputs = [p for p in template_files(ws, post_path) if p.resolve().is_relative_to(ws.root)]
    for spec in specs:
        inputs += [p for p in local_sources(spec.path, spec.path.parent) if p not in inputs]
    return inputs


def post_key(ws: Layout, pp, command: str, published: dict | None) -> str:
    """Hash of everything a post's render reads, expost's own code and the installed packages
    (all of them: any may decide its bytes) included."""
    h = hashlib.sha256(code_hash().encode())
    for p in template_files(ws, pp.post.path):
        name = f"expost:{p.relative_to(EXPOST_ROOT).as_posix()}" if p.is_relative_to(EXPOST_ROOT) else ws.rel(p)
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"(missing)") + b"\0")
    versions = installed_versions()
    h.update(digest({"post": pp.post.name, "version": __version__, "command": command, "published": published,
                     "settings": ws.settings, "python": sys.version,
                     # every installed package: the gist's requirements pin what the experiments
                     # import, and figure functions and claims may import anything
                     "packages": versions,
                     "runs": {e: [r.key for r in rs] for e, rs in sorted(pp.plans.items())},
                     "sources": {e: s.file_hash for e, s in sorted(pp.specs.items())}}).encode())
    return h.hexdigest()


class PostStamp:
    """What the last render of a post wrote: its key, the files of publish/NAME (hashes and stat
    signatures), the git state of its inputs and HEAD at the time."""

    def __init__(self, ws: Layout, post: str):
        self.ws = ws
        self.path = ws.cache.render_stamp(post)
        self.out = ws.post_dir(post)

    def read(self) -> dict | None:
        try:
            stamp = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return stamp if isinstance(stamp, dict) else None

    def write(self, key: str, git: dict, head: str | None, files: dict | None = None,
              stats: dict | None = None) -> None:
        """Remember the render (publish/NAME's hashes and stats, unless the caller has them already);
        with a read-only or full cache the post is only re-rendered next time."""
        stats = tree_stats(self.out) if stats is None else stats
        files = tree_hashes(self.out) if files is None else files
        written = time.time_ns()  # after the stats: a file changed since then shows as changed
        with contextlib.suppress(OSError):
            atomic_write_text(self.path, json.dumps({"key": key, "written": written, "files": files,
                                                     "stats": stats, "head": head, "git": git}, indent=1))

    def fresh(self, key: str, git_now) -> bool:
        """Same key as the last render, publish/NAME still holds exactly what it wrote, and the
        inputs' git state is the recorded one. `git_now()` is asked only when HEAD moved."""
        from expost.gitstate import head

        stamp = self.read()
        if stamp is None or stamp.get("key") != key or not self.out.is_dir():
            return False
        stats = tree_stats(self.out)
        recorded = stamp.get("stats") or {}
        if stats.keys() != recorded.keys():
            return False
        written = stamp.get("written", 0)
        refresh = False
        if not all(trusted(tuple(sig), tuple(recorded[n]) if recorded[n] else None, written)
                   for n, sig in stats.items()):
            if tree_hashes(self.out) != stamp.get("files"):
                return False
            refresh = True  # same bytes, new stats (a checkout, a copy): remember them
        current = head(self.ws.root)
        if current is None or current != stamp.get("head"):
            if stamp.get("git") != git_now():
                return False
            refresh = refresh or current is not None  # HEAD moved without touching the inputs
        if refresh:  # the files are the recorded bytes (trusted or just hashed): only stats and HEAD are new
            self.write(key, stamp.get("git"), current, stamp.get("files"), stats)
        return True


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def tree_stats(folder: Path) -> dict[str, list]:
    return {p.relative_to(folder).as_posix(): list(signature(p) or ()) for p in sorted(folder.rglob("*"))
            if p.is_file()}
