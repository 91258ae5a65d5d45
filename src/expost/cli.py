"""The `expost` command: click over `expost.Workspace`. Each command parses, calls one method, prints."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from expost import __version__
from expost.errors import ExpostError, Terminated
from expost.fmt import num
from expost.workspace import Progress, Workspace

EPILOG = ("Exit codes: 0 success; 1 a claim's verdict was not the expected one, a run failed or an input was "
          "invalid; 2 usage error; 3 a claim is inconclusive and nothing else is wrong (check), or still "
          "undecided when the seed budget is spent (run --until-decided).")
EXIT_INCONCLUSIVE = 3


def selection_options(f):
    """--seeds/--set/--where/--device/--profile: which runs a command is about. Written once, used everywhere."""
    @click.option("--seeds", type=click.IntRange(min=1), default=None,
                  help="Number of seeds (1..N); default: each experiment's SEEDS.")
    @click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                  help="Override a parameter (type-checked against its default). Repeatable.")
    @click.option("--where", multiple=True, metavar="KEY=VALUE",
                  help="Only configs whose parameter KEY equals VALUE. Repeatable.")
    @click.option("--device", default="cpu", show_default=True,
                  help="Device for experiments with a 'device' parameter (cpu, cuda, cuda:1).")
    @click.option("--profile", default=None, metavar="NAME",
                  help="Run under each experiment's PROFILES[NAME] (e.g. a shrunk cpu setting).")
    @functools.wraps(f)
    def wrapper(*args, seeds, set_, where, device, profile, **kwargs):
        from expost.runs.plan import parse_assignments

        try:
            sel = Workspace.selection(seeds, parse_assignments(set_, "--set"), parse_assignments(where, "--where"),
                                      device, profile)
        except ExpostError as e:
            raise click.UsageError(str(e)) from None
        return f(*args, sel=sel, **kwargs)
    return wrapper


def run_options(f):
    """-j/--jobs, --executor, --scheduler, --quiet, --force, --yes, --timeout."""
    for option in reversed((
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
                     help="Stop a run that takes longer (default: the experiment's TIMEOUT, else none)."),
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                     help="Parallel worker processes (default: number of cores); with a Dask scheduler, at most "
                          "this many runs out at once."),
        click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
                     help="Where runs execute: local processes, or a Dask cluster (a LocalCluster of -j workers "
                          "unless --scheduler or expost.toml's [executor] names one). Default: expost.toml's "
                          "[executor], else local."),
        click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                     help="Run on the Dask cluster of this scheduler (implies --executor dask)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
        click.option("--force", is_flag=True, help="Rerun even cached runs."),
        click.option("--yes", is_flag=True, help="Confirm a plan larger than the safety limit."),
    )):
        f = option(f)
    return f


def executor_flags(executor, scheduler) -> None:
    if executor == "local" and scheduler:
        raise click.UsageError(f"--scheduler {scheduler} runs on a Dask cluster, but --executor local runs here: "
                               "drop one of them")


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


class ProgressBar(Progress):
    """Progress on stderr unless --quiet: a bar on a terminal (with the latest step of a run written
    as a generator); otherwise a line when runs start and at least every HEARTBEAT_S seconds, so a
    build whose output goes to a file is never silent for long."""

    HEARTBEAT_S = float(os.environ.get("EXPOST_PROGRESS_S", 30))  # seconds between lines off a terminal

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.total = self.done = 0
        self.latest: dict = {}  # run label -> (its step line, when first seen, first step)
        self.stop = threading.Event()

    def started(self, total: int) -> None:
        self.total, self.done = total, 0
        if self.quiet or not total:
            return
        if sys.stderr.isatty():
            self.bar = click.progressbar(length=total, label="running", file=sys.stderr, show_pos=True,
                                         show_eta=True)
            self.bar.__enter__()
        else:
            click.echo(f"running {total} run(s)", err=True)
            threading.Thread(target=self._heartbeat, daemon=True, name="expost-progress").start()

    def _heartbeat(self) -> None:
        while not self.stop.wait(self.HEARTBEAT_S):
            lines = "; ".join(line for line, _, _ in list(self.latest.values())[-3:])
            click.echo(f"{self.done} of {self.total} run(s) done" + (f"; {lines}" if lines else ""), err=True)

    def step(self, run, values: dict) -> None:
        label = run.title
        now = time.monotonic()
        _, since, first = self.latest.get(label, (None, now, None))
        at = values.get("step", values.get("epoch"))
        total = run.cfg.get("steps", run.cfg.get("epochs")) if "step" in values or "epoch" in values else None
        shown = [f"{'step' if 'step' in values else 'epoch'} {at}" + (f"/{total}" if total else "")] if at is not None else []
        shown += [f"{k} {num(v)}" for k, v in values.items() if k not in ("step", "epoch")][:3]
        if at is not None and first is not None and total and at > first:
            shown.append(f"ETA {(now - since) / (at - first) * (total - at):.0f} s")
        self.latest[label] = (f"{label}: {', '.join(shown)}", since, first if first is not None else at)
        if self.bar:
            self.bar.label = f"{label}: {', '.join(shown)}"[:70]
            self.bar.render_progress()

    def finished(self, outcome) -> None:
        self.done += 1
        self.latest.pop(outcome.run.title, None)
        if self.bar:
            self.bar.update(1)

    def looked(self, look) -> None:
        """--until-decided: each look's runs and what is still undecided, on stderr."""
        print_runs(look.runs)
        from expost.runs.budget import percent

        undecided = look.undecided
        click.echo(f"after {look.seeds} seeds: " + (f"{len(undecided)} claim result(s) undecided at "
                   f"{percent(look.confidence)}:" if undecided else f"every per-seed claim decided at "
                   f"{percent(look.confidence)}"), err=True)
        for a in look.settled:
            click.echo(f"  settled: {a.label}: {a.sentence(budget=False)}", err=True)
        for a in undecided:
            click.echo(f"  {a.label}: {a.sentence(budget=False)}", err=True)

    def corrupt(self, keys) -> None:
        click.echo(f"warning: {len(keys)} corrupt cache entr{'y' if len(keys) == 1 else 'ies'} (checksum mismatch "
                   "or truncated) set aside under the cache's corrupt/ folder; they run again", err=True)

    def close(self) -> None:
        self.stop.set()
        if self.bar:
            self.bar.__exit__(None, None, None)
            self.bar = None


