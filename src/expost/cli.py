"""The `expost` command: a thin layer over the library. Each command parses, calls, prints."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import click

from expost import __version__
from expost.errors import ExpostError, PublishError, RunFailures
from expost.layout import find_workspace

EPILOG = "Exit codes: 0 success; 1 a claim failed, a run failed or an input was invalid; 2 usage error."


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def selection_options(f):
    """--seeds/--set/--where/--device: which runs a command is about. Written once, used everywhere."""
    @click.option("--seeds", type=click.IntRange(min=1), default=None,
                  help="Number of seeds (1..N); default: each experiment's SEEDS.")
    @click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                  help="Override a parameter (type-checked against its default). Repeatable.")
    @click.option("--where", multiple=True, metavar="KEY=VALUE",
                  help="Only configs whose parameter KEY equals VALUE. Repeatable.")
    @click.option("--device", default="cpu", show_default=True,
                  help="Device for experiments with a 'device' parameter (cpu, cuda, cuda:1).")
    @functools.wraps(f)
    def wrapper(*args, seeds, set_, where, device, **kwargs):
        from expost.pipeline import Selection
        from expost.runs.plan import parse_assignments

        try:
            sel = Selection(seeds=seeds, set=parse_assignments(set_, "--set"),
                            where=parse_assignments(where, "--where"), device=device)
        except ExpostError as e:
            raise click.UsageError(str(e)) from None
        return f(*args, sel=sel, **kwargs)
    return wrapper


def run_options(f):
    """-j/--jobs, --quiet, --force, --yes."""
    for option in reversed((
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                     help="Parallel worker processes (default: number of cores)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
        click.option("--force", is_flag=True, help="Rerun even cached runs."),
        click.option("--yes", is_flag=True, help="Confirm a plan larger than the safety limit."),
    )):
        f = option(f)
    return f


class ExpostGroup(click.Group):
    """Turns domain errors into one message and exit 1; never a bare traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ExpostError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=ExpostGroup, epilog=EPILOG)
@click.version_option(__version__, prog_name="expost")
@click.option("--workspace", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Workspace folder (default: the nearest folder upwards holding experiments/).")
@click.pass_context
def cli(ctx, workspace):
    """Turn small PyTorch experiments into reproducible posts.

    \b
    Example:
        expost run && expost check
    """
    ctx.obj = {"workspace": workspace}


def workspace_of(ctx):
    return find_workspace(explicit=ctx.obj.get("workspace"))


def _progress(total: int, quiet: bool):
    if quiet or total == 0 or not sys.stderr.isatty():
        return None
    bar = click.progressbar(length=total, label="running", file=sys.stderr, show_pos=True, show_eta=True)
    bar.__enter__()
    return bar


def _do_runs(ctx, names, sel, jobs, quiet, force, yes):
    """Plan and run the named experiments."""
    from expost import pipeline

    ws = workspace_of(ctx)
    specs = pipeline.load_specs(ws, names)
    plans = pipeline.plan_runs(specs, sel, confirm_large=not yes)
    _execute(ws, specs, plans, sel, jobs, quiet, force)


def _execute(ws, specs, plans, sel, jobs, quiet, force):
    """Run what is missing with a progress bar; summary and flags on stderr; RunFailures at the end."""
    from expost import pipeline

    bar = {"b": None}
    t0 = time.perf_counter()

    def start(n):
        bar["b"] = _progress(n, quiet)

    def done(_):
        if bar["b"]:
            bar["b"].update(1)

    def corrupt(keys):
        click.echo(f"warning: {len(keys)} corrupt cache entr{'y' if len(keys) == 1 else 'ies'} (checksum mismatch or "
                   f"truncated) set aside under {ws.rel(ws.cache_dir / 'corrupt')}/; they run again", err=True)

    try:
        outcomes = pipeline.run_all(ws, specs, plans, sel, jobs or default_jobs(), force, done, start, corrupt)
    except KeyboardInterrupt:
        if bar["b"]:
            bar["b"].__exit__(None, None, None)
        click.echo("interrupted: completed runs are cached; run the same command again to finish.", err=True)
        sys.exit(130)
    if bar["b"]:
        bar["b"].__exit__(None, None, None)
    wall = time.perf_counter() - t0
    planned = {r.key for p in plans.values() for r in p}
    done = {o.run.key: o for o in outcomes if o.run.key in planned and not o.reused}
    ran = sum(o.ok for o in done.values())
    extra = sum(o.ok and not o.reused for o in outcomes if o.run.key not in planned)
    more = f" (+{extra} more seeds of their batch blocks)" if extra else ""
    click.echo(f"{len(planned)} planned run(s): {len(planned) - len(done)} cached, {ran} ran{more}, "
               f"{len(done) - ran} failed ({wall:.1f} s)", err=True)
    for o in outcomes:
        if o.ok and o.nonfinite:
            click.echo(f"flagged: {o.run.experiment} [{o.run.label}] seed {o.run.seed} produced NaN/inf in "
                       f"{', '.join(o.nonfinite)}", err=True)
    failures = [o for o in outcomes if not o.ok]
    if failures:
        raise RunFailures(failures)


@cli.command(epilog=EPILOG)
@click.argument("experiments", nargs=-1)
@selection_options
@run_options
@click.option("--explain", is_flag=True, help="Print for each planned run whether it is cached and why not; run nothing.")
@click.pass_context
def run(ctx, experiments, sel, jobs, quiet, force, yes, explain):
    """Run experiments over seeds; only runs not in the cache execute.

    \b
    Examples:
        expost run                      # every experiment, default seeds
        expost run scurves --seeds 20 -j 2
        expost run scurves --set lr=0.01 --where model=factored
        expost run --explain            # what would run, and why
    """
    if explain:
        from expost import pipeline
        from expost.freshness import explain
        from expost.runs.cache import Cache

        ws = workspace_of(ctx)
        specs = pipeline.load_specs(ws, experiments)
        plans = pipeline.plan_runs(specs, sel, confirm_large=not yes)
        cache = Cache(ws.cache_dir)
        for spec in specs:
            for r, reason in explain(cache, plans[spec.name]):
                shown = "rerun (--force)" if force else reason
                click.echo(f"{r.experiment}\t{r.label}\tseed {r.seed}\t{shown}")
        return
    _do_runs(ctx, experiments, sel, jobs, quiet, force, yes)


def _verdict_table(verdicts) -> list[str]:
    rows = [("experiment", "claim", "group", "verdict", "k/n", "need", "numbers")]
    for v in verdicts:
        text = v.claim if len(v.claim) <= 60 else v.claim[:57] + "..."
        need = f">={v.min_frac:.0%}" if v.per_seed else "-"
        extra = v.numbers or v.detail
        if v.missing:
            extra = (extra + "; " if extra else "") + f"{v.missing} seed(s) missing"
        rows.append((v.experiment, text, v.group or "-", v.verdict, v.k_of_n, need, extra))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows]


