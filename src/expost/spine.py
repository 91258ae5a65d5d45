"""The spine: a post's way through the stages, top to bottom.

    plan_post      which experiments and runs a post needs (runs.plan)
    (the runs)     runs.runner executes what the cache lacks, called by the front door
    render_to      results -> claims -> render -> HTML -> export, into a staged folder
    build_post     unless fresh: render_to, secret scan, swap into publish/NAME/, stamp

A post is re-rendered only when its key changes (expost.freshness); the up-to-date check reads
no results and imports neither torch nor matplotlib. Outputs are staged in a temporary folder
and swapped into place, so publish/NAME/ is always a complete bundle. No stage calls back up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from expost.runs.cache import Cache
from expost.errors import DiskError, MissingRunsError, PublishError, SpecError
from expost.files import disk_problem
from expost.freshness import PostStamp, own_code, post_inputs, post_key
from expost.gitstate import git_state, head
from expost.runs.plan import Selection, load_specs, plan_runs, profile_of, with_settings
from expost.runs.plan import PlannedRun
from expost.posts.post import Post, PostPlan
from expost.publish.records import image_urls, readable_records
from expost.runs.spec import Spec
from expost.layout import Layout

# Rendering, claims, figures and export are imported inside the functions that use them: the
# up-to-date check of a no-op build needs none of them (nor numpy, jinja2, torch or matplotlib).


def plan_post(ws: Layout, post: Post, sel: Selection, confirm_large: bool = True) -> PostPlan:
    names = {p.stem for p in ws.experiments_dir.glob("*.py")}
    for exp in post.experiments:
        if exp not in names:
            raise SpecError(f"{post.path.name}: front matter experiments: no experiment {exp!r} in experiments/. "
                            f"Available: {', '.join(sorted(n for n in names if not n.startswith('_')))}")
    specs = {s.name: s for s in load_specs(ws, tuple(post.experiments))}
    sel = post_selection(ws, post, sel)
    return PostPlan(post, specs, plan_runs(list(specs.values()), sel, confirm_large),
                    {name: profile_of(spec, sel) for name, spec in specs.items()})


def post_selection(ws: Layout, post: Post, sel: Selection) -> Selection:
    """The selection a post's runs are planned with: its front matter's seeds and profile unless
    the command line gave them, and expost.toml's default profile."""
    return with_settings(replace(sel, seeds=sel.seeds if sel.seeds is not None else post.seeds,
                                 profile=sel.profile if sel.profile is not None else post.profile), ws.settings)


def union_of_runs(pps: list[PostPlan]) -> tuple[list[Spec], dict[str, list[PlannedRun]]]:
    """The experiments and runs that several posts need, each run once."""
    specs: dict[str, Spec] = {}
    plans: dict[str, list[PlannedRun]] = {}
    for pp in pps:
        for name, spec in pp.specs.items():
            specs[name] = spec
            known = {r.key for r in plans.get(name, [])}
            plans.setdefault(name, []).extend(r for r in pp.plans[name] if r.key not in known)
    return list(specs.values()), plans


def command_for(post: Post, sel: Selection) -> str:
    parts = ["expost build", post.name]
    if sel.seeds:
        parts.append(f"--seeds {sel.seeds}")
    parts += [f"--set {k}={v}" for k, v in sel.set.items()]
    parts += [f"--where {k}={v}" for k, v in sel.where.items()]
    if sel.profile:
        parts.append(f"--profile {sel.profile}")
    return " ".join(parts)


def render_key(ws: Layout, pp: PostPlan, command: str) -> str:
    return post_key(ws, pp, command, readable_records(ws).get(pp.post.name))


def _git_state(ws: Layout, pp: PostPlan) -> dict:
    """The git state of what builds the post: its inputs, and expost's own code and pyproject.toml
    when expost is developed inside the workspace's repository (as here): the recorded commit is
    then one whose checkout reproduces the bundle."""
    return git_state(ws.root, post_inputs(ws, pp.post.path, pp.specs.values()) + own_code(ws.root))


def up_to_date(ws: Layout, pp: PostPlan, key: str) -> bool:
    """Same inputs as the last render, and publish/NAME still holds exactly what it wrote."""
    return PostStamp(ws, pp.post.name).fresh(key, lambda: _git_state(ws, pp))


def missing(ws: Layout, pp: PostPlan) -> list[PlannedRun]:
    cache = Cache(ws.cache_dir)
    return [r for r in pp.runs if not cache.has(r.key)]


@dataclass
class Built:
    status: str  # "up to date" | "rendered"
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # claims that could not be evaluated
    git: dict | None = None  # the git state of the post's inputs, as the manifest records it


