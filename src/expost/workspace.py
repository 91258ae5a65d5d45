"""The front door: `expost.Workspace(path)`, one method per verb, returning result objects.

    import expost

    ws = expost.Workspace("path/to/workspace")
    report = ws.build("scurves", seeds=10, jobs=2)     # run what is missing, check, render, export
    for post in report.posts:
        print(post.name, post.status, post.out)
    print([(v.claim, v.verdict, v.k_of_n) for v in ws.check("scurves")])

Progress is reported to an observer (`Progress`: started, finished, corrupt), never printed.
Errors a user can cause raise `expost.errors.ExpostError` subclasses whose message names the
file, field or flag and the fix; `RunFailures` comes after every other run is cached.
The CLI is click over this class and nothing else.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from expost.errors import ConfigError, RunFailures
from expost.layout import Layout, find_workspace


class Progress:
    """Observer of a run's progress. Subclass and override what you need; the default is silent."""

    def started(self, total: int) -> None:
        """`total` runs are about to execute."""

    def submitted(self, runs: tuple) -> None:
        """These runs (one, or a batch block) went out to a worker: running, or next in its queue."""

    def step(self, run, values: dict) -> None:
        """A run written as a generator yielded these values (the latest, about twice a second)."""

    def finished(self, outcome) -> None:
        """One run ended (outcome.ok tells whether it succeeded)."""

    def corrupt(self, keys: list[str]) -> None:
        """Corrupt cache entries were set aside; they run again."""

    def looked(self, look) -> None:
        """`run_until_decided` judged the claims at look.seeds seeds (runs/budget.py's Look)."""


@dataclass
class RunReport:
    """What a run of the missing runs did: counts, failures and runs flagged for NaN/inf."""

    planned: int = 0
    cached: int = 0
    ran: int = 0
    failed: int = 0
    extra: int = 0  # seeds of a batch block run beside the planned ones
    wall_s: float = 0.0
    outcomes: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)
    workspace_writes: list = field(default_factory=list)  # files the runs wrote or changed in the workspace

    @property
    def failures(self) -> list:
        return [o for o in self.outcomes if not o.ok]

    @property
    def flagged(self) -> list:
        return [o for o in self.outcomes if o.ok and o.nonfinite]

    def raise_for_failures(self) -> None:
        if self.failures:
            error = RunFailures(self.failures)
            error.report = self
            raise error


@dataclass
class PostResult:
    name: str
    status: str  # "up to date" | "rendered" | "OUT OF DATE" (build --check)
    out: Path
    warnings: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)  # build --check: the files that differ
    errors: list[str] = field(default_factory=list)  # claims that could not be evaluated


@dataclass
class BuildReport:
    posts: list[PostResult] = field(default_factory=list)
    runs: RunReport | None = None

    @property
    def out_of_date(self) -> list[PostResult]:
        return [p for p in self.posts if p.diffs]

    @property
    def errors(self) -> list[str]:
        return [e for p in self.posts for e in p.errors]


@dataclass
class ExperimentSummary:
    name: str
    configs: int
    seeds: int
    cached: int
    planned: int
    verdicts: list[dict] | None  # from the last `check` of this exact source; None if never checked


@dataclass
class RunLog:
    """What one planned run printed: status "cached", "failed" (the log with its traceback) or "not run"."""

    run: object
    status: str
    text: str
    path: Path | None = None
    artifacts: dict = field(default_factory=dict)  # relative path -> the file in the cache (EXPOST_ARTIFACTS)


@dataclass
class Published:
    post: PostResult
    record: dict
    dry_run: bool
    url: str | None = None


