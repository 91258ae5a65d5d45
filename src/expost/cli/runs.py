"""`expost run`, `check`, `log`, `list`: experiments over seeds and their claims."""

from __future__ import annotations

import sys

import click

from expost.cli.app import (
    EPILOG, EXIT_INCONCLUSIVE, selection_options, run_options, executor_flags, cli, workspace_of,
    print_runs, run_and_print,
)


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
