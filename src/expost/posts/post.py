"""Posts: `templates/NAME.md.j2` with front matter. Read statically (no torch, no matplotlib).

    ---
    title: Multi-component learning and S-curves
    summary: One line saying what the post shows.
    experiments: [scurves]
    tags: [interpretability, toy models]
    ---
    markdown with Jinja helpers...

Templates starting with `_` are shared macros; `layout.md.j2` (if present) overrides the
package's layout. Neither is a post.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from expost.errors import TemplateError

if TYPE_CHECKING:
    from expost.runs.plan import PlannedRun
    from expost.runs.spec import Spec

SUFFIX = ".md.j2"
LAYOUT = f"layout{SUFFIX}"  # wraps every post; a workspace's own overrides the package's
PACKAGE_LAYOUTS = Path(__file__).parent.parent / "layouts"  # the package's templates (searched after templates/)
REQUIRED = ("title", "summary", "experiments")
OPTIONAL = ("tags", "seeds", "profile", "fold")
FOLDABLE = ("tables", "reproducibility")  # fold: [...] puts these in LessWrong's `+++` collapsible sections
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class Post:
    name: str
    path: Path
    title: str
    summary: str
    experiments: list[str]
    tags: list[str] = field(default_factory=list)
    seeds: int | None = None
    body_offset: int = 0  # lines taken by the front matter (kept blank so Jinja line numbers match)
    profile: str | None = None  # front matter profile: every experiment of the post runs under it
    fold: tuple[str, ...] = ()  # front matter fold: what goes into collapsible sections (FOLDABLE)


@dataclass
class PostPlan:
    """A post and what it is built from: its experiments' static specs and planned runs."""

    post: Post
    specs: dict[str, Spec]  # static specs
    plans: dict[str, list[PlannedRun]]
    profiles: dict[str, str | None] = field(default_factory=dict)  # the profile each experiment runs under

    @property
    def runs(self) -> list[PlannedRun]:
        return [r for rs in self.plans.values() for r in rs]


def check_name(name: str, what: str = "post") -> str:
    """Names become file and folder names: no path separators, no traversal."""
    if not NAME_RE.match(name or ""):
        raise TemplateError(f"{what} name {name!r} is not allowed: use letters, digits, '-' and '_' "
                            "(no slashes, no leading dot)")
    return name


def discover(templates_dir: Path) -> list[Path]:
    if not templates_dir.is_dir():
        return []
    return sorted(p for p in templates_dir.glob(f"*{SUFFIX}")
                  if not p.name.startswith("_") and p.name != LAYOUT)


def _value(path: Path, lineno: int, key: str, text: str):
    text = text.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise TemplateError(f"{path.name}:{lineno}: front matter {key}: unclosed list. Write {key}: [a, b]")
        return [_scalar(x) for x in text[1:-1].split(",") if x.strip()]
    return _scalar(text)


def _scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def split_front_matter(path: Path, text: str) -> tuple[dict, str, int]:
    """(front matter, body with the front matter lines blanked, number of front matter lines)."""
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise TemplateError(f"{path.name}:1: missing front matter. Start the file with a '---' line, "
                            f"then title:, summary:, experiments: [...], then '---'")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise TemplateError(f"{path.name}:1: front matter is not closed. Add a '---' line after it") from None
    meta: dict = {}
    for i in range(1, end):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise TemplateError(f"{path.name}:{i + 1}: front matter line {line!r} is not 'key: value'")
        if key not in REQUIRED + OPTIONAL:
            raise TemplateError(f"{path.name}:{i + 1}: unknown front matter key {key!r}; "
                                f"use {', '.join(REQUIRED + OPTIONAL)}")
        if key in meta:
            raise TemplateError(f"{path.name}:{i + 1}: front matter key {key!r} appears twice; keep one {key}: line")
        meta[key] = _value(path, i + 1, key, rest)
    body = "\n" * (end + 1) + "\n".join(lines[end + 1:])
    return meta, body, end + 1


def load_post(path: Path) -> Post:
    path = Path(path)
    name = path.name[: -len(SUFFIX)]
    check_name(name)
    if not path.resolve().is_relative_to(path.parent.resolve()):
        raise TemplateError(f"{path.name} is a link to {path.resolve()}, outside {path.parent.name}/; "
                            "copy the file there instead of linking to it")
    meta, _, offset = split_front_matter(path, path.read_text())
    for key in REQUIRED:
        if key not in meta or meta[key] in ("", []):
            raise TemplateError(f"{path.name}: front matter needs {key!r}; add a line '{key}: ...'")
    exps = meta["experiments"]
    if isinstance(exps, str):
        exps = [exps]
    exps = [str(e) for e in exps]
    for e in exps:
        if not NAME_RE.match(e):
            raise TemplateError(f"{path.name}: front matter experiments: {e!r} is not an experiment name; "
                                "name files of experiments/ without '.py' (no slashes), e.g. experiments: [scurves]")
        if exps.count(e) > 1:
            raise TemplateError(f"{path.name}: front matter experiments: {e!r} is listed twice; list each experiment once")
    tags = meta.get("tags", [])
    seeds = meta.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise TemplateError(f"{path.name}: front matter seeds: {seeds!r} is not a positive integer; "
                            "write seeds: 10 (or remove the line to use each experiment's SEEDS)")
    profile = meta.get("profile")
    if profile is not None and (not isinstance(profile, str) or not profile.isidentifier()):
        raise TemplateError(f"{path.name}: front matter profile: {profile!r} is not a profile name; write "
                            "profile: cpu (a name in each experiment's PROFILES), or remove the line")
    fold = meta.get("fold", [])
    fold = [fold] if isinstance(fold, str) else fold
    if not isinstance(fold, list) or any(f not in FOLDABLE for f in fold):
        raise TemplateError(f"{path.name}: front matter fold: {meta.get('fold')!r}; write fold: [tables, "
                            "reproducibility] (either or both: long seed tables and the reproducibility section "
                            "go into collapsible sections), or remove the line")
    return Post(name, path, str(meta["title"]), str(meta["summary"]), exps,
                [str(t) for t in (tags if isinstance(tags, list) else [tags])], seeds, offset, profile, tuple(fold))


def find_posts(templates_dir: Path, names=()) -> list[Post]:
    paths = {p.name[: -len(SUFFIX)]: p for p in discover(templates_dir)}
    for n in names:
        check_name(n)
        if n not in paths:
            raise TemplateError(f"no post {n!r} in templates/ (expected templates/{n}{SUFFIX}). "
                                f"Posts: {', '.join(paths) or '(none)'}; create one with `expost new post {n}`")
    return [load_post(paths[n]) for n in (names or paths)]
