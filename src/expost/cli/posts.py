"""`expost render`, `build`, `verify`, `preview`, `diff`, `publish gist`: posts from the runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from expost.errors import ExpostError, Terminated
from expost.workspace import Workspace
from expost.cli.app import (
    EPILOG, selection_options, run_options, executor_flags, cli, workspace_of, print_runs,
    run_and_print,
)


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
    ws, _ = workspace_of(ctx)
    rendered = ws.render(posts, sel, force=force, allow_secrets=allow_secrets)
    for post in rendered:
        print_post(ws, post)
    fail_on_claim_errors(rendered)


def print_post(ws: Workspace, post) -> None:
    click.echo(f"{post.name}: {post.status} -> {ws.layout.rel(post.out)}/")
    warnings = list(post.warnings)
    relative = [w for w in warnings if "is still a relative link" in w]
    if len(relative) > 1:
        warnings = [w for w in warnings if w not in relative]
        warnings.append(f"{len(relative)} figure links in post.md are still relative: set image_base_url in "
                        "expost.toml or publish the gist first (`expost publish gist NAME`)")
    for w in warnings:
        click.echo(f"warning: {post.name}: {w}", err=True)
    for e in post.errors:
        click.echo(f"error: {post.name}: {e}", err=True)


def fail_on_claim_errors(posts) -> None:
    errors = [e for p in posts for e in p.errors]
    if errors:
        raise click.ClickException(f"{len(errors)} claim check(s) could not be evaluated (listed above); fix them "
                                   "in the experiment's CLAIMS: a check must return a bool or one bool per seed")


@cli.command(epilog=EPILOG)
@click.argument("posts", nargs=-1)
@selection_options
@run_options
@click.option("--check", is_flag=True,
              help="Render into a scratch folder and exit 1 if publish/ differs (is publish/ up to date?).")
@click.option("--allow-secrets", is_flag=True, help="Skip the refusal when the secret scan finds something.")
@click.pass_context
def build(ctx, posts, sel, jobs, executor, scheduler, quiet, force, yes, timeout, check, allow_secrets):
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
    executor_flags(executor, scheduler)
    ws, bar = workspace_of(ctx, quiet)
    report = run_and_print(bar, lambda: ws.build(posts, sel, jobs=jobs, force=force, yes=yes, timeout=timeout, check=check,
                                                 allow_secrets=allow_secrets, executor=executor, scheduler=scheduler))
    if report.runs is not None:
        print_runs(report.runs)
    for post in report.posts:
        if check or post.status == "up to date":
            click.echo(f"{post.name}: {post.status}")
            for d in post.diffs:
                click.echo(f"  {d}")
        else:
            print_post(ws, post)
    if report.out_of_date:
        raise click.ClickException("publish/ does not match what the code produces; run `expost build` and commit publish/")
    fail_on_claim_errors(report.posts)


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
    from expost.errors import RunFailures
    from expost.fmt import num
    from expost.runs import verify as verify_mod

    ws, _ = workspace_of(ctx)
    report = ws.verify(post, seeds=k, jobs=jobs)
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


@cli.command(epilog=EPILOG)
@click.argument("posts", nargs=-1)
@selection_options
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--open", "open_", is_flag=True, help="Open the preview in the browser.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel worker processes (default: number of cores).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop a run that takes longer (default: the experiment's TIMEOUT, else none).")
@click.pass_context
def preview(ctx, posts, sel, port, open_, jobs, timeout):
    """Live preview in the browser: reruns what a save made stale and updates the open pages.

    Watches experiments/, templates/ and expost.toml. Renders into the cache, never publish/
    (`expost build` publishes). The URL carries a token: only this user's browser can read it.

    \b
    Examples:
        expost preview                   # every post
        expost preview scurves --open    # one post, opened in the browser
    """
    import webbrowser

    from expost.preview import preview as serve

    root = Workspace(ctx.find_root().obj.get("workspace")).root  # a clear error before anything starts

    def ready(url: str) -> None:
        click.echo(f"expost preview: {url}\n(Ctrl-C to stop)", err=True)
        if open_:
            webbrowser.open(url)

    try:
        serve(root, posts, sel, port=port, jobs=jobs, timeout=timeout, ready=ready,
              log=lambda line: click.echo(line, err=True))
    except OSError as e:
        if e.errno == 98:  # EADDRINUSE
            raise click.UsageError(f"--port {port}: the port is in use; pick another, or --port 0 for any free one")
        raise
    except (KeyboardInterrupt, Terminated) as e:
        click.echo("stopped: completed runs are cached.", err=True)
        # Every run is cached and every worker ended by now; what is left is the interpreter's
        # teardown of torch and matplotlib (about 1 s): skipped, so Ctrl-C takes effect at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143 if isinstance(e, Terminated) else 130)


DIFF_EPILOG = ("Exit codes: 0 no claim's verdict changed; 1 a claim's verdict flipped (in CI: post the report, then "
               "fail the job); 2 no diff could be made (an unknown REV or post, a post not committed at REV, a failed "
               "run, an invalid input); 130 interrupted.")


class DiffUnavailable(click.ClickException):
    """`expost diff` exits 2 when it cannot compare, so that 1 means only "a claim flipped"."""

    exit_code = 2


@cli.command(epilog=DIFF_EPILOG)
@click.argument("rev", required=False, metavar="[REV]")
@click.argument("post", required=False, metavar="[POST]")
@selection_options
@click.option("--format", "format_", type=click.Choice(["text", "md"]), default="text", show_default=True,
              help="text for a terminal; md for a pull request comment.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Write images of the changed figures (before | after | changed pixels) into DIR/POST/ "
                   "(default: the cache's diff/POST/, replaced each time).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel worker processes for the runs the working tree lacks (default: number of cores).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop a run that takes longer (default: the experiment's TIMEOUT, else none).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def diff(ctx, rev, post, sel, format_, out, jobs, timeout, quiet):
    """Compare a post as committed at REV (default HEAD) with the post as the working tree builds it.

    Reports the claims whose verdict flipped (k/n before and after), the numbers that moved beyond
    seed noise (per config and scalar output, paired by seed: the 95% bootstrap CI of the mean
    per-seed difference excludes 0), the figures that changed (SSIM and the share of the area that
    changed, and an image of before, after and the changed pixels), and post.md's prose diff with
    the lines that changed only in numbers folded. Runs what the working tree lacks, as `expost
    build` would, and renders into a temporary folder, never into publish/. One argument naming a
    post is the post (against HEAD); otherwise it is REV. Without POST: every post.

    \b
    Examples:
        expost diff bumps                                 # HEAD vs the working tree
        expost diff main bumps --format md > comment.md   # a pull request comment
        expost diff HEAD~3                                # every post
    """
    try:
        ws, bar = workspace_of(ctx, quiet)
        if rev is not None and post is None and (ws.layout.templates_dir / f"{rev}.md.j2").is_file():
            rev, post = "HEAD", rev
        report = run_and_print(bar, lambda: ws.diff(rev or "HEAD", (post,) if post else (), sel, jobs=jobs,
                                                     timeout=timeout, out=out))
    except ExpostError as e:
        raise DiffUnavailable(str(e)) from None
    from expost.review import report as fmt

    if report.runs is not None:
        print_runs(report.runs)
    click.echo((fmt.markdown if format_ == "md" else fmt.text)(report, ws.layout.rel), nl=False)
    if report.flipped:
        sys.exit(1)


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
    ws, _ = workspace_of(ctx)
    done = ws.publish_gist(post, dry_run=dry_run, remote=remote, public=public, allow_secrets=allow_secrets)
    print_post(ws, done.post)
    if done.dry_run:
        click.echo(json.dumps(done.record, indent=1, sort_keys=True))
        return
    click.echo(f"published {post}: {done.url} at commit {done.record.get('commit', '')[:12]}")
