"""The offline HTML preview: maths, code, footnotes, tables, images; and a real browser looking at it."""

import html
import random
import re

import pytest

from browser import check_page, require_browser
from expost.posts.html import HtmlError, markdown_to_html
from expost.posts.markdown import normalise

# A 1x1 PNG: enough for the unit tests, which never decode it.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a2b6a0d90000000049454e44ae426082")


def page(md, tmp_path=None, **kw):
    return markdown_to_html(md, title=kw.pop("title", "T"), base_dir=kw.pop("base_dir", tmp_path), **kw)


def body(md, tmp_path):
    out = page(md, tmp_path)
    return out[out.index("<article>"):]


def maths(md, tmp_path):
    """(latex-ish text, display) of each <math>; the text is the MathML's text content."""
    found = re.findall(r'<math [^>]*display="(inline|block)">(.*?)</math>', body(md, tmp_path), re.S)
    return [(html.unescape(re.sub(r"<[^>]+>", "", inner)), kind == "block") for kind, inner in found]


# --- maths -----------------------------------------------------------------------------------

def test_inline_and_display_maths_become_mathml(tmp_path):
    out = body("Loss $L = x^2$ falls.\n\n$$\n\\sum_i x_i\n$$\n\nand $$E=mc^2$$ inline too.", tmp_path)
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline"><mrow><mi>L</mi>' in out
    assert re.search(r'<div class="math display"><math [^>]*display="block">.*<msub><mi>x</mi><mi>i</mi>', out)
    assert out.count("<math ") == 3
    assert "$" not in out


@pytest.mark.parametrize("prose", [
    "It costs $5 and $6 today.",           # closing $ after a space, before a digit
    "Between $5-$6 a unit.",               # closing $ before a digit
    "A lone $ sign, and another $ here.",  # opening $ before a space
    "Trailing $two words $ space.",        # closing $ after a space (and prose inside)
    "Three $$$ dollars.",
])
def test_prose_dollars_stay_text(tmp_path, prose):
    out = body(prose, tmp_path)
    assert "<math" not in out
    assert prose in out


def test_padded_maths_is_maths_as_the_forum_repairs_it(tmp_path):
    # post.md gets `$x$` and `$a + b$` (publish.forum), so the preview shows what LessWrong will.
    assert maths("Trailing $x $ and $ a + b $ here.", tmp_path) == [("x", False), ("a+b", False)]


def test_escaped_dollar_is_literal(tmp_path):
    out = body(r"Price \$x\$ and \$5, but $y$ is maths.", tmp_path)
    assert "Price $x$ and $5, but <math" in out
    assert maths(r"Price \$x\$ and \$5, but $y$ is maths.", tmp_path) == [("y", False)]


def test_maths_in_code_stays_literal(tmp_path):
    md = "Use `$x$` and `$$y$$`.\n\n```python\ncost = '$a$'  # $$b$$\n```\n\n    indented $$c$$\n"
    out = body(md, tmp_path)
    assert "<math" not in out
    assert "<code>$x$</code>" in out and "<code>$$y$$</code>" in out
    assert "$a$" in out and "$$b$$" in out and "indented $$c$$" in out


def test_markdown_inside_maths_is_left_alone(tmp_path):
    assert maths(r"Here $a_1 * b_2 * c_{[i]}$ and $\{x\}$.", tmp_path) == [("a1*b2*c[i]", False), ("{x}", False)]


def test_dollars_in_urls_and_comparisons(tmp_path):
    out = body("[see $x$](https://a.org/q?a=$b$c) <https://a.org/$y$z> and $a<b$, $c>d$.", tmp_path)
    assert '<a href="https://a.org/q?a=$b$c">see <math' in out
    assert '<a href="https://a.org/$y$z">https://a.org/$y$z</a>' in out
    assert out.count("<math") == 3


def test_display_block_interrupts_a_paragraph_and_spans_lines(tmp_path):
    out = body("Before\n$$\na\n+ b\n$$\nafter", tmp_path)
    assert out.index("<p>Before</p>") < out.index('<div class="math display">') < out.index("<p>after</p>")
    assert "<li>" not in out  # `+ b` inside the maths is not a list item
    assert maths("Before\n$$\na\n+ b\n$$\nafter", tmp_path) == [("a+b", True)]


