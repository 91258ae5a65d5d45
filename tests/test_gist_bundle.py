"""The gist bundle works from the gist alone: requirements.txt lists what the experiments import,
pinned; reproduce.py reruns the runs and compares them with the recorded results."""

import json
import shutil
import subprocess
import sys
from importlib import metadata

from click.testing import CliRunner

from conftest import FIXTURES
from expost.cli import cli

HELPER = '''"""A local helper module: its imports count too."""
import markdown_it  # the distribution is markdown-it-py: a module name is not a package name


def scale(x):
    return 1.0 * x
'''

TEMPLATE = """---
title: Gist
summary: A post whose gist must run alone.
experiments: [toy]
seeds: 3
---
The final value is {{ stat(results("toy", rate=0.5), "final") }}.
"""


def build(root):
    r = CliRunner().invoke(cli, ["--workspace", str(root), "build", "-j", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r, root / "publish" / "gist" / "gist"


def workspace(tmp_path):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    toy = (FIXTURES / "toy.py").read_text()
    toy = toy.replace("import math\n", "import math\nimport json  # the standard library is not a requirement\n\n"
                                       "import jinja2\nfrom _helper import scale\n", 1)
    toy = toy.replace("    rng = random.Random(seed)\n", "    rng = random.Random(seed)\n    if cfg['rate'] > 9:\n"
                                                            "        import no_such_package_xyz  # noqa: F401\n", 1)
    (root / "experiments" / "toy.py").write_text(toy)
    (root / "experiments" / "_helper.py").write_text(HELPER)
    (root / "templates" / "gist.md.j2").write_text(TEMPLATE)
    return root


def test_requirements_are_what_the_experiments_import_pinned(tmp_path):
    r, gist = build(workspace(tmp_path))
    lines = (gist / "requirements.txt").read_text().splitlines()
    pins = [line.lower() for line in lines if not line.startswith("#")]
    # jinja2 from the experiment, markdown-it-py (module markdown_it) from its helper; nothing else:
    # not the standard library, not the local modules, not the packages expost itself needs
    assert pins == [f"jinja2=={metadata.version('jinja2')}", f"markdown-it-py=={metadata.version('markdown-it-py')}"]
    assert "# no_such_package_xyz: imported, but not installed" in "\n".join(lines)
    assert "no installed package provides `import no_such_package_xyz`" in r.output


def test_reproduce_runs_from_the_gist_alone_and_catches_drift(tmp_path):
    _, gist = build(workspace(tmp_path))
    alone = tmp_path / "elsewhere" / "gist"  # no workspace next to it
    shutil.copytree(gist, alone)
    readme = (alone / "README.md").read_text()
    assert "## Run it" in readme and "python reproduce.py" in readme and "pip install -r requirements.txt" in readme
    env = {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    ok = subprocess.run([sys.executable, "-E", "-s", "reproduce.py"], cwd=alone, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "toy: 6 runs: 6 identical, 0 within tolerance, 0 drifted, 0 failed" in ok.stdout
    one = subprocess.run([sys.executable, "-E", "-s", "toy.py"], cwd=alone, capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr

    results = json.loads((alone / "results-toy.json").read_text())
    results["runs"][0]["scalars"]["final"] *= 1.01
    (alone / "results-toy.json").write_text(json.dumps(results))
    bad = subprocess.run([sys.executable, "-E", "-s", "reproduce.py", "--seeds", "2"], cwd=alone, capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 1
    assert "DRIFTED: final: recorded" in bad.stdout
    assert "toy: 4 runs: 3 identical, 0 within tolerance, 1 drifted, 0 failed" in bad.stdout
