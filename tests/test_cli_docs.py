"""Every command has help with an example and is documented in the README (as sqlite-utils does)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from expost.cli import cli

REPO = Path(__file__).resolve().parents[1]


def all_commands(group=cli, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("command", list(all_commands()), ids=" ".join)
def test_command_has_help_with_example_and_readme_entry(command):
    r = CliRunner().invoke(cli, [*command, "--help"])
    assert r.exit_code == 0
    assert "Example" in r.output, f"expost {' '.join(command)} --help has no example"
    readme = (REPO / "README.md").read_text()
    assert f"expost {' '.join(command)}" in readme, f"README does not mention expost {' '.join(command)}"


def test_exit_codes_are_documented():
    readme = (REPO / "README.md").read_text()
    for code in ("0", "1", "2"):
        assert re.search(rf"\|\s*`?{code}`?\s*\|", readme), f"exit code {code} missing from the README table"


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "expost", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "expost" in r.stdout


def test_scurves_runs_with_torch_but_without_expost(tmp_path):
    """A gist reader has torch, not expost: the script must not import it."""
    blocker = tmp_path / "expost"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('experiment scripts must not import expost')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, str(REPO / "experiments" / "scurves.py")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "final_loss:" in r.stdout and "drop_step:" in r.stdout


def test_every_template_helper_is_documented_in_the_readme():
    from expost.posts.render import Helpers

    readme = (REPO / "README.md").read_text()
    bare = Helpers.__new__(Helpers)
    bare.i = type("NoInputs", (), {"post": None})()
    helpers = [name for name, value in bare.globals().items() if callable(value)]
    assert {"results", "stat", "figure", "code", "claim", "verdict", "caveat", "compare", "seed_table"} <= set(helpers)
    for name in helpers:
        assert re.search(rf"\| `{name}\(", readme), f"template helper {name}() is not in the README's helper table"