def test_blank_line_in_display_maths_is_mended_as_on_the_forum(tmp_path):
    # LessWrong would end the block at the blank line; post.md has it removed, so it is maths.
    assert maths("$$\na\n\nb\n$$", tmp_path) == [("ab", True)]


def test_display_maths_inside_list_items_and_footnotes(tmp_path):
    md = "- item\n  $$\n  y\n  $$\n\nNote[^1].\n\n[^1]: see\n    $$\n    z\n    $$\n"
    out = body(md, tmp_path)
    assert re.search(r"<li>item<div class=\"math display\">", out)
    assert re.search(r'<li id="fn:1">\s*<p>see</p>\s*<div class="math display">', out)


def lesswrong_maths(src):
    """A port of LessWrong's markdown-it `texMath` rule (ForumMagnum markdownMathjax.ts), per paragraph."""
    found = []
    for para in re.split(r"\n[ \t]*\n", src.strip()):
        para, pos = para.strip(), 0
        while pos < len(para):
            if para[pos] == "\\" and para[pos + 1:pos + 2] == "$":  # `\$`, as the forum repairs write it
                pos += 2
                continue
            if para[pos] != "$":
                pos += 1
                continue
            start, marker = pos + 1, "$"
            if para[start:start + 1] == "$":
                start, marker = start + 1, "$$"
                if para[start:start + 1] == "$":
                    pos += 1
                    continue
            elif para[start:start + 1] in (" ", "\t", "\n"):
                pos += 1
                continue
            end = para.find(marker, start)
            if end < 0 or para[end - 1] == "\\" or marker == "$" and (
                    para[end - 1] in " \t\n" or para[end + 1:end + 2] in tuple("0123456789")):
                pos += 1
                continue
            found.append((para[start:end].strip(), marker == "$$"))
            pos = end + len(marker)
    return found


def test_dollar_rules_match_lesswrong_on_random_text(tmp_path, monkeypatch):
    import expost.posts.html

    seen = []
    monkeypatch.setattr(expost.posts.html, "latex_to_mathml", lambda latex, display: seen.append((latex, display)) or "")
    rnd = random.Random(7)
    pieces = ["$", "$", "$$", "x", "ab", " ", "5", "\n", "\n", "{", "}", "y2", "\n\n"]
    for _ in range(1500):
        src = "x" + "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 14)))
        seen.clear()
        markdown_to_html(src, title="t", base_dir=tmp_path)
        # What LessWrong reads in the post.md made from src: the same text after the forum's repairs.
        assert sorted(seen) == sorted(lesswrong_maths(normalise(src).text)), repr(src)


def test_bad_latex_falls_back_to_source(tmp_path):
    out = body(r"Broken $a^$ and $$\left($$ here.", tmp_path)
    assert '<code class="math-error" title="LaTeX that could not be converted">a^</code>' in out
    assert r'<code class="math-error" title="LaTeX that could not be converted">\left(</code>' in out


def test_unknown_commands_are_shown_red(tmp_path):
    out = body(r"$\arg\min_x \Var(x)$", tmp_path)
    assert '<mi mathcolor="#b42318">\\Var</mi>' in out
    assert "\\arg" not in out and "<mo>arg</mo>" in out


def test_latex_text_cannot_inject_html(tmp_path):
    out = body(r"$\text{<script>alert(1)</script>}$ and $a<b \& c$", tmp_path)
    assert "<script" not in out
    assert "&lt;script&gt;" in out and "&#x0003C;" in out


# --- markdown features -----------------------------------------------------------------------

def test_footnotes_render(tmp_path):
    out = body("A claim.[^1]\n\n[^1]: Over 10 seeds.\n", tmp_path)
    assert '<sup id="fnref:1"><a class="footnote-ref" href="#fn:1">1</a></sup>' in out
    assert re.search(r'<div class="footnote">.*<li id="fn:1">\s*<p>Over 10 seeds\.', out, re.S)


def test_tables_render(tmp_path):
    out = body("| rank | loss |\n|---|---:|\n| 2 | $0.5$ |\n| 4 | 0.25 |\n", tmp_path)
    assert "<table>" in out and "<th>rank</th>" in out
    assert '<td style="text-align: right;"><math' in out


