"""Where things live: every path under a workspace and under its cache (`.expost/`).

    experiments/ templates/ expost.toml          the inputs
    publish/NAME/  publish/published.json        the committed output
    .expost/ (or $EXPOST_CACHE_DIR):
        runs/<key[:2]>/<key>/   one cached run (result.json and float32 .npy series)
        index/<experiment>.json the last key per (sweep point, seed): powers --explain
        index/<experiment>.parts.json  the code parts of recent keys: --explain names what changed
        logs/<experiment>/      output and traceback of failed runs
        claims/<experiment>.json the last verdicts of `expost check`
        renders/<post>.json     the stamp of a post's last render
        figures/<key[:2]>/<key> a drawn figure's bytes (behind their sha256), by all that decides them
        verdicts/<key[:2]>/<key> claim verdicts by their inputs (never an evaluation in which one erred)
        specs.marshal           static specs remembered by the stats of their files
        preview/<post>/<pid>-<n>/ `expost preview`'s renders (never publish/)
        diff/<post>/            `expost diff`'s side-by-side images of the figures that changed
        locks/  corrupt/        per-key locks; corrupt entries set aside
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from expost.errors import WorkspaceError

CACHE_ENV = "EXPOST_CACHE_DIR"


@dataclass(frozen=True)
class CacheLayout:
    """The paths inside the cache folder."""

    root: Path

    def entry(self, key: str) -> Path:
        return self.root / "runs" / key[:2] / key

    def index(self, experiment: str) -> Path:
        return self.root / "index" / f"{experiment}.json"

    def index_parts(self, experiment: str) -> Path:
        """The parts of the code key (runs/reach.py) of recent source hashes: names what changed."""
        return self.root / "index" / f"{experiment}.parts.json"

    def log(self, experiment: str, label: str, seed: int) -> Path:
        safe = "".join(c if c.isalnum() or c in "=.,-_" else "_" for c in label)[:120]
        return self.root / "logs" / experiment / f"{safe}-seed{seed}.log"

    def claims(self, experiment: str) -> Path:
        return self.root / "claims" / f"{experiment}.json"

    def render_stamp(self, post: str) -> Path:
        return self.root / "renders" / f"{post}.json"

    def figure(self, key: str) -> Path:
        """A drawn figure, by freshness.figure_key: a prose-only edit copies it instead of drawing."""
        return self.root / "figures" / key[:2] / key

    def verdicts(self, key: str) -> Path:
        """Claim verdicts, by freshness.verdicts_key: a render that reuses them imports no experiment."""
        return self.root / "verdicts" / key[:2] / key

    @property
    def specs_store(self) -> Path:
        return self.root / "specs.marshal"

    def lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    @property
    def corrupt(self) -> Path:
        return self.root / "corrupt"

    def preview(self, post: str) -> Path:
        """`expost preview`'s renders of a post: PID-N, the Nth render of the preview process PID."""
        return self.root / "preview" / post

    def diff(self, post: str) -> Path:
        """`expost diff`'s images of a post's changed figures (before | after | changed pixels);
        replaced by each diff of that post that does not name --out."""
        return self.root / "diff" / post


@dataclass(frozen=True)
class Layout:
    """A workspace: a folder with `experiments/` (and usually `templates/`); every path in it."""

    root: Path
    settings: dict = field(default_factory=dict)

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def publish_dir(self) -> Path:
        path = self.root / "publish"
        if path.exists() and not path.is_dir():
            raise WorkspaceError(f"publish: {path} is a file, so posts cannot be written into publish/. "
                                 "Fix: move or delete that file; expost creates the publish/ folder itself")
        return path

    @property
    def cache_dir(self) -> Path:
        return cache_dir(self.root)

    @property
    def cache(self) -> CacheLayout:
        return CacheLayout(self.cache_dir)

    def post_dir(self, post: str) -> Path:
        return self.publish_dir / post

    @property
    def published_json(self) -> Path:
        """Where each post was published (gist id, commit, raw URLs)."""
        return self.publish_dir / "published.json"

    @property
    def settings_file(self) -> Path:
        return self.root / "expost.toml"

    def rel(self, path: Path) -> str:
        """A path as shown to users and written to manifests: relative to the workspace."""
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def cache_dir(root: Path) -> Path:
    """The one place that decides where the cache lives; EXPOST_CACHE_DIR overrides it."""
    env = os.environ.get(CACHE_ENV)
    path = Path(env).resolve() if env else root / ".expost"
    for folder in (path, *path.parents):  # the nearest existing one must be a folder
        if folder.exists():
            if not folder.is_dir():
                how = f"{CACHE_ENV}={env}" if env else f"{path}"
                raise WorkspaceError(f"cache folder {how}: {folder} is a file, not a folder. Fix: "
                                     + (f"point {CACHE_ENV} at a folder (or unset it)" if env
                                        else "move or delete that file; expost creates the cache folder itself"))
            break
    return path


def find_workspace(start: Path | None = None, explicit: Path | None = None) -> Layout:
    """The workspace named by --workspace, or the nearest folder upwards holding experiments/."""
    if explicit is not None:
        root = Path(explicit).resolve()
        if not (root / "experiments").is_dir():
            raise WorkspaceError(
                f"--workspace {explicit}: no experiments/ folder there. "
                "Point --workspace at a folder holding experiments/, or create one with `expost new workspace`."
            )
        return Layout(root, load_settings(root))
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments").is_dir():
            return Layout(folder, load_settings(folder))
    raise WorkspaceError(
        f"no workspace found: neither {here} nor any folder above it holds experiments/. "
        "cd into a workspace, pass --workspace PATH, or create one with `expost new workspace PATH`."
    )


def load_settings(root: Path) -> dict:
    """Optional expost.toml: image base URL, raw URL template, render_timeout and the [executor]
    table (checked here, before any run, so a bad value never waits for a sweep to finish)."""
    path = Layout(root).settings_file
    if not path.exists():
        return {}
    try:
        settings = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise WorkspaceError(f"{path.name}: invalid TOML ({e}). Fix the file or remove it.") from None
    timeout = settings.get("render_timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise WorkspaceError(f"expost.toml: render_timeout = {timeout!r} is not a positive number of seconds; "
                             "write render_timeout = 60")
    profile = settings.get("profile")
    if profile is not None and (not isinstance(profile, str) or not profile.isidentifier()):
        raise WorkspaceError(f"expost.toml: profile = {profile!r} is not a profile name; write profile = \"cpu\" "
                             "(used by every experiment whose PROFILES has it)")
    if "executor" in settings:
        from expost.runs.cluster import parse_table

        parse_table(settings["executor"])  # [executor]: where runs execute (runs/cluster.py)
    return settings