def workspace_of(ctx, quiet: bool = True) -> tuple[Workspace, ProgressBar]:
    bar = ProgressBar(quiet)
    return Workspace(ctx.find_root().obj.get("workspace"), progress=bar), bar


@contextlib.contextmanager
def interruptible(bar: ProgressBar):
    """Ctrl-C: one line and exit 130; SIGTERM: one line and exit 143 (completed runs are cached as
    they finish; workers and the processes runs started are ended)."""
    try:
        yield
    except Terminated:
        bar.close()
        click.echo("terminated: completed runs are cached; run the same command again to finish.", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        bar.close()
        click.echo("interrupted: completed runs are cached; run the same command again to finish.", err=True)
        sys.exit(130)
    finally:
        bar.close()


def print_runs(report) -> None:
    """The summary line and the runs flagged for NaN/inf, on stderr."""
    more = f" (+{report.extra} more seeds of their batch blocks)" if report.extra else ""
    click.echo(f"{report.planned} planned run(s): {report.cached} cached, {report.ran} ran{more}, "
               f"{report.failed} failed ({report.wall_s:.1f} s)", err=True)
    if report.workspace_writes:
        shown = ", ".join(report.workspace_writes[:8]) + (" ..." if len(report.workspace_writes) > 8 else "")
        click.echo(f"warning: runs wrote into the workspace: {shown}. Seeds running at once overwrite such files "
                   "and expost does not keep them; write to the folder os.environ['EXPOST_ARTIFACTS'] names "
                   "instead (kept with each run, listed in the manifest)", err=True)
    for o in report.flagged:
        click.echo(f"flagged: {o.run.title} produced NaN/inf in "
                   f"{', '.join(o.nonfinite)}", err=True)


def run_and_print(bar: ProgressBar, call):
    """Call a verb that runs experiments; print its run summary even when runs failed."""
    from expost.errors import RunFailures

    with interruptible(bar):
        try:
            return call()
        except RunFailures as e:
            if getattr(e, "report", None) is not None:
                print_runs(e.report)
            raise


@cli.command(epilog=EPILOG)
@click.argument("experiments", nargs=-1)
@selection_options
@run_options
@click.option("--explain", is_flag=True, help="Print for each planned run whether it is cached and why not; run nothing.")
@click.option("--until-decided", is_flag=True,
              help="Then add blocks of 10 seeds until every per-seed claim is decided at --confidence, or "
                   "--max-seeds is spent (exit 3 if a claim is still undecided).")
@click.option("--max-seeds", type=click.IntRange(min=1), default=None,
              help="With --until-decided: the most seeds in all (default 100).")
@click.option("--confidence", type=click.FloatRange(0.5, 1, min_open=True, max_open=True), default=None,
              help="With --until-decided: the confidence over all looks together (default 0.9).")
@click.pass_context
def run(ctx, experiments, sel, jobs, executor, scheduler, quiet, force, yes, timeout, explain, until_decided,
        max_seeds, confidence):
    """Run experiments over seeds; only runs not in the cache execute.

    With --until-decided it runs the selected seeds (--seeds, default each experiment's SEEDS),
    judges the claims, and adds seeds in blocks of 10 (11-20, 21-30, ...) until every per-seed
    claim is decided or --max-seeds is spent. Decided: at least the confidence of the Jeffreys
    posterior of the per-seed rate lies on one side of the claim's min_frac. Looking after every
    block is peeking, so each look needs 1 - (1 - confidence) / L, where L is the number of looks
    planned up to --max-seeds (Bonferroni): all of a claim's looks together decide it wrongly
    with chance at most 1 - confidence; a claim decided at a look stays decided. Exits 0 when
    every per-seed claim is decided, 3 when the budget is spent first, 1 when a run fails
    (completed runs stay cached) or a check errs.

    \b
    Examples:
        expost run                      # every experiment, default seeds
        expost run scurves --seeds 20 -j 2
        expost run scurves --set lr=0.01 --where model=factored
        expost run --explain            # what would run, and why
        expost run --scheduler tcp://10.0.0.5:8786   # on a Dask cluster
        expost run bumps --until-decided --max-seeds 60
    """
    executor_flags(executor, scheduler)
    ws, bar = workspace_of(ctx, quiet)
    if not until_decided and (max_seeds is not None or confidence is not None):
        raise click.UsageError(f"{'--max-seeds' if max_seeds is not None else '--confidence'} applies only with "
                               "--until-decided; add it, or drop the option")
    if until_decided:
        if explain or force:
            raise click.UsageError(f"--until-decided cannot be combined with {'--explain' if explain else '--force'}; "
                                   "run that first with --seeds N, then --until-decided")
        done = run_and_print(bar, lambda: ws.run_until_decided(
            experiments, sel, max_seeds=max_seeds or 100, confidence=confidence or 0.9, jobs=jobs, yes=yes,
            timeout=timeout, executor=executor, scheduler=scheduler))
        print_until_decided(done, experiments, sel, max_seeds or 100)
        return
    if explain:
        for r, reason in ws.explain(experiments, sel, yes=yes):
            click.echo(f"{r.experiment}\t{r.label}\tseed {r.seed}\t{'rerun (--force)' if force else reason}")
        return
    print_runs(run_and_print(bar, lambda: ws.run(experiments, sel, jobs=jobs, force=force, yes=yes, timeout=timeout,
                                                 executor=executor, scheduler=scheduler)))


def print_until_decided(done, experiments, sel, max_seeds: int) -> None:
    """How `run --until-decided` ended, on stderr; exit 3 when the seed budget was spent first, 1
    when a claim's check errs."""
    from expost.runs.budget import percent

    last = done.last
    at = (f"{percent(done.confidence)} over {len(done.schedule)} planned look(s), {percent(done.per_look)} at each "
          "(Bonferroni)")
    reasons: dict = {}  # one line per reason: "bumps CLAIMS[0] (3 groups), CLAIMS[3] (3 groups)"
    for a in done.not_decidable:
        reasons.setdefault(a.reason, {}).setdefault(f"{a.experiment} CLAIMS[{a.index}]", []).append(a.group)
    for reason, claims in reasons.items():
        shown = ", ".join(name + (f" ({len(groups)} groups)" if len(groups) > 1 else "")
                          for name, groups in claims.items())
        click.echo(f"not for seeds to decide: {shown}: {reason}", err=True)
    for seeds, a in done.settled.values():
        click.echo(f"settled at {seeds} seeds: {a.label}: {a.sentence(budget=False)}", err=True)
    if last.errors:
        raise click.ClickException(f"{len(last.errors)} claim check(s) could not be evaluated: "
                                   + "; ".join(f"{v.experiment} CLAIMS[{v.index}]: {v.detail}" for v in last.errors)
                                   + ". Fix them in the experiment's CLAIMS (`expost check` shows them)")
    names = " ".join(experiments)
    same = " (with this command's --set/--where/--profile)" if sel.set or sel.where or sel.profile else ""
    if done.decided:
        click.echo(f"decided: every per-seed claim is settled at {last.seeds} seeds ({at}). Verdicts: "
                   f"`expost check {names + ' ' if names else ''}--seeds {last.seeds}`{same}; to publish them, set "
                   f"SEEDS = {last.seeds} in the experiment (or seeds: {last.seeds} in the post's front matter)",
                   err=True)
        return
    click.echo(f"seed budget spent: {len(last.undecided)} claim result(s) still undecided at {last.seeds} seeds "
               f"(--max-seeds {max_seeds}; {at}):", err=True)
    for a in last.undecided:
        click.echo(f"  {a.label}: {a.sentence(budget=False)}", err=True)
    click.echo("raise --max-seeds to go on (cached seeds are reused), or report these claims as undecided", err=True)
    sys.exit(EXIT_INCONCLUSIVE)


def print_advice(budget, sel) -> None:
    """`expost check`'s seed budget, under the table: one line per claim that more seeds could settle."""
    wanted = budget.wanted
    if not wanted:
        return
    from expost.runs.budget import percent

    click.echo(f"\nseed budget (a claim is decided when {percent(budget.confidence)} of its per-seed rate's posterior "
               "lies on one side of min_frac; README: Seed budget):")
    for a in wanted:
        click.echo(f"  {a.label}: {a.sentence(command=True)}")
    if sel.set or sel.where or sel.profile:
        click.echo("  (add this check's --set/--where/--profile to the suggested commands)")


CLAIM_WIDTH = 48  # the claim column wraps here: whole sentences, never cut


def _verdict_table(verdicts) -> list[str]:
    """One row per claim (and group): the whole claim sentence, wrapped in its column; what the
    count means (k of n seeds and the fraction needed, or one verdict on all seeds together)."""
    import textwrap

    rows = [(("experiment",), ("claim",), ("group",), ("verdict",), ("seeds",), ("numbers",))]
    for v in verdicts:
        if v.per_seed:
            count = f"{v.k}/{v.n} hold" + (f" (need {v.min_frac:.0%})" if v.min_frac < 1 else " (need all)")
        else:
            count = f"one test on all {v.n_seeds}"
        extra = v.numbers or v.detail
        if v.missing:
            extra = (extra + "; " if extra else "") + f"{v.missing} seed(s) missing"
        verdict = v.verdict if not v.xfail else f"{v.verdict} ({'xfail' if v.verdict != 'holds' else 'XPASS'})"
        rows.append(((v.experiment,), tuple(textwrap.wrap(v.claim, CLAIM_WIDTH)) or ("",), (v.group or "-",),
                     (verdict,), (count,), (extra,)))
    widths = [max(len(line) for r in rows for line in r[i]) for i in range(5)]
    out = []
    for r in rows:
        for i in range(max(len(cell) for cell in r)):
            cells = [cell[i] if i < len(cell) else "" for cell in r]
            out.append(("  ".join(c.ljust(w) for c, w in zip(cells[:5], widths)) + "  " + cells[5]).rstrip())
    return out


def _verdict_counts(verdicts, unexpected, inconclusive) -> str:
    """'12 claim results: 9 holds, 1 fails, 2 inconclusive; 10 as expected, 2 inconclusive'."""
    kinds: dict[str, int] = {}
    for v in verdicts:
        kinds[v.verdict] = kinds.get(v.verdict, 0) + 1
    expected = {"as expected": len(verdicts) - len(unexpected) - len(inconclusive), "unexpected": len(unexpected),
                "inconclusive": len(inconclusive)}
    if not verdicts:
        return "no claims declared"
    return (f"{len(verdicts)} claim result(s): " + ", ".join(f"{n} {k}" for k, n in kinds.items()) + "; "
            + ", ".join(f"{n} {k}" for k, n in expected.items() if n))


@cli.command(epilog=EPILOG)
@click.argument("experiments", nargs=-1)
@selection_options
@click.option("--allow-inconclusive", is_flag=True, help="Exit 0 when the only problem is an inconclusive claim.")
@click.option("--confidence", type=click.FloatRange(0.5, 1, min_open=True, max_open=True), default=0.9,
              show_default=True, help="The posterior mass on one side of min_frac that decides a claim (seed budget).")
@click.pass_context
def check(ctx, experiments, sel, allow_inconclusive, confidence):
    """Evaluate every claim across the cached seeds and print a verdict table.

    Exits 0 when every verdict is the expected one (a claim marked "xfail" is expected not to
    hold), 1 when one is not (a claim fails, an xfail claim holds, or a check errs), and 3 when
    nothing is wrong but a claim is inconclusive (missing runs, too few seeds), unless
    --allow-inconclusive. Runs nothing: run `expost run` first.

    Under the table, the seed budget: each per-seed claim that its seeds do not decide at
    --confidence, with the seeds in all that would settle it with a chance of about 80%
    (README: Seed budget). It changes no verdict and no exit code.

    \b
    Example:
        expost run scurves && expost check scurves
    """
    from expost.runs.claims import surprises

    ws, _ = workspace_of(ctx)
    budget = ws.seed_budget(experiments, sel, confidence=confidence)
    verdicts = budget.verdicts
    for line in _verdict_table(verdicts):
        click.echo(line.rstrip())
    print_advice(budget, sel)
    unexpected, inconclusive = surprises(verdicts)
    click.echo(_verdict_counts(verdicts, unexpected, inconclusive), err=True)
    if unexpected:
        sys.exit(1)
    if inconclusive and not allow_inconclusive:
        click.echo("inconclusive claims: run the missing seeds (`expost run`), or pass --allow-inconclusive", err=True)
        sys.exit(EXIT_INCONCLUSIVE)


@cli.command(epilog=EPILOG)
@click.argument("experiment")
@click.option("--seed", type=click.IntRange(min=1), default=None, help="Only this seed.")
@selection_options
@click.pass_context
def log(ctx, experiment, seed, sel):
    """Show what runs printed: a cached run's output, or a failed run's log and traceback.

    \b
    Examples:
        expost log scurves --seed 3 --where rank=1
        expost log toy                 # every planned run of toy
    """
    ws, _ = workspace_of(ctx)
    for entry in ws.logs(experiment, sel, seed=seed):
        r = entry.run
        where = f" ({ws.layout.rel(entry.path)})" if entry.path else ""
        click.echo(f"==> {r.title}: {entry.status}{where}")
        if entry.text:
            click.echo(entry.text.rstrip("\n"))
        for rel, path in entry.artifacts.items():
            click.echo(f"artifact {rel}: {path}")


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
    ws, _ = workspace_of(ctx)
    for e in ws.list(experiments, sel):
        if e.verdicts is None:
            claims = "claims: run `expost check`"
        else:
            counts: dict = {}
            for v in e.verdicts:
                counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
            claims = "claims: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none")
        click.echo(f"{e.name}\t{e.configs} config(s) x {e.seeds} seed(s)\t{e.cached}/{e.planned} cached\t{claims}")


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

    paths, ok, note = scaffold.new_workspace(path)
    for p in paths:
        click.echo(p)
    click.echo(("git: " if ok else "warning: ") + note, err=True)


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

    ws, _ = workspace_of(ctx)
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

    ws, _ = workspace_of(ctx)
    click.echo(scaffold.new_post(ws.layout, name, experiment))