def test_code_is_highlighted_with_embedded_css(tmp_path):
    out = page("```python\ndef f(x):\n    return x\n```\n", tmp_path)
    assert '<div class="codehilite"><pre>' in out
    assert '<span class="k">def</span>' in out
    assert ".codehilite .k {" in out  # the pygments style is in the page's <style>


# --- images ----------------------------------------------------------------------------------

def test_images_are_inlined_and_captioned(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "loss.png").write_bytes(PNG)
    (tmp_path / "figures" / "acc.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    md = ("![loss](figures/loss.png)\n\n*Figure 1: loss, n = 10 seeds.*\n\n"
          "![acc](figures/acc.svg)\n*Figure 2: same paragraph.*\n\n![remote](https://example.org/a.png)\n")
    out = page(md, tmp_path)
    assert re.search(r'<figure><img alt="loss" src="data:image/png;base64,iVBORw0KGgo[^"]+">'
                     r"<figcaption><em>Figure 1: loss, n = 10 seeds.</em></figcaption></figure>", out)
    assert re.search(r'<figure><img alt="acc" src="data:image/svg\+xml;base64,[^"]+"><figcaption>', out)
    assert '<img alt="remote" src="https://example.org/a.png">' in out  # left alone, as asked
    assert "<script" not in out and "<link" not in out
    assert 'src="http' not in out.replace('src="https://example.org/a.png"', "")


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(HtmlError, match=r"figures/nope\.png.*not found"):
        page("![x](figures/nope.png)", tmp_path)


@pytest.mark.parametrize("src", ["../secret.png", "figures/../../secret.png", "/etc/secret.png"])
def test_image_outside_base_dir_is_refused(tmp_path, src):
    base = tmp_path / "post"
    base.mkdir()
    (tmp_path / "secret.png").write_bytes(PNG)
    with pytest.raises(HtmlError, match=re.escape(src)):
        page(f"![x]({src})", base_dir=base)


def test_a_file_url_is_no_image_as_on_the_forum(tmp_path):
    # markdown-it refuses file: links, so LessWrong shows the text (and the forum export refuses
    # the local path); the preview shows the same text and reads nothing.
    out = body("![x](file:///etc/secret.png)", tmp_path)
    assert "<img" not in out and "<p>![x](file:///etc/secret.png)</p>" in out


@pytest.mark.parametrize("raw", ['<script src="x.js"></script>', '<link rel="stylesheet" href="x.css">',
                                 '<img src="figures/raw.png">'])
def test_raw_html_shows_as_text_as_on_the_forum(tmp_path, raw):
    # LessWrong's markdown has HTML off, so the page shows the tag as text and loads nothing.
    out = body(f"Text\n\n{raw}\n", tmp_path)
    assert f"<p>{html.escape(raw, quote=False)}</p>" in out
    assert "<script" not in out and "<link" not in out and "<img" not in out


def test_html_that_would_load_something_is_still_refused(tmp_path, monkeypatch):
    import expost.posts.html

    # Nothing in markdown makes such a tag now; the audit stays as a guard on what the page is built from.
    monkeypatch.setattr(expost.posts.html, "latex_to_mathml", lambda latex, display: '<script src="x.js"></script>')
    with pytest.raises(HtmlError, match="raw HTML <script>"):
        page("$x$", tmp_path)


# --- page ------------------------------------------------------------------------------------

