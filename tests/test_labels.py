"""Labels (issue 16, item 1): what figures, tables and generated sentences call a parameter or
output, from its description or a LABELS literal; numbers along one axis share one format; and the
static spec, remembered across processes, keeps every field (PROFILES, optional outputs, LABELS)."""

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import make_workspace
from expost.cli import cli
from expost.errors import SpecError
from expost.fmt import num, nums
from expost.freshness import StaticSpecs
from expost.layout import Layout
from expost.runs.spec import first_clause, load_static

SCRIPT = '''
PARAMS = {"lr": 0.1, "init_scale": 1e-3, "steps": 20}
SWEEP = {"init_scale": [1e-2, 1e-3, 1e-4]}
PROFILES = {"cpu": {"steps": 10}}
LABELS = {"init_scale": "init scale s", "drop": ("drop step", "steps")}
SEEDS = 3
OUTPUTS = {
    "loss": "series: training loss L at each step (before the update)",
    "drop": "scalar: first step where the loss is halfway down",
    "hit": "scalar?: step where the loss first passes 0.5, none if never",
}


def run(cfg, seed):
    return {"loss": [1.0, 0.5], "drop": 1.0, "hit": None}
'''


def test_labels_come_from_labels_else_the_descriptions_first_clause(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(SCRIPT)
    spec = load_static(path)
    assert spec.axis_label("drop") == "drop step (steps)" and spec.label_of("drop") == "drop step"
    assert spec.axis_label("loss") == "training loss L at each step"  # the first clause of the description
    assert spec.label_of("hit") == "step where the loss first passes 0.5"
    assert spec.label_of("init_scale") == "init scale s" and spec.unit_of("init_scale") == ""
    assert spec.label_of("lr") == "lr" and spec.label_of("steps") == "steps"
    assert first_clause("fraction learned, u^T Z v / sigma") == "fraction learned"
    assert first_clause("loss; summed over entries") == "loss"
    assert first_clause("rate: per step") == "rate"
    assert first_clause("a 10%-90% drop") == "a 10%-90% drop"  # a hyphen inside a word is no clause break


@pytest.mark.parametrize("labels, problem", [
    ('{"nope": "x"}', "LABELS['nope']: is neither a parameter nor an output"),
    ('{"lr": 3}', "LABELS['lr']: 3 is not a label or a (label, unit) pair"),
    ('{"lr": ("rate",)}', "is not a label or a (label, unit) pair"),
    ('{"lr": ""}', "is not a label"),
    ('["lr"]', "LABELS: must be a dict"),
])
def test_a_bad_labels_entry_names_the_field_and_the_fix(tmp_path, labels, problem):
    path = tmp_path / "exp.py"
    path.write_text(SCRIPT.replace('LABELS = {"init_scale": "init scale s", "drop": ("drop step", "steps")}',
                                   f"LABELS = {labels}"))
    with pytest.raises(SpecError) as e:
        load_static(path)
    assert problem in str(e.value) and "Fix: " in str(e.value)


def test_a_remembered_static_spec_keeps_every_field(tmp_path, monkeypatch):
    """The remembered spec (used once a file is older than git's racy window) is the spec: it kept
    neither PROFILES (`--profile cpu` then said "no such profile", and a machine's default profile
    silently ran the paper's setting) nor optional outputs."""
    root = make_workspace(tmp_path / "ws")
    path = root / "experiments" / "exp.py"
    path.write_text(SCRIPT)
    past = time.time() - 100
    os.utime(path, (past, past))
    monkeypatch.chdir(root)
    ws = Layout(root)
    fresh = load_static(path)
    first = StaticSpecs(ws).load([path])[0]  # parsed, then remembered
    again = StaticSpecs(ws).load([path])[0]  # from the record
    for spec in (first, again):
        assert spec.profiles == {"cpu": {"steps": 10}}
        assert spec.outputs["hit"].optional and spec.outputs["hit"].declared == "scalar?"
        assert spec.labels == fresh.labels
        assert (spec.params, spec.sweep, spec.outputs, spec.source_hash) == \
               (fresh.params, fresh.sweep, fresh.outputs, fresh.source_hash)
    # and end to end, in fresh processes: the profile is found every time
    env = {**os.environ, "EXPOST_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "expost", "run", "--profile", "cpu", "-q", "exp"], cwd=root,
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_numbers_along_one_axis_share_one_format():
    assert nums([1e-2, 1e-3, 1e-4]) == ["1e-2", "1e-3", "1e-4"]  # not 0.01, 0.001, 1e-4
    assert nums([0.5, 0.25, 0.75]) == ["0.5", "0.25", "0.75"]
    assert nums([1e-5, 0.001, 0]) == ["1e-5", "1e-3", "0"]
    assert nums([2.5e-4, 1e-3]) == ["2.5e-4", "1e-3"]
    assert nums([10, 100, 3000]) == ["10", "100", "3000"]
    assert nums([1e6, 10]) == ["1e6", "1e1"]
    assert nums([]) == [] and nums([float("nan"), 1e-5]) == ["NaN", "1e-5"]
    assert [num(x) for x in (1e-2, 1e-4)] == ["0.01", "1e-4"]  # one number alone keeps its own format


LABELLED = '''---
title: Labels
summary: Labels everywhere.
experiments: [tiny_torch]
---
{% set r = results("tiny_torch") %}
{{ figure(r, "scalar", "final", by="lr") }}

{{ seed_table(r, "final", by="lr") }}

{{ caveat(r, "final", by="lr") }} {{ compare(r.where(lr=0.05), r.where(lr=0.1), "final", "the slow rate", "the fast rate") }}
'''


def test_figures_tables_and_sentences_use_the_labels(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", ["tiny_torch.py"])
    exp = root / "experiments" / "tiny_torch.py"
    exp.write_text(exp.read_text().replace('SEEDS = 5', 'SEEDS = 5\nLABELS = {"lr": "learning rate η", '
                                                         '"final": ("final loss", "squared units")}'))
    (root / "templates" / "labels.md.j2").write_text(LABELLED)
    monkeypatch.chdir(root)
    r = CliRunner().invoke(cli, ["build", "-q", "labels"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    md = (root / "publish" / "labels" / "post.md").read_text()
    assert "| seed | final loss (squared units) (learning rate η = 0.05) | final loss (squared units) (learning rate η = 0.1) |" in md
    assert "final_loss" not in md and "lr=" not in md.split("## Seed variance")[0]
    assert "![scalar of final loss by learning rate η]" in md
    assert "final loss" in md.split("| seed |")[1]  # the generated comparison names the label


def test_claim_groups_are_shown_with_the_axis_label_and_one_number_format(tmp_path):
    from expost.posts.render import _groups_shown
    from expost.runs.claims import Verdict

    path = tmp_path / "exp.py"
    path.write_text(SCRIPT)
    spec = load_static(path)
    vs = [Verdict("exp", "c", 0, f"init_scale={g}", "holds", 3, 3, 1.0, True) for g in ("0.01", "0.001", "1e-4")]
    vs.append(Verdict("exp", "c", 0, "", "holds", 3, 3, 1.0, True))
    assert [v.group for v in _groups_shown(spec, vs)] == ["init scale s = 1e-2", "init scale s = 1e-3",
                                                         "init scale s = 1e-4", ""]