@cli.command(epilog=EPILOG)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Experiment name (default: the file's name).")
@click.option("--no-post", is_flag=True, help="Write only the experiment, not the starter post.")
@click.pass_context
def adopt(ctx, file, name, no_post):
    """Turn a script or notebook into experiments/NAME.py and a starter post templates/NAME.md.j2.

    Reads a "# %%" cell script, an argparse script, a script with a config dataclass, or a .ipynb
    notebook. Constants, argument defaults or the config's fields become PARAMS; the code moves
    into run(cfg, seed) (cells keep their markers); what it logs (lists it appends to, wandb.log,
    tqdm postfixes, printed metrics) becomes proposed OUTPUTS, marked for you to confirm. Never
    overwrites a file; prints what it changed and what it could not decide.

    \b
    Example:
        expost adopt ~/research/grokking.py && expost run grokking --seeds 1
    """
    from expost.adopt import adopt as adopt_file

    ws, _ = workspace_of(ctx)
    done = adopt_file(ws.root, file, name, post=not no_post)
    for path in done.written:
        click.echo(ws.layout.rel(path))
    for line in done.changed:
        click.echo(f"changed: {line}", err=True)
    for line in done.undecided:
        click.echo(f"could not decide: {line}", err=True)
    click.echo(f"next: confirm OUTPUTS in {ws.layout.rel(done.experiment)} (see \"expost: confirm\"), write CLAIMS, "
               f"then `expost run {done.experiment.stem} --seeds 1`", err=True)


def main():
    """The `expost` console script. SIGTERM stops it as Ctrl-C does (exit 143)."""
    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    cli(prog_name="expost")


if __name__ == "__main__":
    main()