@cli.command(epilog=EPILOG)
@click.argument("experiments", nargs=-1)
@selection_options
@click.pass_context
def check(ctx, experiments, sel):
    """Evaluate every claim across the cached seeds and print a verdict table.

    Exits 1 if any claim fails (or errors), 0 otherwise. Runs nothing: missing runs make a
    claim inconclusive; run `expost run` first.

    \b
    Example:
        expost run scurves && expost check scurves
    """
    from expost import pipeline

    ws = workspace_of(ctx)
    specs = pipeline.load_specs(ws, experiments)
    plans = pipeline.plan_runs(specs, sel, confirm_large=False)
    verdicts = []
    for spec in specs:
        verdicts += pipeline.check(ws, spec, plans[spec.name], sel)
    for line in _verdict_table(verdicts):
        click.echo(line.rstrip())
    bad = [v for v in verdicts if v.verdict in ("fails", "error")]
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("holds", "fails", "inconclusive", "error")}
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no claims declared", err=True)
    if bad:
        sys.exit(1)


@cli.command("list", epilog=EPILOG)
@click.argument("experiments", nargs=-1)
@selection_options
@click.pass_context
def list_(ctx, experiments, sel):
    """List experiments: sweep size, seeds, runs cached / planned, and claim verdicts when known.

    \b
    Example:
        expost list
    """
    from expost import pipeline
    from expost.runs.cache import Cache

    ws = workspace_of(ctx)
    specs = pipeline.load_specs(ws, experiments)
    plans = pipeline.plan_runs(specs, sel, confirm_large=False)
    cache = Cache(ws.cache_dir)
    for spec in specs:
        runs = plans[spec.name]
        cached = sum(cache.has(r.key) for r in runs)
        n_cfg = len({r.point for r in runs})
        seeds = len({r.seed for r in runs})
        known = pipeline.known_verdicts(ws, spec)
        if known is None:
            claims = "claims: run `expost check`"
        else:
            counts = {}
            for v in known:
                counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
            claims = "claims: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none")
        click.echo(f"{spec.name}\t{n_cfg} config(s) x {seeds} seed(s)\t{cached}/{len(runs)} cached\t{claims}")


def _post_plans(ctx, posts, sel):
    from expost import writeup
    from expost.posts.post import find_posts

    ws = workspace_of(ctx)
    return ws, [writeup.plan_post(ws, p, sel) for p in find_posts(ws.templates_dir, posts)]


