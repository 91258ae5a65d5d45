"""The `expost` command's entry point: a warm `expost serve`, if one is up for this workspace, runs
the command; otherwise the CLI does. Kept tiny: it runs before every command, and click is imported
only when the command runs here."""

import sys


def main() -> None:
    from expost.client import forward

    code = forward(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from expost.cli import cli

    cli(prog_name="expost")
