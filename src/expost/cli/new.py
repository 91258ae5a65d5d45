"""`expost new ...` and `expost adopt`: a workspace, an experiment or a post to start from."""

from __future__ import annotations

from pathlib import Path

import click

from expost.cli.app import (EPILOG, cli, workspace_of)


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
