"""The render stage on fixed synthetic results: golden file, helpers, template errors."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from expost.runs.claims import evaluate
from expost.posts.codeembed import extract
from expost.errors import TemplateError
from expost.posts.post import load_post
from expost.posts.render import Inputs, render
from expost.runs.results import Record, ResultSet
from expost.runs.spec import load_full

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"

FINALS = {0.5: [0.12, 0.1, 0.35, 0.11, 0.13, 0.09, 0.12, 0.1, 0.14, 0.11],
          1.0: [0.01, 0.012, 0.011, 0.009, 0.01, 0.013, 0.011, 0.01, 0.012, 1.5]}


def synthetic(spec) -> ResultSet:
    records = []
    for rate, finals in FINALS.items():
        for seed, final in enumerate(finals, start=1):
            curve = np.exp(-rate * np.arange(20)) * (1 + 0.01 * seed)
            cfg = {**spec.params, "rate": rate}
            records.append(Record("toy", {"rate": rate}, cfg, seed, {"final": final}, lambda name, c=curve: c))
    return ResultSet(records, {n: o.kind for n, o in spec.outputs.items()}, "toy")


@pytest.fixture
def post_ws(tmp_path):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    shutil.copy(FIXTURES / "toy.py", root / "experiments" / "toy.py")
    shutil.copytree(FIXTURES / "templates", root / "templates")
    return root


def render_post(root, name="golden", out=None):
    spec = load_full(root / "experiments" / "toy.py")
    rs = synthetic(spec)
    inputs = Inputs(load_post(root / "templates" / f"{name}.md.j2"), {"toy": spec}, {"toy": rs},
                    {"toy": evaluate(spec, rs, 10)}, {"toy": list(range(1, 11))}, f"expost build {name}")
    out = out or root / "out"
    out.mkdir(exist_ok=True)
    return render(inputs, root / "templates", out), out


def test_golden_post(post_ws, request):
    rendered, out = render_post(post_ws)
    golden = GOLDEN / "golden.md"
    if request.config.getoption("--update-goldens"):
        golden.write_text(rendered.markdown)
    assert rendered.markdown == golden.read_text(), "rendered post differs; rerun with --update-goldens if intended"
    assert (out / "figures" / "fig1-curves-curve-rate.png").stat().st_size > 0


def test_render_is_deterministic(post_ws, tmp_path):
    a, out_a = render_post(post_ws, out=tmp_path / "a")
    b, out_b = render_post(post_ws, out=tmp_path / "b")
    assert a.markdown == b.markdown
    for f in a.figures:
        assert (out_a / f).read_bytes() == (out_b / f).read_bytes()


@pytest.mark.parametrize("body,line,fragment", [
    ("{{ resluts('toy') }}", 7, "'resluts' is undefined"),
    ("ok\n\n{{ stat(results('toy').where(rate=1.0), 'finale') }}", 9, "no output 'finale'"),
    ("{{ code('toy', 'nope') }}", 7, "no function or class 'nope'"),
    ("{% for x in %}", 7, "syntax error"),
    ("{{ figure(results('toy'), 'curves', 'nope', by='rate') }}", 7, "no output 'nope'"),
    ("{{ results('scurves') }}", 7, "not in this post's front matter"),
    ("\n{{ 1 / 0 }}", 8, "ZeroDivisionError"),
    ("{{ claim('toy', 7) }}", 7, "toy has 2 claims"),
    ("{{ figure(results('toy'), 'curves', 'curve', xlim=[5]) }}", 7, "give two numbers, lowest first"),
    ("{{ figure(results('toy'), 'curves', 'curve', xlim=[9, 2]) }}", 7, "give two numbers, lowest first"),
    ("{{ figure(results('toy'), 'curves', 'curve', hline='half') }}", 7, "give a number or a list of numbers"),
    ("{{ figure(results('toy'), 'scalar', 'final', by='rate', xlim=[0, 1]) }}", 7, "xlim applies to curves"),
    ("{{ figure(results('toy'), 'run', hline=1) }}", 7, "a figure function draws its own axes"),
])
def test_template_errors_name_file_and_line(post_ws, body, line, fragment):
    head = (post_ws / "templates" / "golden.md.j2").read_text().split("---")[1]
    (post_ws / "templates" / "bad.md.j2").write_text(f"---{head}---\n{body}\n")
    with pytest.raises(TemplateError) as e:
        render_post(post_ws, "bad")
    assert f"bad.md.j2:{line}" in str(e.value)
    assert fragment in str(e.value)


@pytest.mark.parametrize("text,fragment", [
    ("title: x\n", "missing front matter"),
    ("---\ntitle: x\nsummary: y\n", "not closed"),
    ("---\ntitle: x\nsummary: y\n---\n", "needs 'experiments'"),
    ("---\ntitle: x\nsummary: y\nexperiments: [toy]\nauthor: me\n---\n", "unknown front matter key 'author'"),
    ("---\ntitle: x\nsummary: y\nexperiments: [toy\n---\n", "unclosed list"),
])
def test_front_matter_errors(tmp_path, text, fragment):
    p = tmp_path / "p.md.j2"
    p.write_text(text)
    with pytest.raises(TemplateError, match=fragment.replace("[", r"\[")):
        load_post(p)


def test_code_helper_returns_exact_source_lines():
    path = FIXTURES / "toy.py"
    lines = path.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("def run("))
    end = next(i for i, l in enumerate(lines) if l.startswith("    return {\"curve\""))
    assert extract(path, "run") == "\n".join(lines[start:end + 1])
    with pytest.raises(TemplateError, match="no function or class 'nope' in toy.py; defined: run"):
        extract(path, "nope")


def test_code_helper_regions_and_methods(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("class A:\n    @staticmethod\n    def f():\n        return 1\n\n# region: core\nx = 1\ny = 2\n# endregion\n")
    assert extract(p, "A.f") == "@staticmethod\ndef f():\n    return 1"
    assert extract(p, region="core") == "x = 1\ny = 2"
    with pytest.raises(TemplateError, match="no region 'other'.*regions: core"):
        extract(p, region="other")


def test_a_failing_figure_function_is_reported_with_its_figure(post_ws):
    head = (post_ws / "templates" / "golden.md.j2").read_text().split("---")[1]
    body = "{{ figure(results('toy'), 'curves', 'curve', by='rate') }}\n{{ figure(results('toy'), 'broken') }}\n"
    (post_ws / "templates" / "bad.md.j2").write_text(f"---{head}---\n{body}")
    exp = post_ws / "experiments" / "toy.py"
    exp.write_text(exp.read_text() + "\n\ndef figure_broken(ax, r):\n    raise ValueError('no data')\n")
    with pytest.raises(TemplateError, match=r"figure fig2-broken\.png: ValueError: no data"):
        render_post(post_ws, "bad")


def test_figure_xlim_and_hline_in_a_template(post_ws):
    head = (post_ws / "templates" / "golden.md.j2").read_text().split("---")[1]
    body = ("{{ figure(results('toy'), 'curves', 'curve', by='rate', xlim=[2, 10], hline=[0.1, 0.5]) }}\n"
            "{{ figure(results('toy').where(rate=0.5), 'seeds', 'curve', xlim=[0, 5], hline=0.2) }}\n"
            "{{ figure(results('toy'), 'scalar', 'final', by='rate', hline=0.1) }}\n")
    (post_ws / "templates" / "zoom.md.j2").write_text(f"---{head}---\n{body}")
    rendered, out = render_post(post_ws, "zoom")
    assert len(rendered.figures) == 3
    assert all((out / f).stat().st_size > 0 for f in rendered.figures)


def test_figure_overlays_several_series_outputs(post_ws):
    toy = post_ws / "experiments" / "toy.py"
    toy.write_text(toy.read_text().replace('"curve": "series: value at each step",',
                                           '"curve": "series: value at each step",\n    "other": "series: another curve",'))
    head = (post_ws / "templates" / "golden.md.j2").read_text().split("---")[1]
    body = ("{{ figure(results('toy').where(rate=0.5), 'curves', ['curve', 'other'], hline=0.5) }}\n"
            "{{ figure(results('toy'), 'curves', ['curve', 'other'], by='rate') }}\n")
    (post_ws / "templates" / "both.md.j2").write_text(f"---{head}---\n{body}")
    rendered, out = render_post(post_ws, "both")
    assert len(rendered.figures) == 2 and all((out / f).stat().st_size > 0 for f in rendered.figures)
    assert "curves of value at each step, another curve" in rendered.markdown  # the outputs' labels
    for bad, fragment in (("['curve', 'final']", "is a scalar, not a series"),
                          ("['curve']", None)):
        (post_ws / "templates" / "bad.md.j2").write_text(
            f"---{head}---\n{{{{ figure(results('toy').where(rate=0.5), 'curves', {bad}) }}}}\n")
        if fragment:
            with pytest.raises(TemplateError, match=fragment):
                render_post(post_ws, "bad")
        else:
            render_post(post_ws, "bad")
    (post_ws / "templates" / "bad.md.j2").write_text(
        f"---{head}---\n{{{{ figure(results('toy'), 'scalar', ['final', 'final'], by='rate') }}}}\n")
    with pytest.raises(TemplateError, match="only by kind='curves'"):
        render_post(post_ws, "bad")


def test_an_own_figure_function_needs_no_output_and_names_its_figure(post_ws):
    head = (post_ws / "templates" / "golden.md.j2").read_text().split("---")[1]
    body = "{{ figure(results('toy'), 'final_by_rate') }}\n{{ figure(results('toy'), 'bare') }}\n"
    (post_ws / "templates" / "own.md.j2").write_text(f"---{head}---\n{body}")
    exp = post_ws / "experiments" / "toy.py"
    exp.write_text(exp.read_text() + '\n\ndef figure_final_by_rate(ax, r):\n    """Final value by decay rate, one dot'
                   ' per seed.\n\n    More words."""\n    ax.plot([0, 1], [1, 0])\n\n\n'
                   "def figure_bare(ax, r):\n    ax.plot([0, 1], [0, 1])\n")
    rendered, out = render_post(post_ws, "own")
    assert "![Final value by decay rate, one dot per seed](figures/fig1-final-by-rate.png)" in rendered.markdown
    assert "![bare](figures/fig2-bare.png)" in rendered.markdown
    assert (out / "figures" / "fig1-final-by-rate.png").is_file()


def test_seed_table_long_layout_has_a_row_per_config_and_seed(post_ws):
    head = (post_ws / "templates" / "golden.md.j2").read_text().split("---")[1]
    body = "{{ seed_table(results('toy'), 'final', layout='long') }}\n"
    (post_ws / "templates" / "long.md.j2").write_text(f"---{head}---\n{body}")
    rendered, _ = render_post(post_ws, "long")
    rows = [line for line in rendered.markdown.splitlines() if line.startswith("| ")]
    assert rows[0] == "| rate | seed | value after the last step |"  # labels: the description's first clause
    assert len(rows) == 1 + 2 * 10  # two rates x ten seeds
    assert rows[1].startswith("| 0.5 | 1 | ") and rows[-1].startswith("| 1 | 10 | ")
    (post_ws / "templates" / "bad.md.j2").write_text(f"---{head}---\n" + "{{ seed_table(results('toy'), 'final', "
                                                     "layout='tall') }}\n")
    with pytest.raises(TemplateError, match="layout='tall'"):
        render_post(post_ws, "bad")
