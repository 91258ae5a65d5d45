import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from expost.cli import cli

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """No test ever touches a real cache."""
    d = tmp_path / "cache"
    monkeypatch.setenv("EXPOST_CACHE_DIR", str(d))
    return d


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace with the toy experiment (and a copy named other), and a log of executed runs."""
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    shutil.copy(FIXTURES / "toy.py", root / "experiments" / "toy.py")
    shutil.copy(FIXTURES / "toy.py", root / "experiments" / "other.py")
    ran = tmp_path / "ran.log"
    monkeypatch.setenv("TOY_RAN_LOG", str(ran))
    monkeypatch.chdir(root)
    return root


class Result:
    def __init__(self, r, ran_log):
        self.exit_code = r.exit_code
        self.output = r.output
        self.stdout = r.stdout
        self.stderr = r.stderr
        self.exception = r.exception
        lines = ran_log.read_text().splitlines() if ran_log.exists() else []
        self.ran = lines


@pytest.fixture
def expost(ws, tmp_path):
    """Invoke the CLI in the workspace; .ran lists the runs executed by this invocation."""
    ran = tmp_path / "ran.log"

    def invoke(*args, **kw):
        ran.unlink(missing_ok=True)
        r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)
        return Result(r, ran)

    return invoke


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", help="Rewrite tests/golden/* from the current output.")


def make_workspace(root: Path, experiments=(), templates=()) -> Path:
    """A workspace at `root` holding copies of the named fixture experiments and post templates."""
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    for name in experiments:
        shutil.copy(FIXTURES / name, root / "experiments")
    for name in templates:
        shutil.copy(FIXTURES / "templates" / name, root / "templates")
    return root