def render_to(ws: Layout, pp: PostPlan, sel: Selection, command: str, out: Path, fresh: bool = False) -> Built:
    """Render and export the post from the cache into `out` (an empty folder). Never runs anything.
    A claim whose check raised or returned no booleans is shown as such in the post and listed
    in Built.errors. Figures and verdicts whose inputs did not change come from the cache, so an
    experiment is imported only when one of them must be made anew; `fresh` (--force) makes all
    of them anew."""
    from expost.runs import claims as claims_mod
    from expost.runs.results import from_cache
    from expost.runs.verdicts import Imported, judge
    from expost.publish.export import export
    from expost.posts.figcache import FigureCache
    from expost.posts.render import RENDER_SECONDS, Inputs, render

    lacking = missing(ws, pp)
    if lacking:
        shown = "\n".join(f"  {r.title}" for r in lacking[:20])
        more = f"\n  ... and {len(lacking) - 20} more" if len(lacking) > 20 else ""
        raise MissingRunsError(f"post {pp.post.name}: {len(lacking)} run(s) are not in the cache:\n{shown}{more}\n"
                               f"Run them with `expost run {' '.join(pp.specs)}` or `expost build {pp.post.name}`.",
                               lacking)
    rsets, verdicts, claims, seeds = {}, {}, {}, {}
    imported = Imported(pp.specs, sel)  # static specs until a verdict or figure function needs the module
    for name, spec in pp.specs.items():
        runs = pp.plans[name]
        rsets[name] = from_cache(Cache(ws.cache_dir), spec, runs)
        seeds[name] = sorted({r.seed for r in runs})
        verdicts[name], claims[name] = judge(ws.cache, spec, sel, len(seeds[name]), rsets[name], imported, fresh)
    inputs = Inputs(pp.post, pp.specs, rsets, verdicts, seeds, command, claims=claims, load=imported,
                    figure_cache=FigureCache(ws.cache, read=not fresh), profiles=pp.profiles)
    rendered = render(inputs, ws.templates_dir, out, timeout=float(ws.settings.get("render_timeout", RENDER_SECONDS)))
    (out / "post.md").write_text(rendered.markdown, encoding="utf-8")
    from expost.posts.html import post_to_html

    # The forum's repairs first, then the one parse (posts.markdown), as export does for the forum
    # post.md: the page shows what LessWrong will; its figure links stay relative, to be inlined.
    html = post_to_html(rendered.markdown, title=pp.post.title, base_dir=out)
    (out / "post.html").write_text(html, encoding="utf-8")
    git = _git_state(ws, pp)
    exported = export(ws, pp, pp.specs, rsets, verdicts, seeds, command, out, image_urls(ws, pp.post.name, out),
                      sel.device, git)
    warnings = list(exported.warnings)
    if not (git or {}).get("commit"):
        warnings.append("manifest.json records no commit: the workspace is not a git repository, or its inputs "
                        "(experiments/, templates/) were never committed; commit them and build again so the post "
                        "can be traced to them")
    errors = [f"{v.experiment}: claim {v.index} ({v.claim[:60]}){' [' + v.group + ']' if v.group else ''} could not "
              f"be evaluated: {v.detail}" for vs in verdicts.values() for v in vs if v.verdict == claims_mod.ERROR]
    return Built("rendered", warnings, errors, git)


def build_post(ws: Layout, pp: PostPlan, sel: Selection, force: bool = False,
               allow_secrets: bool = False) -> Built:
    """Render into publish/NAME/ unless up to date; `force` renders anyway, drawing every figure
    and evaluating every claim anew (nothing from the figure or verdict cache)."""
    command = command_for(pp.post, sel)
    key = render_key(ws, pp, command)
    if not force and up_to_date(ws, pp, key):
        return Built("up to date")
    try:
        lock = Cache(ws.cache_dir).lock(f"post-{pp.post.name}")  # one writer of publish/NAME/ at a time
        lock.__enter__()
    except OSError:  # a read-only cache: no lock to take, so render unguarded
        lock = None
    try:
        if not force and up_to_date(ws, pp, key):  # another build did it while this one waited
            return Built("up to date")
        return _build_locked(ws, pp, sel, command, key, allow_secrets, fresh=force)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _build_locked(ws: Layout, pp: PostPlan, sel: Selection, command: str, key: str,
                  allow_secrets: bool, fresh: bool = False) -> Built:
    stage = _stage(ws, pp)
    try:
        built = render_to(ws, pp, sel, command, stage, fresh)
        from expost.publish.safety import refuse_secrets

        if not allow_secrets:
            refuse_secrets(stage, f"export of {pp.post.name}")
        _swap(stage, ws.publish_dir / pp.post.name)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        if disk_problem(e):
            raise DiskError.writing(e, ws.rel(ws.publish_dir), f"post {pp.post.name}") from None
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    stamp = PostStamp(ws, pp.post.name)
    if built.errors:  # never "up to date" while a claim cannot be evaluated: the next build says so again
        stamp.path.unlink(missing_ok=True)
    else:
        stamp.write(key, built.git, head(ws.root))
    return built


def check_post(ws: Layout, pp: PostPlan, sel: Selection) -> list[str]:
    """Render into a scratch folder and compare with publish/NAME/; returns the differing files."""
    stage = _stage(ws, pp)
    try:
        render_to(ws, pp, sel, command_for(pp.post, sel), stage)
        return diff_trees(stage, ws.publish_dir / pp.post.name)
    except OSError as e:
        if disk_problem(e):
            raise DiskError.writing(e, ws.rel(ws.publish_dir), f"a scratch copy of post {pp.post.name}") from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def diff_trees(new: Path, old: Path) -> list[str]:
    """Whole files compared: nothing in a bundle may differ between two honest builds."""
    def files(root: Path) -> dict:
        if not root.is_dir():
            return {}
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    a, b = files(new), files(old)
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"{name}: missing from publish/")
        elif name not in a:
            out.append(f"{name}: no longer produced")
        elif a[name].read_bytes() != b[name].read_bytes():
            out.append(f"{name}: differs")
    return out


def _stage(ws: Layout, pp: PostPlan) -> Path:
    try:
        ws.publish_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=ws.publish_dir, prefix=f".{pp.post.name}.stage-"))
    except OSError as e:
        raise PublishError(f"cannot write to {ws.rel(ws.publish_dir)}/ ({e.strerror}); "
                           "check the folder's permissions") from None


def _swap(stage: Path, out: Path) -> None:
    os.chmod(stage, 0o755)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
