"""LessWrong's markdown, the cases a post gets wrong there (issue 16, item 4): maths that the forum
reads differently from the author, `stat()` inside maths, and `+++` collapsible sections, in the
forum post.md, the HTML preview and the gist's README."""

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_workspace
from expost.cli import cli
from expost.posts.html import markdown_to_html
from expost.posts.markdown import find_maths, normalise, parse
from expost.publish.forum import as_details, to_forum_markdown


def forum(md):
    return to_forum_markdown(md, lambda src: None)


def maths(md):
    return [m.latex for m in find_maths(md)]


# --- the five maths cases of the issue ------------------------------------------------------------

def test_prices_that_lesswrong_would_typeset_as_maths_are_escaped_with_a_warning():
    out, warnings = forum("It costs US$20, or 20$, or $ 30 here.\n")
    assert out == "It costs US\\$20, or 20\\$, or \\$ 30 here.\n"
    assert maths(out) == []
    assert any("line 1" in w and "'$20, or 20$'" in w and "prose" in w for w in warnings)
    # real maths next to prices is left alone
    out, warnings = forum("A fit $y = 2x + 1$ and $x_1 < 20$ cost $5.\n")
    assert maths(out) == ["y = 2x + 1", "x_1 < 20"] and warnings == []


def test_maths_holding_an_escaped_dollar_is_written_in_the_bracket_form_lesswrong_reads():
    out, _ = forum("A price $\\$5 + x$ here.\n")
    assert out == "A price \\\\(\\$5 + x\\\\) here.\n"
    assert maths(out) == ["\\$5 + x"]  # one maths span with the dollar in it, as the author meant
    page = markdown_to_html("A price $\\$5 + x$ here.", title="t", base_dir=Path("."))
    assert "<mi>&#x00024;</mi><mn>5</mn>" in page and "$$5" not in page


def test_a_percent_sign_in_maths_is_escaped_so_the_rest_of_the_formula_survives():
    out, _ = forum("The rate is $50%$, and $a \\% b$ stays, and $c \\\\% d$ too.\n")
    assert maths(out) == ["50\\%", "a \\% b", "c \\\\\\% d"]
    page = markdown_to_html("The rate is $50% + x$.", title="t", base_dir=Path("."))
    assert "<mn>50</mn><mi>&#x00025;</mi>" in page and "<mi>x</mi>" in page


@pytest.mark.parametrize("table", [
    "| a | b |\n|---|---|\n| $|x|$ | 2 |\n",  # in a body row: the row would split into 4 cells
    "| $|x|$ | b |\n|---|---|\n| 1 | 2 |\n",  # in the header: the table would not be a table at all
])
def test_pipes_inside_maths_in_a_table_cell_do_not_split_the_row(table):
    out, _ = forum(table)
    tokens = parse(out).tokens
    cells = [t for t in tokens if t.type in ("th_open", "td_open")]
    assert len(cells) == 4, out  # two columns, two rows
    assert maths(out) == ["\\vert x\\vert"]
    assert "<mi>&#x0007C;</mi><mi>x</mi><mi>&#x0007C;</mi>" in markdown_to_html(table, title="t", base_dir=Path("."))


def test_the_repairs_are_idempotent_and_leave_other_text_alone():
    text = ("Prices US$20, or 20$; maths $\\$5 + x$, $50%$, $ a + b $.\n\n| $|x|$ | 2 |\n|---|---|\n| 1 | 2 |\n\n"
            "```\n$|x|$ and 50% $x$\n```\n")
    once = normalise(text).text
    assert normalise(once).text == once
    assert "```\n$|x|$ and 50% $x$\n```" in once  # code is never touched


# --- stat() inside maths ----------------------------------------------------------------------------

