"""The Python API: `expost.Workspace(path)`, one method per verb, progress as observer events."""

import pytest

import expost
from expost.errors import RunFailures, WorkspaceError

from conftest import make_workspace


class Recorder(expost.Progress):
    def __init__(self):
        self.events = []

    def started(self, total):
        self.events.append(("started", total))

    def finished(self, outcome):
        self.events.append(("finished", outcome.run.seed, outcome.ok))


def test_build_a_post_from_a_script(tmp_path):
    root = make_workspace(tmp_path / "ws", ["tiny_torch.py"], ["tiny.md.j2"])
    progress = Recorder()
    ws = expost.Workspace(root, progress=progress)
    report = ws.build("tiny", jobs=1)
    assert [(p.name, p.status) for p in report.posts] == [("tiny", "rendered")]
    assert (report.posts[0].out / "post.md").is_file() and report.posts[0].out == root / "publish" / "tiny"
    assert report.runs.planned == 10 and report.runs.ran == 10 and report.runs.cached == 0
    assert progress.events[0] == ("started", 10)
    assert sorted(e[1] for e in progress.events[1:]) == sorted([1, 2, 3, 4, 5] * 2)
    again = ws.build("tiny")
    assert [(p.name, p.status) for p in again.posts] == [("tiny", "up to date")] and again.runs is None
    verdicts = ws.check("tiny_torch")
    assert {v.verdict for v in verdicts} == {"holds"} and all(v.k_of_n == "5/5" for v in verdicts)
    checked = ws.build(check=True)
    assert checked.out_of_date == [] and checked.posts[0].status == "up to date"


def test_run_with_typed_selection_and_failures(tmp_path):
    root = make_workspace(tmp_path / "ws", ["toy.py"])
    ws = expost.Workspace(root)
    sel = ws.selection(seeds=3, set={"fail_seed": 2}, where={"rate": 0.5})
    with pytest.raises(RunFailures) as info:
        ws.run("toy", sel, jobs=1)
    report = info.value.report
    assert (report.planned, report.ran, report.failed) == (3, 2, 1)
    assert [o.run.seed for o in report.failures] == [2]
    summary = ws.list("toy", sel)[0]
    assert (summary.configs, summary.seeds, summary.cached, summary.planned) == (1, 3, 2, 3)
    reasons = {r.seed: why for r, why in ws.explain("toy", sel)}
    assert reasons == {1: "cached", 2: "failed last time", 3: "cached"}


def test_a_folder_without_experiments_is_a_clear_error(tmp_path):
    with pytest.raises(WorkspaceError, match="no experiments/ folder"):
        expost.Workspace(tmp_path)