@cli.command(epilog=EPILOG)
@click.argument("posts", nargs=-1)
@selection_options
@click.option("--force", is_flag=True, help="Render even if the inputs did not change.")
@click.option("--allow-secrets", is_flag=True, help="Skip the refusal when the secret scan finds something.")
@click.pass_context
def render(ctx, posts, sel, force, allow_secrets):
    """Render posts from the cache into publish/NAME/ (never runs an experiment).

    Lists the runs a post lacks and exits 1 if any are missing.

    \b
    Example:
        expost render scurves
    """
    from expost import writeup

    ws, pps = _post_plans(ctx, posts, sel)
    for pp in pps:
        _report_post(ws, pp, *writeup.build_post(ws, pp, sel, force, allow_secrets))


def _report_post(ws, pp, status, warnings):
    click.echo(f"{pp.post.name}: {status} -> {ws.rel(ws.publish_dir / pp.post.name)}/")
    relative = [w for w in warnings if "is still a relative link" in w]
    if len(relative) > 1:
        warnings = [w for w in warnings if w not in relative]
        warnings.append(f"{len(relative)} figure links in post.md are still relative: set image_base_url in "
                        "expost.toml or publish the gist first (`expost publish gist NAME`)")
    for w in warnings:
        click.echo(f"warning: {pp.post.name}: {w}", err=True)


@cli.command(epilog=EPILOG)
@click.argument("posts", nargs=-1)
@selection_options
@run_options
@click.option("--check", is_flag=True,
              help="Render into a scratch folder and exit 1 if publish/ differs (is publish/ up to date?).")
@click.option("--allow-secrets", is_flag=True, help="Skip the refusal when the secret scan finds something.")
@click.pass_context
def build(ctx, posts, sel, jobs, quiet, force, yes, check, allow_secrets):
    """Run what is missing, check claims, render and export posts into publish/NAME/.

    With nothing changed it only compares hashes: no experiment is imported, no figure drawn.
    Failed claims are reported in the posts (use `expost check` to gate on them). With --check,
    nothing in publish/ is written: it says whether publish/ matches what the code produces
    (timing fields in manifests are not compared).

    \b
    Examples:
        expost build                 # every post in templates/
        expost build scurves -j 2
        expost build --check         # in CI: is publish/ up to date?
    """
    from expost import writeup

    ws, pps = _post_plans(ctx, posts, sel)
    if check:
        todo = pps
    else:
        todo = [pp for pp in pps if force or not writeup.up_to_date(
            ws, pp, writeup.render_key(ws, pp, writeup.command_for(pp.post, sel)))]
        for pp in pps:
            if pp not in todo:
                click.echo(f"{pp.post.name}: up to date")
    if not todo:
        return
    _execute(ws, *writeup.union_of_runs(todo), sel, jobs, quiet, force)
    stale = []
    for pp in todo:
        if check:
            diffs = writeup.check_post(ws, pp, sel)
            click.echo(f"{pp.post.name}: {'up to date' if not diffs else 'OUT OF DATE'}")
            for d in diffs:
                click.echo(f"  {d}")
            stale += diffs
        else:
            _report_post(ws, pp, *writeup.build_post(ws, pp, sel, force=force, allow_secrets=allow_secrets))
    if stale:
        raise click.ClickException("publish/ does not match what the code produces; run `expost build` and commit publish/")


@cli.command(epilog=EPILOG)
@click.argument("post")
@click.option("--seeds", "k", type=click.IntRange(min=1), default=None, help="Rerun only the first K seeds (default: all).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Parallel worker processes.")
@click.pass_context
def verify(ctx, post, k, jobs):
    """Rerun a post's seeds without the cache and compare with the recorded results.

    Every scalar and series is identical, within tolerance (relative 1e-5; the largest difference
    is shown) or drifted. One seed runs twice to tell nondeterminism from drift. Exits 1 on drift.

    \b
    Example:
        expost verify scurves --seeds 3
    """
    from expost.runs import verify as verify_mod
    from expost.fmt import num
    from expost.pipeline import Selection

    ws, pps = _post_plans(ctx, (post,), Selection())
    report = verify_mod.verify(ws, pps[0], Selection(), k, jobs or default_jobs())
    for q in report.quantities:
        extra = "" if q.status == verify_mod.IDENTICAL else f" (largest relative difference {num(q.max_rel)} at {q.where})"
        click.echo(f"{q.experiment}\t{q.name}\t{q.runs} runs\t{q.status}{extra}")
    for exp, d in report.nondeterministic.items():
        if d > 0:
            click.echo(f"{exp}: NONDETERMINISTIC: the same seed run twice differs (largest relative difference "
                       f"{num(d)}); differences from the record may be noise, not drift", err=True)
    if report.failures:
        raise RunFailures(report.failures)
    if report.drifted:
        nondet = any(d > verify_mod.RTOL for d in report.nondeterministic.values())
        raise click.ClickException("results drifted from the recorded post" + (
            " (the experiment is nondeterministic: make it deterministic first)" if nondet else
            ": same seeds, different numbers; something in the code or environment changed"))
    click.echo("all recorded results reproduced", err=True)


