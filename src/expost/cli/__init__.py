"""The `expost` command: click over `expost.Workspace`. Each command parses, calls one method, prints.

`app` holds the group and what commands share; `runs`, `posts` and `new` hold the commands (importing
them registers them on the group)."""

from expost.cli import new, posts, runs  # noqa: F401  (registers the commands)
from expost.cli.app import cli, main

__all__ = ["cli", "main"]
