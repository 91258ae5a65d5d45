"""The `expost` command group and what its commands share: options, the progress bar, the
workspace, Ctrl-C. The commands live beside it, one module per stage (runs, posts, new)."""

from __future__ import annotations

import contextlib
import functools
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


def main():
    """The `expost` console script. SIGTERM stops it as Ctrl-C does (exit 143)."""
    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    cli(prog_name="expost")