@cli.group(epilog=EPILOG)
def publish():
    """Publish a built post's bundle.

    \b
    Example:
        expost publish gist scurves --dry-run
    """


@publish.command("gist", epilog=EPILOG)
@click.argument("post")
@click.option("--dry-run", is_flag=True, help="Show exactly what would be sent; send nothing.")
@click.option("--remote", default=None, metavar="URL", help="Push the bundle to this git remote instead of a gist.")
@click.option("--public", is_flag=True, help="Create a public gist (default: secret).")
@click.option("--allow-secrets", is_flag=True, help="Skip the refusal when the secret scan finds something.")
@click.pass_context
def publish_gist(ctx, post, dry_run, remote, public, allow_secrets):
    """Publish publish/POST/gist/ as a GitHub gist (text by the REST API, figures by git push).

    The first time creates a gist; later runs update the same one (remembered in
    publish/published.json). post.md's figure links are then rewritten to raw URLs pinned to the
    pushed commit. The token comes from GITHUB_TOKEN, GH_TOKEN or `gh auth token` and is never
    printed or written anywhere.

    \b
    Examples:
        expost publish gist scurves --dry-run
        expost publish gist scurves
        expost publish gist scurves --remote git@github.com:me/scurves-post.git
    """
    import json as json_mod

    from expost import writeup
    from expost.publish import gist
    from expost.pipeline import Selection
    from expost.publish.safety import refuse_secrets

    sel = Selection()
    ws, pps = _post_plans(ctx, (post,), sel)
    pp = pps[0]
    _report_post(ws, pp, *writeup.build_post(ws, pp, sel, allow_secrets=allow_secrets))
    bundle = ws.publish_dir / pp.post.name / "gist"
    token = None if (dry_run or remote) else gist.get_token()
    if not allow_secrets:
        refuse_secrets(bundle, f"publishing {pp.post.name}", extra=[token] if token else [])
    previous = writeup.published_records(ws).get(pp.post.name)
    try:
        record = gist.publish(bundle, record=previous, description=pp.post.title, token=token,
                              api_url=os.environ.get("EXPOST_GITHUB_API", gist.API_URL), remote=remote,
                              raw_url_template=ws.settings.get("raw_url_template") if remote else None,
                              dry_run=dry_run, public=public)
    except PublishError as e:
        if getattr(e, "record", None):  # the gist exists but the push failed: update it next time
            writeup.save_published(ws, pp.post.name, e.record)
        raise
    if dry_run:
        click.echo(json_mod.dumps(record.get("dry_run", record), indent=1, sort_keys=True))
        return
    writeup.save_published(ws, pp.post.name, record)
    _report_post(ws, pp, *writeup.build_post(ws, pp, sel, force=True, allow_secrets=allow_secrets))
    click.echo(f"published {pp.post.name}: {record.get('html_url') or record.get('git_url') or remote} "
               f"at commit {record.get('commit', '')[:12]}")


@cli.group(epilog=EPILOG)
def new():
    """Scaffold a workspace, an experiment or a post that runs and renders out of the box.

    \b
    Example:
        expost new workspace my-study && cd my-study && expost build
    """


@new.command("workspace", epilog=EPILOG)
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
def new_workspace(path):
    """Create a workspace folder with one example experiment and one post.

    \b
    Example:
        expost new workspace my-study
    """
    from expost import scaffold

    for p in scaffold.new_workspace(path):
        click.echo(p)


@new.command("experiment", epilog=EPILOG)
@click.argument("name")
@click.pass_context
def new_experiment(ctx, name):
    """Create experiments/NAME.py: a small torch script with a result spec.

    \b
    Example:
        expost new experiment decay
    """
    from expost import scaffold

    ws = find_workspace(explicit=ctx.find_root().obj.get("workspace"))
    click.echo(scaffold.new_experiment(ws.root, name))


@new.command("post", epilog=EPILOG)
@click.argument("name")
@click.option("--experiment", "experiment", default=None, help="Experiment the post reports (default: the first one).")
@click.pass_context
def new_post(ctx, name, experiment):
    """Create templates/NAME.md.j2: a post using every helper on one experiment.

    \b
    Example:
        expost new post decay-results --experiment decay
    """
    from expost import scaffold

    ws = find_workspace(explicit=ctx.find_root().obj.get("workspace"))
    click.echo(scaffold.new_post(ws, name, experiment))


def main():
    """The `expost` console script."""
    cli(prog_name="expost")


if __name__ == "__main__":
    main()