def test_page_shell_and_deterministic_bytes(tmp_path):
    (tmp_path / "f.png").write_bytes(PNG)
    md = "## Results\n\nSee $x$.[^a]\n\n![f](f.png)\n\n*Figure 1: f.*\n\n[^a]: note\n"
    first = page(md, tmp_path, title="Rank <2> & more", summary="Short summary.")
    assert first == page(md, tmp_path, title="Rank <2> & more", summary="Short summary.")
    assert first.startswith("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in first
    assert "<title>Rank &lt;2&gt; &amp; more</title>" in first
    assert "<h1>Rank &lt;2&gt; &amp; more</h1>\n<p class=\"summary\">Short summary.</p>" in first
    assert '<h2 id="results">Results</h2>' in first
    assert "http" not in first.replace("http://www.w3.org/1998/Math/MathML", "")
    assert "<script" not in first and "<link" not in first and "@import" not in first


# --- in a real browser -----------------------------------------------------------------------

def test_page_renders_in_chromium(tmp_path):
    require_browser()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    (tmp_path / "figures").mkdir()
    fig = Figure(figsize=(6, 3.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for seed in range(5):
        ax.plot([0, 1, 2, 3], [1, 0.5 - seed * 0.02, 0.3, 0.2 + seed * 0.01], color="0.8", lw=0.8)
    ax.plot([0, 1, 2, 3], [1, 0.46, 0.3, 0.22], color="C0", lw=2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    fig.savefig(tmp_path / "figures" / "loss.png", metadata={"Software": None})

    md = (
        "The loss $L(\\theta) = \\frac{1}{n}\\sum_i \\ell(x_i; \\theta)$ falls within "
        "$10^3$ steps for every seed; it costs $5 and $6 per run.[^1]\n\n"
        "$$\n\\hat\\theta = \\arg\\min_\\theta \\frac{1}{n} \\sum_{i=1}^{n} \\ell(x_i; \\theta)\n$$\n\n"
        "![Loss curves](figures/loss.png)\n\n*Figure 1: loss per seed (thin) and median (bold), n = 5 seeds.*\n\n"
        "| rank | final loss | seeds agreeing |\n|---|---:|---:|\n| 1 | 0.31 | 5/5 |\n| 2 | 0.22 | 4/5 |\n\n"
        "```python\ndef train(seed: int) -> float:\n    torch.manual_seed(seed)  # $x$ stays code\n"
        "    return loss.item()\n```\n\n"
        "[^1]: Bootstrap 95% CI over seeds, $n = 5$.\n"
    )
    html_path = tmp_path / "post.html"
    html_path.write_text(page(md, tmp_path, title="Rank-2 S-curves", summary="Five seeds, one claim."),
                         encoding="utf-8")
    shot = tmp_path / "post.png"
    facts = check_page(html_path, shot)

    assert facts["title"] == "Rank-2 S-curves"
    assert facts["images"] == facts["images_loaded"] == 1
    assert facts["image_sizes"] == [[600, 350]]
    assert facts["maths"] == 4 and facts["display_maths"] == 1
    assert facts["maths_sized"] == facts["maths"], facts["math_boxes"]
    assert facts["fractions"] == 2 and facts["fractions_stacked"] == 2
    assert facts["console_errors"] == []
    assert facts["requests"] == []  # nothing left the file
    assert facts["page_width"] <= facts["viewport_width"]  # no horizontal overflow
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("width", [1000, 390])
def test_no_example_post_overflows_the_page_and_wide_parts_scroll(width):
    from browser import overflow

    from conftest import REPO

    for post in sorted((REPO / "publish").glob("*/post.html")):
        facts = overflow(post, width)
        assert facts["page_width"] <= facts["viewport_width"], (post.parent.name, width, facts)
        assert facts["overflowing"] == [], (post.parent.name, width, facts)
        assert all(s.endswith((":auto", ":scroll")) for s in facts["scrollers"])


def test_the_overflow_check_sees_what_sticks_out_and_what_scrolls(tmp_path):
    from browser import overflow

    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body style='max-width:30rem'><pre style='overflow:visible'>"
                   + "x" * 400 + "</pre><div style='width:800px'>wide</div></body></html>")
    facts = overflow(bad, 390)
    assert facts["page_width"] > facts["viewport_width"]  # the text sticking out of the pre
    assert facts["overflowing"] == ["DIV right=808"]  # the element wider than the page
    wide = "| " + " | ".join(f"column {i}" for i in range(13)) + " |\n|" + "---|" * 13 + "\n| " + \
        " | ".join(f"{i / 7:.6f}" for i in range(13)) + " |\n"
    good = tmp_path / "good.html"
    good.write_text(page(wide + "\n```python\n" + "y = " + "1 + " * 120 + "1\n```\n", tmp_path, title="Wide"),
                    encoding="utf-8")
    facts = overflow(good, 390)
    assert facts["overflowing"] == [] and facts["page_width"] <= facts["viewport_width"]
    assert {"TABLE:auto", "PRE:auto"} <= set(facts["scrollers"])
