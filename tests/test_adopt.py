"""`expost adopt FILE`: research code as it arrives (a "# %%" cell script, an argparse main(), a
config dataclass logging to wandb, a notebook) becomes an experiment that loads, runs one seed
through expost, runs alone with `python`, and still steps cell by cell."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from expost.cli import cli
from expost.runs.spec import import_script, load_static

ADOPT = Path(__file__).parent / "fixtures" / "adopt"
CASES = {  # fixture -> (experiment, some of its PARAMS, its proposed OUTPUTS with their kinds)
    "grokking.py": ("grokking", {"P": 23, "LR": 1e-2, "STEPS": 2000},
                    {"train_losses": "series", "test_accs": "series", "final_train_acc": "scalar", "test_acc": "scalar"}),
    "sine_mlp.py": ("sine_mlp", {"hidden": 32, "n_train": 256, "lr": 1e-2}, {"history": "series", "test_mse": "scalar"}),
    "teacher_student.py": ("teacher_student", {"width": 64, "steps": 400},
                           {"train_loss": "series", "val_loss": "series"}),
    "margins.ipynb": ("margins", {"n": 200, "sep": 3.0, "steps": 300}, {"loss": "series", "norm": "series"}),
}
WANDB_BLOCKED = "raise ImportError('the adopted file must not need wandb')\n"


def adopt(root: Path, *args):
    return CliRunner().invoke(cli, ["--workspace", str(root), "adopt", *map(str, args)])


def workspace(root: Path) -> Path:
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    return root


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    """One workspace holding the four fixtures, adopted; an environment where wandb cannot be imported."""
    root = workspace(tmp_path_factory.mktemp("adopted"))
    blocker = tmp_path_factory.mktemp("blocked") / "wandb"
    blocker.mkdir()
    (blocker / "__init__.py").write_text(WANDB_BLOCKED)
    for name in CASES:
        r = adopt(root, ADOPT / name)
        assert r.exit_code == 0, r.output
    env = {**os.environ, "PYTHONPATH": str(blocker.parent), "OMP_NUM_THREADS": "1",
           "EXPOST_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    return root, env


@pytest.mark.parametrize("fixture", CASES)
def test_the_adopted_file_is_a_valid_experiment_with_the_proposed_outputs(adopted, fixture):
    root, _ = adopted
    name, params, outputs = CASES[fixture]
    spec = load_static(root / "experiments" / f"{name}.py")
    assert {k: spec.params[k] for k in params} == params
    assert {n: o.kind for n, o in spec.outputs.items()} == outputs
    assert all("guessed from" in o.description for o in spec.outputs.values())  # a guess says so
    text = (root / "experiments" / f"{name}.py").read_text()
    assert "# expost: confirm these outputs" in text and "def run(cfg, seed):" in text
    assert (root / "templates" / f"{name}.md.j2").exists()


def test_each_adopted_file_runs_one_seed_through_expost_and_the_starter_post_builds(adopted):
    root, env = adopted
    run = lambda *args: subprocess.run([sys.executable, "-m", "expost", *args], cwd=root, env=env,
                                       capture_output=True, text=True, timeout=300)
    r = run("run", "sine_mlp", "teacher_student", "margins", "--seeds", "1", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert "3 ran, 0 failed" in r.stderr
    r = run("build", "grokking", "--seeds", "1", "--set", "STEPS=40")
    assert r.returncode == 0, r.stderr
    post = (root / "publish" / "grokking" / "post.md").read_text()
    assert "def run(cfg, seed):" in post and post.count("![curves of") == 2 and "| seed | final train acc" in post


def test_each_adopted_file_runs_alone_with_python_and_without_wandb(adopted):
    root, env = adopted
    args = {"grokking": [], "sine_mlp": ["--epochs", "20"], "teacher_student": [], "margins": []}
    procs = {name: subprocess.Popen([sys.executable, f"experiments/{name}.py", *extra], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, extra in args.items()}
    out = {name: p.communicate(timeout=300) + (p.returncode,) for name, p in procs.items()}
    for name, (stdout, stderr, code) in out.items():
        assert code == 0, (name, stderr[-2000:])
    assert "test_acc 1.0" in out["grokking"][0]  # the defaults grok: test accuracy reaches 1 with seed 1
    assert "test mse" in out["sine_mlp"][0]
    assert "loss 300 values" in out["margins"][0]


def test_the_adopted_cells_still_step_one_by_one(adopted):
    """As VS Code runs a cell: its code dedented to its marker, in one namespace, top to bottom,
    stopping before the cell that returns."""
    root, _ = adopted
    text = (root / "experiments" / "grokking.py").read_text()
    cells = re.split(r"(?m)^[ \t]*# %%.*$", text)
    ns = {"__name__": "__main__"}
    stepped = 0
    for cell in cells:
        if cell.lstrip().startswith("return {"):
            break
        exec(compile(textwrap.dedent(cell), "cell", "exec"), ns)
        stepped += 1
        if "cfg" in ns and ns["cfg"]["STEPS"] != 30:
            ns["cfg"]["STEPS"] = 30  # the first cells set cfg from PARAMS: keep the stepping short
    assert stepped >= 6
    assert len(ns["train_losses"]) == 30 and 0 <= ns["test_acc"] <= 1


def test_each_run_is_seeded_from_its_seed(adopted):
    """The script seeded torch with a constant (SEED = 0); adopted, seed 1 and seed 2 differ and
    seed 1 repeats exactly."""
    root, _ = adopted
    module = import_script(root / "experiments" / "grokking.py")
    cfg = {**module.PARAMS, "STEPS": 5}
    one, again, two = module.run(cfg, 1), module.run(cfg, 1), module.run(cfg, 2)
    assert one["train_losses"] == again["train_losses"] != two["train_losses"]


def test_argparse_main_keeps_its_command_line_and_calls_run(adopted):
    root, _ = adopted
    text = (root / "experiments" / "sine_mlp.py").read_text()
    assert "args = parser.parse_args()\n    return run(vars(args), args.seed)" in text
    assert 'args = argparse.Namespace(**{"save": None, **cfg, "seed": seed})' in text


def test_wandb_is_replaced_by_the_recorder(adopted):
    root, _ = adopted
    text = (root / "experiments" / "teacher_student.py").read_text()
    assert "# import wandb" in text and "wandb = logged" in text
    assert '"train_loss": logged.series("train/loss")' in text


def test_adopt_never_overwrites(tmp_path):
    root = workspace(tmp_path / "ws")
    assert adopt(root, ADOPT / "grokking.py").exit_code == 0
    before = (root / "experiments" / "grokking.py").read_text()
    r = adopt(root, ADOPT / "grokking.py")
    assert r.exit_code == 1
    assert "grokking.py already exists" in r.output and "--name" in r.output
    assert (root / "experiments" / "grokking.py").read_text() == before
    (root / "templates" / "other.md.j2").write_text("mine\n")
    r = adopt(root, ADOPT / "grokking.py", "--name", "other")
    assert r.exit_code == 1 and "other.md.j2 already exists" in r.output
    assert not (root / "experiments" / "other.py").exists()  # nothing half-written
    assert (root / "templates" / "other.md.j2").read_text() == "mine\n"
    assert adopt(root, ADOPT / "grokking.py", "--name", "grokking2", "--no-post").exit_code == 0
    assert not (root / "templates" / "grokking2.md.j2").exists()


UNDECIDED = '''\
# %%
import json
import sys
import torch
import wandb

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = (64, 64)
STEPS = 20
WIDTH = 8
WIDTH = 16

# %%
metrics = {"loss": 0.0}
torch.manual_seed(0)
x = torch.randn(STEPS, WIDTH, device=DEVICE)
for t in range(STEPS):
    metrics["loss"] = float(x[t].pow(2).mean())
    wandb.log(metrics)
    print(f"loss {metrics['loss']:.3f}")
with open(__file__ + ".json", "w") as f:
    json.dump(metrics, f)
sys.exit(0)
'''


def test_adopt_reports_what_it_changed_and_what_it_could_not_decide(tmp_path):
    root = workspace(tmp_path / "ws")
    script = tmp_path / "messy.py"
    script.write_text(UNDECIDED)
    r = adopt(root, script)
    assert r.exit_code == 0, r.output
    undecided = [line for line in r.stderr.splitlines() if line.startswith("could not decide: ")]
    for expected in ("DEVICE = ", "not a literal", "SIZES = (64, 64)", "WIDTH is changed later",
                     "wandb.log(metrics)", "__file__", "sys.exit(0)", "json.dump(metrics, f) writes a file"):
        assert any(expected in line for line in undecided), (expected, undecided)
    assert "changed: line 15: torch.manual_seed(0) now seeds with each run's seed" in r.stderr
    spec = load_static(root / "experiments" / "messy.py")
    assert spec.params == {"STEPS": 20}
    assert list(spec.outputs) == ["loss"] and "print" in spec.outputs["loss"].description


@pytest.mark.parametrize("name, text, message", [
    ("notes.txt", "x = 1\n", "reads a Python script (.py) or a notebook (.ipynb)"),
    ("broken.py", "# %%\nx = 1\nfor i in range(3)\n    x += i\n", "broken.py, line 3: syntax error"),
    ("quiet.py", "import torch\nSTEPS = 3\nx = torch.zeros(STEPS)\n", "found nothing it logs"),
    ("done.py", "PARAMS = {}\nOUTPUTS = {}\ndef run(cfg, seed):\n    return {}\n", "is an expost experiment already"),
    ("clash.py", "def run(n):\n    losses = []\n    losses.append(n)\n    return losses\nrun(3)\n", "rename yours"),
])
def test_a_file_adopt_cannot_take_is_one_clear_error(tmp_path, name, text, message):
    root = workspace(tmp_path / "ws")
    (tmp_path / name).write_text(text)
    r = adopt(root, tmp_path / name)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert not list((root / "experiments").iterdir())


def test_a_notebook_error_names_the_cell_and_a_bad_name_is_refused(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    root = workspace(tmp_path / "ws")
    nb = new_notebook(cells=[new_code_cell("losses = []"), new_code_cell("for i in range(3)\n    losses.append(i)")])
    nbformat.write(nb, tmp_path / "bad.ipynb")
    r = adopt(root, tmp_path / "bad.ipynb")
    assert r.exit_code == 1 and "bad.ipynb, cell 2, line 1: syntax error" in r.output
    r = adopt(root, ADOPT / "grokking.py", "--name", "_helper")
    assert r.exit_code == 1 and "--name '_helper'" in r.output
    assert json.loads((ADOPT / "margins.ipynb").read_text())["nbformat"] == 4