def _text(value) -> str:
    """A Python value as the command line would spell it (the plan stage parses text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


class Workspace:
    """A workspace (a folder with experiments/ and templates/) and every verb over it."""

    def __init__(self, path: str | os.PathLike | None = None, *, progress: Progress | None = None):
        from expost import numerics

        numerics.pin()  # before any run imports torch: the same bits on any x86 machine
        self.layout: Layout = find_workspace(explicit=Path(path)) if path is not None else find_workspace()
        self.progress = progress or Progress()

    @property
    def root(self) -> Path:
        return self.layout.root

    # --- what to run ------------------------------------------------------------------------------

    @staticmethod
    def selection(seeds: int | None = None, set: dict | None = None, where: dict | None = None,
                  device: str = "cpu", profile: str | None = None):
        """Which runs a verb is about: --seeds, --set KEY=VALUE, --where KEY=VALUE, --device,
        --profile NAME (a set of parameter values from each experiment's PROFILES)."""
        from expost.runs.plan import Selection

        if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
            raise ConfigError(f"seeds={seeds!r}: give a positive integer")
        if profile is not None and (not isinstance(profile, str) or not profile.isidentifier()):
            raise ConfigError(f"profile={profile!r}: give a profile name such as cpu")
        return Selection(seeds=seeds, set={k: _text(v) for k, v in (set or {}).items()},
                         where={k: _text(v) for k, v in (where or {}).items()}, device=device, profile=profile)

    def plan(self, experiments=(), sel=None, *, confirm_large: bool = True) -> tuple[list, dict]:
        """(static specs, {experiment: planned runs}) for the named experiments (all by default)."""
        from expost.runs.plan import load_specs, plan_runs, with_settings

        sel = with_settings(sel or self.selection(), self.layout.settings)
        specs = load_specs(self.layout, _names(experiments))
        return specs, plan_runs(specs, sel, confirm_large=confirm_large)

    def explain(self, experiments=(), sel=None, *, yes: bool = False) -> list[tuple]:
        """(planned run, why it is or is not cached) for every planned run; runs nothing."""
        from expost.freshness import explain
        from expost.runs.cache import Cache

        specs, plans = self.plan(experiments, sel, confirm_large=not yes)
        cache = Cache(self.layout.cache_dir)
        return [pair for spec in specs for pair in explain(cache, plans[spec.name], spec.parts)]

    # --- run, check, list -------------------------------------------------------------------------

    def run(self, experiments=(), sel=None, *, jobs: int | None = None, force: bool = False,
            yes: bool = False, timeout: float | None = None, executor: str | None = None,
            scheduler: str | None = None) -> RunReport:
        """Run every planned run not in the cache, in local processes or on a Dask cluster
        (executor="dask", scheduler="tcp://HOST:8786"; default: expost.toml's [executor]). Raises
        RunFailures (after caching every other run) when a run failed; KeyboardInterrupt leaves every
        completed run cached."""
        choice = self.executor(executor, scheduler, jobs)
        sel = sel or self.selection()
        specs, plans = self.plan(experiments, sel, confirm_large=not yes)
        report = self._execute(specs, plans, sel, jobs, force, timeout, choice)
        report.raise_for_failures()
        return report

    def executor(self, executor: str | None = None, scheduler: str | None = None, jobs: int | None = None):
        """Where runs execute (runs/cluster.py's ExecutorChoice): executor "local" or "dask" and a
        scheduler address, over expost.toml's [executor] table. -j with a cluster caps the runs out
        on it at once."""
        from dataclasses import replace

        from expost.runs.cluster import choose

        choice = choose(executor, scheduler, self.layout.settings)
        return replace(choice, limit=jobs) if jobs and (choice.scheduler or choice.cluster) else choice

    def _execute(self, specs, plans, sel, jobs, force, timeout=None, executor=None) -> RunReport:
        from expost.runs.sweep import run_all

        report = RunReport()
        progress = self.progress

        def corrupt(keys):
            report.corrupt = list(keys)
            progress.corrupt(list(keys))

        t0 = time.perf_counter()
        before = _workspace_files(self.root)
        outcomes = run_all(self.layout, specs, plans, sel, jobs or default_jobs(), force,
                           progress.finished, progress.started, corrupt, timeout, progress.submitted, executor,
                           progress.step)
        report.wall_s = time.perf_counter() - t0
        after = _workspace_files(self.root)
        report.workspace_writes = sorted(self.layout.rel(Path(p)) for p, sig in after.items() if before.get(p) != sig)
        planned = {r.key for p in plans.values() for r in p}
        done = {o.run.key: o for o in outcomes if o.run.key in planned and not o.reused}
        report.outcomes = outcomes
        report.planned = len(planned)
        report.ran = sum(o.ok for o in done.values())
        report.failed = len(done) - report.ran
        report.cached = len(planned) - len(done)
        report.extra = sum(o.ok and not o.reused for o in outcomes if o.run.key not in planned)
        return report

    def check(self, experiments=(), sel=None) -> list:
        """Every claim's verdict on the cached seeds (runs nothing; missing runs make a claim
        inconclusive). The verdicts are remembered for `list`."""
        from expost.runs import claims

        sel = sel or self.selection()
        specs, plans = self.plan(experiments, sel, confirm_large=False)
        return [v for spec in specs for v in claims.check(self.layout, spec, plans[spec.name], sel)]

    def seed_budget(self, experiments=(), sel=None, *, confidence: float = 0.9):
        """`check` plus, for each verdict, whether its seeds decide it at `confidence` and how many
        seeds in all would (runs/budget.py): a Budget with .verdicts and .advice. Runs nothing."""
        from expost.runs import budget

        confidence = budget.check_confidence(confidence)
        sel = sel or self.selection()
        specs, plans = self.plan(experiments, sel, confirm_large=False)
        report = budget.Budget([], [], confidence)
        for spec in specs:
            verdicts, advice = budget.judge(self.layout, spec, plans[spec.name], sel, confidence)
            report.verdicts += verdicts
            report.advice += advice
        return report

    def run_until_decided(self, experiments=(), sel=None, *, max_seeds: int = 100, confidence: float = 0.9,
                          jobs: int | None = None, yes: bool = False, timeout: float | None = None,
                          executor: str | None = None, scheduler: str | None = None):
        """Run the selected seeds, then add blocks of 10 seeds until every per-seed claim is
        decided or `max_seeds` is spent (runs/budget.py). Each look is judged at the confidence
        that keeps all planned looks together at `confidence` (Bonferroni); a claim decided at a
        look stays decided. Returns UntilDecided; RunFailures (every completed run cached) ends it
        early."""
        from dataclasses import replace

        from expost.runs import budget
        from expost.runs.posterior import looks

        confidence = budget.check_confidence(confidence)
        sel = sel or self.selection()
        start = sel.seeds or max((len({r.seed for r in runs}) for runs in self.plan(experiments, sel,
                                  confirm_large=not yes)[1].values()), default=1)
        if isinstance(max_seeds, bool) or not isinstance(max_seeds, int):
            raise ConfigError(f"max_seeds={max_seeds!r}: give a whole number of seeds, e.g. 100")
        if max_seeds < start:
            raise ConfigError(f"--max-seeds {max_seeds}: below the {start} seeds this starts from; raise "
                              f"--max-seeds or lower --seeds")
        report = budget.UntilDecided(confidence, looks(start, max_seeds))
        for seeds in report.schedule:
            at = replace(sel, seeds=seeds)
            runs = self.run(experiments, at, jobs=jobs, yes=yes, timeout=timeout, executor=executor,
                            scheduler=scheduler)
            judged = self.seed_budget(experiments, at, confidence=report.per_look)
            look = report.add(seeds, runs, judged.verdicts, judged.advice)
            self.progress.looked(look)
            if not look.undecided:
                break
        return report

    def logs(self, experiment: str, sel=None, *, seed: int | None = None) -> list[RunLog]:
        """What each planned run of an experiment printed (the cached run's output, or a failed
        run's log with its traceback), for `seed` only when given."""
        from expost.runs.cache import Cache

        _, plans = self.plan((experiment,), sel, confirm_large=False)
        cache = Cache(self.layout.cache_dir)
        out = []
        for run in plans[experiment]:
            if seed is not None and run.seed != seed:
                continue
            failed = cache.log_path(run.experiment, run.label, run.seed)
            if cache.has(run.key):
                text = cache.output(run.key)
                out.append(RunLog(run, "cached", text if text is not None else
                                  "(no output kept: this run was cached before expost kept the output of runs)\n",
                                  artifacts=cache.artifacts(run.key)))
            elif failed.is_file():
                out.append(RunLog(run, "failed", failed.read_text(encoding="utf-8", errors="replace"), failed))
            else:
                out.append(RunLog(run, "not run", ""))
        if not out and seed is not None:
            raise ConfigError(f"--seed {seed}: {experiment} plans seeds 1-{max(r.seed for r in plans[experiment])} "
                              "here; pick one of them (or pass --seeds)")
        return out

    def list(self, experiments=(), sel=None) -> list[ExperimentSummary]:
        """Each experiment's sweep size, seeds, runs cached of planned, and its last verdicts."""
        from expost.runs.cache import Cache
        from expost.runs.claims import known_verdicts

        specs, plans = self.plan(experiments, sel, confirm_large=False)
        cache = Cache(self.layout.cache_dir)
        out = []
        for spec in specs:
            runs = plans[spec.name]
            out.append(ExperimentSummary(spec.name, len({r.point for r in runs}), len({r.seed for r in runs}),
                                         sum(cache.has(r.key) for r in runs), len(runs),
                                         known_verdicts(self.layout, spec)))
        return out

    # --- posts ------------------------------------------------------------------------------------

    def posts(self, names=(), sel=None, *, confirm_large: bool = True) -> list:
        """The named posts (all of templates/ by default), each planned: its specs and runs."""
        from expost import spine
        from expost.posts.post import find_posts

        sel = sel or self.selection()
        return [spine.plan_post(self.layout, p, sel, confirm_large)
                for p in find_posts(self.layout.templates_dir, _names(names))]

    def build(self, posts=(), sel=None, *, jobs: int | None = None, force: bool = False, yes: bool = False,
              check: bool = False, allow_secrets: bool = False, timeout: float | None = None,
              executor: str | None = None, scheduler: str | None = None) -> BuildReport:
        """Run what the posts need (where `executor`/`scheduler` say, as for `run`), check claims,
        render and export into publish/NAME/.

        Posts whose inputs did not change are left alone (no experiment imported, no figure
        drawn). With check=True nothing in publish/ is written: each post is rendered into a
        scratch folder and compared (PostResult.diffs)."""
        from expost import spine

        choice = self.executor(executor, scheduler, jobs)
        sel = sel or self.selection()
        pps = self.posts(posts, sel, confirm_large=not yes)
        report = BuildReport()
        todo = []
        for pp in pps:
            if check or force or not spine.up_to_date(self.layout, pp, spine.render_key(
                    self.layout, pp, spine.command_for(pp.post, sel))):
                todo.append(pp)
            else:
                report.posts.append(PostResult(pp.post.name, "up to date", self.layout.post_dir(pp.post.name)))
        if not todo:
            return report
        report.runs = self.run_missing(todo, sel, jobs=jobs, force=force, timeout=timeout, executor=choice)
        report.runs.raise_for_failures()
        for pp in todo:
            out = self.layout.post_dir(pp.post.name)
            if check:
                diffs = spine.check_post(self.layout, pp, sel)
                report.posts.append(PostResult(pp.post.name, "OUT OF DATE" if diffs else "up to date", out,
                                               diffs=diffs))
            else:
                built = spine.build_post(self.layout, pp, sel, force=force, allow_secrets=allow_secrets)
                report.posts.append(PostResult(pp.post.name, built.status, out, built.warnings, errors=built.errors))
        return report

    def run_missing(self, pps: list, sel=None, *, jobs: int | None = None, force: bool = False,
                    timeout: float | None = None, executor=None) -> RunReport:
        """Run what the planned posts (from `posts`) lack, each run once, where `executor` (from
        `executor()`; default: expost.toml's) says. Failures are in the report (`raise_for_failures`
        raises them), after every other run is cached."""
        from expost import spine

        specs, plans = spine.union_of_runs(pps)
        return self._execute(specs, plans, sel or self.selection(), jobs, force, timeout,
                             executor or self.executor(jobs=jobs))

    def draft(self, pp, sel, out: Path):
        """Render a planned post from the cache into the empty folder `out`, as `build` would
        publish it, without touching publish/ (the preview's render). Returns spine.Built."""
        from expost import spine

        return spine.render_to(self.layout, pp, sel, spine.command_for(pp.post, sel), Path(out))

    def render(self, posts=(), sel=None, *, force: bool = False, allow_secrets: bool = False) -> list[PostResult]:
        """Render posts from the cache only (never runs); MissingRunsError lists what a post lacks."""
        from expost import spine

        out = []
        for pp in self.posts(posts, sel):
            built = spine.build_post(self.layout, pp, sel or self.selection(), force, allow_secrets)
            out.append(PostResult(pp.post.name, built.status, self.layout.post_dir(pp.post.name), built.warnings,
                                  errors=built.errors))
        return out

    def verify(self, post: str, *, seeds: int | None = None, jobs: int | None = None):
        """Rerun a post's first `seeds` seeds (all by default) without the cache and compare with
        the recorded results: runs.verify.Report (identical / within tolerance / drifted)."""
        from expost.runs import verify as verify_mod

        sel = self.selection()
        pp = self.posts((post,), sel)[0]
        return verify_mod.verify(self.layout, pp, sel, seeds, jobs or default_jobs())

    def diff(self, rev: str = "HEAD", posts=(), sel=None, *, jobs: int | None = None, timeout: float | None = None,
             out: str | os.PathLike | None = None):
        """Compare each post as committed at `rev` (publish/NAME/ there) with the post as the working
        tree builds it: review.diff.DiffReport (claims flipped, numbers beyond seed noise, figures
        changed, post.md's prose). Runs what the working tree lacks, as `build` would, and renders
        into a temporary folder, never publish/. Changed figures are drawn (before | after | changed
        pixels) into `out`/POST/, by default the cache's diff/POST/. All posts by default: those not
        committed at `rev` are listed as new, those without a template as gone."""
        import tempfile

        from expost.errors import DiffError
        from expost.posts.post import find_posts
        from expost.review import bundle
        from expost.review import diff as review

        commit = bundle.resolve(self.root, rev)
        names = _names(posts)
        sel = sel or self.selection()
        here = [p.name for p in find_posts(self.layout.templates_dir, names)]  # an unknown name: its error
        committed = bundle.committed_posts(self.root, commit)
        report = review.DiffReport(rev, commit)
        for name in names:
            if name not in committed:
                bundle.read_committed(self.root, commit, rev, name, self.layout.cache_dir)  # says why, and the fix
        before = {name: bundle.read_committed(self.root, commit, rev, name, self.layout.cache_dir)
                  for name in here if name in committed}
        pps = self.posts(tuple(before), sel) if before else []
        if pps:
            report.runs = self.run_missing(pps, sel, jobs=jobs, timeout=timeout)
            report.runs.raise_for_failures()
        where = "the working tree"
        with tempfile.TemporaryDirectory(prefix="expost-diff-") as tmp:
            for pp in pps:
                name = pp.post.name
                folder = Path(tmp) / name
                folder.mkdir()
                built = self.draft(pp, sel, folder)
                after = bundle.read_folder(folder, name, where, self.layout.cache_dir)
                after.warnings += [f"the working tree: {e}" for e in built.errors]
                images = Path(out) / name if out is not None else self.layout.cache.diff(name)
                if out is None:
                    review.clear_images(images)
                try:
                    report.posts.append(review.compare(before[name], after, images))
                except OSError as e:
                    raise DiffError(f"cannot write the figure images into {images} ({e.strerror}); pass --out DIR "
                                    "with a writable folder") from None
        report.posts += [review.PostDiff(name, report.rev, where, status="new") for name in here if name not in committed]
        if not names:
            report.posts += [review.PostDiff(name, report.rev, where, status="gone")
                             for name in committed if name not in here]
        return report

    def publish_gist(self, post: str, *, dry_run: bool = False, remote: str | None = None, public: bool = False,
                     allow_secrets: bool = False) -> Published:
        """Publish publish/POST/gist/ as a GitHub gist (or push it to `remote`), remember where in
        publish/published.json, and re-render post.md with figure links pinned to that commit."""
        from expost import spine
        from expost.errors import PublishError
        from expost.publish import gist, records
        from expost.publish.safety import refuse_secrets

        sel = self.selection()
        pp = self.posts((post,), sel)[0]
        first = spine.build_post(self.layout, pp, sel, allow_secrets=allow_secrets)
        built = PostResult(pp.post.name, first.status, self.layout.post_dir(pp.post.name), first.warnings,
                           errors=first.errors)
        bundle = built.out / "gist"
        token = None if (dry_run or remote) else gist.get_token()
        if not allow_secrets:
            refuse_secrets(bundle, f"publishing {pp.post.name}", extra=[token] if token else [])

        def push(previous: dict | None) -> dict:
            try:
                return gist.publish(bundle, record=previous, description=pp.post.title, token=token,
                                    api_url=os.environ.get("EXPOST_GITHUB_API", gist.API_URL), remote=remote,
                                    raw_url_template=self.layout.settings.get("raw_url_template") if remote else None,
                                    dry_run=dry_run, public=public)
            except PublishError as e:
                if getattr(e, "record", None):  # the gist exists but the push failed: update it next time
                    records.save_published(self.layout, pp.post.name, e.record)
                raise

        record = push(records.published_records(self.layout).get(pp.post.name))
        if dry_run:
            return Published(built, record.get("dry_run", record), True)
        records.save_published(self.layout, pp.post.name, record)
        again = spine.build_post(self.layout, pp, sel, force=True, allow_secrets=allow_secrets)
        now = {n: f.sha256 for n, f in gist.read_bundle(bundle, for_gist=remote is None).items()}
        if now != record.get("files"):
            # the README now links the figures by their published URLs: publish that README too
            # (unchanged figures keep their URLs, so this settles in one more round)
            record = push(record)
            records.save_published(self.layout, pp.post.name, record)
            again = spine.build_post(self.layout, pp, sel, force=True, allow_secrets=allow_secrets)
        rebuilt = PostResult(pp.post.name, again.status, built.out, again.warnings, errors=again.errors)
        return Published(rebuilt, record, False, record.get("html_url") or record.get("git_url") or remote)


def _workspace_files(root: Path) -> dict:
    """The files directly in the workspace and in experiments/, by stat signature: where a script's
    relative `torch.save("ckpt.pt")` lands (runs should write to EXPOST_ARTIFACTS instead)."""
    from expost.files import signature

    out = {}
    for folder in (root, root / "experiments"):
        try:
            with os.scandir(folder) as it:
                for e in it:
                    # sources are the author's to edit while runs go; anything else new is the runs'
                    if e.is_file(follow_symlinks=False) and not e.name.endswith((".py", ".toml", ".md", ".j2")):
                        out[e.path] = signature(e.path)
        except OSError:
            pass
    return out


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _names(names) -> tuple:
    return (names,) if isinstance(names, str) else tuple(names)