@pytest.fixture
def tiny_ws(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", ["tiny_torch.py"], ["tiny.md.j2"])
    monkeypatch.chdir(root)
    return root


def build(*args):
    return CliRunner().invoke(cli, ["build", *args], catch_exceptions=False)


def test_stat_inside_maths_is_an_error_that_says_to_use_num(tiny_ws):
    t = tiny_ws / "templates" / "tiny.md.j2"
    t.write_text(t.read_text() + '\nThe final loss is $\\ell = {{ stat(r.where(lr=0.1), "final") }}$.\n')
    r = build("-q")
    assert r.exit_code == 1
    assert "stat() inside maths" in r.output and "num" in r.output and "median" in r.output
    assert not (tiny_ws / "publish" / "tiny" / "post.md").exists()
    # the bare number is what maths takes
    t.write_text(t.read_text().replace('{{ stat(r.where(lr=0.1), "final") }}$',
                                       '{{ r.where(lr=0.1).stats("final").median | num }}$'))
    assert build("-q").exit_code == 0
    md = (tiny_ws / "publish" / "tiny" / "post.md").read_text()
    assert any(m.startswith("\\ell = ") and m[7:].replace(".", "").replace("e-", "").isdigit()
               for m in maths(md))


# --- collapsible sections -----------------------------------------------------------------------------

FOLDED = "Intro.\n\n+++ Per-seed numbers ($n = 3$)\n| seed | a |\n|---:|---:|\n| 1 | 2 |\n\nMore *text*.\n+++\n\nAfter.\n"


def test_a_collapsible_section_parses_as_lesswrong_folds_it():
    types = [t.type for t in parse(FOLDED).tokens]
    assert types.index("collapsible_open") < types.index("table_open") < types.index("collapsible_close")
    assert types[types.index("collapsible_close") + 1:] == ["paragraph_open", "inline", "paragraph_close"]
    opened = next(t for t in parse(FOLDED).tokens if t.type == "collapsible_open")
    assert opened.info == "Per-seed numbers ($n = 3$)" and opened.map == [2, 9]
    assert maths(FOLDED) == ["n = 3"]  # maths in the title is maths
    # not a section: fewer than three `+`, no title, the title ends in the marker, indented code, fenced code
    for text in ("++ x\ny\n++\n", "+++\ny\n+++\n", "+++ x +++\n", "    +++ x\n    y\n", "```\n+++ x\ny\n+++\n```\n"):
        assert "collapsible_open" not in [t.type for t in parse(text).tokens], text
    assert "collapsible_open" in [t.type for t in parse("text\n+++ x\ny\n+++\n").tokens]  # it ends a paragraph
    # unclosed: to the end of the text
    assert [t.type for t in parse("+++ T\nbody\n").tokens][-1] == "collapsible_close"


def test_a_collapsible_section_is_a_details_element_in_the_preview_and_the_gist():
    page = markdown_to_html(FOLDED, title="t", base_dir=Path("."))
    body = page[page.index("<article>"):]
    assert '<details class="collapsible">\n<summary>Per-seed numbers (<math' in body
    assert body.index("<summary>") < body.index("<table>") < body.index("</details>") < body.index("After.")
    assert "+++" not in body
    github = as_details(FOLDED)
    assert "<details><summary>Per-seed numbers ($n = 3$)</summary>\n" in github and "\n</details>" in github
    assert "+++" not in github
    out, _ = forum(FOLDED)
    assert "+++ Per-seed numbers ($n = 3$)\n" in out and out.count("+++") == 2  # the forum keeps its syntax


def test_fold_front_matter_folds_long_tables_and_the_reproducibility_section(tiny_ws):
    t = tiny_ws / "templates" / "tiny.md.j2"
    text = t.read_text().replace("experiments: [tiny_torch]", "experiments: [tiny_torch]\nfold: [tables, reproducibility]")
    t.write_text(text + '\n{{ seed_table(r, "final", by="lr") }}\n\n{{ seed_table(r, "final", layout="long") }}\n\n'
                 '{% call collapsible("Why a tiny fit") %}Because it is *fast*.{% endcall %}\n')
    assert build("-q").exit_code == 0
    md = (tiny_ws / "publish" / "tiny" / "post.md").read_text()
    sections = [t.info for t in parse(md).tokens if t.type == "collapsible_open"]
    # the 5-row wide table stays open; the 10-row long one folds; the repro list folds
    assert sections == ["Per-seed table: last loss (10 rows)", "Why a tiny fit",
                        "Every claim's verdict over the seeds, and how to rebuild this post"]
    assert "| seed | last loss (lr = 0.05) | last loss (lr = 0.1) |" in md.split("+++ Per-seed table")[0]
    html = (tiny_ws / "publish" / "tiny" / "post.html").read_text()
    assert html.count('<details class="collapsible">') == 3
    readme = (tiny_ws / "publish" / "tiny" / "gist" / "README.md").read_text()
    assert readme.count("<details><summary>") == 3 and "+++" not in readme
    t.write_text(text.replace("fold: [tables, reproducibility]", "fold: [appendix]"))
    r = build("-q")
    assert r.exit_code == 1 and "front matter fold" in r.output and "tables" in r.output


def test_the_gist_readme_is_the_forum_text_with_figures_linked_in_the_gist(tiny_ws):
    t = tiny_ws / "templates" / "tiny.md.j2"
    t.write_text(t.read_text() + "\nIt cost US$20, or 20$ to run.\n")
    subprocess.run(["git", "init", "-q"], check=True)
    assert build("-q").exit_code == 0
    readme = (tiny_ws / "publish" / "tiny" / "gist" / "README.md").read_text()
    assert "US\\$20, or 20\\$" in readme  # forum-normalised, as post.md
    assert "](fig1-curves-loss-lr.png)" in readme  # not published yet: the gist's own file
    assert readme.startswith("# Tiny $x^2$ post\n") and "## Run it" in readme
