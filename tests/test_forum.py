"""The forum markdown: read back with markdown-it-py + mdit-py-plugins, as LessWrong's markdown-it would."""

import random
import re
import string

import pytest
from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.footnote import footnote_plugin

from expost.errors import PublishError
from expost.posts.markdown import find_maths
from expost.publish.forum import to_forum_markdown

BASE = "https://gist.githubusercontent.com/u/abc/raw/0123abcd/"

# The closest stock reading of LessWrong's rules: no `$ x$`, no `$x$5`, `$$..$$` inline too, no labels,
# no blank line inside `$$`. (Where it still differs from LessWrong, see the module notes in forum.py.)
FORUM = (MarkdownIt("commonmark").enable("table")
         .use(dollarmath_plugin, allow_space=False, allow_digits=False, double_inline=True,
              allow_labels=False, allow_blank_lines=False)
         .use(footnote_plugin))

POST = r"""# Low-rank S-curves: does the rank decide when the loss drops?

We train a rank-$r$ factorisation $W = AB^\top$ on a toy regression task and watch the loss $L(t)$.
A run on a laptop costs about $0 and a cloud GPU costs $2 per hour, so 20 seeds cost under $5.

## Setup

The loss is the mean squared error

$$
L(A, B) = \frac{1}{n} \sum_{i=1}^{n} \lVert A B^\top x_i - y_i \rVert^2

$$

with $ \eta = 0.1 $ and weight decay $\lambda \in \{0, 10^{-4}\}$.[^seeds] The code that ran:

```python
def loss(a, b, x, y):
    # $x$ is a batch of $5 items; ![not](an/image.png); {{ not a template }}
    return ((x @ (a @ b.T) - y) ** 2).mean()
```

![Loss curves, every seed a thin line](figures/fig1-loss.png)

*Figure 1: loss against step for $r \in \{1, 2, 4\}$, n = 20 seeds per rank; the median is bold.*

| rank $r$ | final loss | seeds agreeing |
|---:|---:|---:|
| 1 | $0.12 \pm 0.01$ | 20/20 |
| 2 | $0.031 \pm 0.004$ | 19/20 |

The drop comes at step $t^\ast \approx 1200$ in every seed[^spread], see `loss_at($t)`.

[^seeds]: Seeds 1-20; bootstrap 95% CIs over seeds, seeded so that rebuilds are identical.
[^spread]: The spread is $\sigma_{t^\ast} = 85$ steps, under 10% of $t^\ast$.
"""

EXPECTED = (POST
            .replace("costs about $0 and a cloud GPU costs $2 per hour, so 20 seeds cost under $5.",
                     r"costs about \$0 and a cloud GPU costs \$2 per hour, so 20 seeds cost under \$5.")
            .replace("\\rVert^2\n\n$$", "\\rVert^2\n$$")
            .replace("$ \\eta = 0.1 $", "$\\eta = 0.1$")
            .replace("](figures/fig1-loss.png)", f"]({BASE}figures/fig1-loss.png)"))

POST_MATHS = [
    "r", r"W = AB^\top", "L(t)",
    r"L(A, B) = \frac{1}{n} \sum_{i=1}^{n} \lVert A B^\top x_i - y_i \rVert^2",
    r"\eta = 0.1", r"\lambda \in \{0, 10^{-4}\}", r"r \in \{1, 2, 4\}", "r",
    r"0.12 \pm 0.01", r"0.031 \pm 0.004", r"t^\ast \approx 1200", r"\sigma_{t^\ast} = 85", r"t^\ast",
]


def url(src):
    return BASE + src


def flat(tokens):
    for t in tokens:
        yield t
        yield from flat(t.children or [])


def maths(md):
    """(TeX, display) of every maths token when the forum reads md."""
    return [(t.content.strip(), t.type != "math_inline") for t in flat(FORUM.parse(md)) if t.type.startswith("math")]


def text_of(md):
    return "".join(t.content for t in flat(FORUM.parse(md)) if t.type == "text")


def forum(md, image_url=url):
    out, warnings = to_forum_markdown(md, image_url)
    assert to_forum_markdown(out, image_url)[0] == out  # idempotent, always
    return out, warnings


# --- a whole post ----------------------------------------------------------------------------

def test_sample_post_changes_only_what_it_must():
    out, warnings = forum(POST)
    assert out == EXPECTED
    assert warnings == []


def test_sample_post_reads_right_on_the_forum():
    out, _ = forum(POST)
    tokens = list(flat(FORUM.parse(out)))
    assert sorted(tex for tex, _ in maths(out)) == sorted(POST_MATHS)
    assert [tex for tex, display in maths(out) if display] == [POST_MATHS[3]]
    assert "costs about $0 and a cloud GPU costs $2 per hour, so 20 seeds cost under $5." in text_of(out)
    images = [t.attrs["src"] for t in tokens if t.type == "image"]
    assert images == [BASE + "figures/fig1-loss.png"]
    assert all(re.match(r"https://", src) for src in images)
    assert len([t for t in tokens if t.type == "footnote_ref"]) == 2
    assert [t.meta["label"] for t in tokens if t.type == "footnote_open"] == ["seeds", "spread"]
    assert [t.type for t in tokens].count("table_open") == 1
    cells = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type in ("th_open", "td_open")]
    assert cells[:3] == ["rank $r$", "final loss", "seeds agreeing"] and cells[4] == r"$0.12 \pm 0.01$"
    fence = next(t for t in tokens if t.type == "fence")
    assert "$x$ is a batch of $5 items; ![not](an/image.png); {{ not a template }}" in fence.content
    assert [t.content for t in tokens if t.type == "code_inline"] == ["loss_at($t)"]
    prose = re.sub(r"```.*?```", "", out, flags=re.S)
    assert not re.search(r"\{\{|\}\}|\{%|%\}", prose)
    assert not re.search(r"/home/|/Users/|/root/|file://|[A-Z]:\\", out)


def test_maths_agree_with_the_lesswrong_port():
    out, _ = forum(POST)
    assert [m.latex.strip() for m in find_maths(out)] == POST_MATHS  # in source order
    assert [m.display for m in find_maths(out)] == [i == 3 for i in range(len(POST_MATHS))]
    assert all(out[m.start] == "$" and out[m.end - 1] == "$" for m in find_maths(out))


# --- dollars -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prose, escaped", [
    ("It costs $5 and $6 today.", r"It costs \$5 and \$6 today."),
    ("Between $5-$6 a unit.", r"Between \$5-\$6 a unit."),
    ("A lone $ sign, and another $ here.", r"A lone \$ sign, and another \$ here."),
    ("Costs $ 5 and $ 6.", r"Costs \$ 5 and \$ 6."),
    ("Three $$$ dollars.", r"Three \$\$\$ dollars."),
    ("Price \\$x\\$ stays.", "Price \\$x\\$ stays."),
    ("US$5 but $x$ is maths", r"US\$5 but $x$ is maths"),
])
def test_literal_dollars_are_escaped_and_read_as_text(prose, escaped):
    out, _ = forum(prose)
    assert out == escaped
    assert [tex for tex, _ in maths(out)] == (["x"] if "$x$ is" in prose else [])
    assert text_of(out).count("$") == prose.count("$") - 2 * len(maths(out))


def test_spaces_inside_inline_maths_are_removed():
    out, _ = forum("Take $ x $, $x_1 $ and $\t\\alpha + 1$; keep $5 and $ 6 apart.")
    assert out == r"Take $x$, $x_1$ and $\alpha + 1$; keep \$5 and \$ 6 apart."
    assert maths(out) == [("x", False), ("x_1", False), (r"\alpha + 1", False)]


def test_display_maths_and_dollars_in_links_and_urls():
    md = "See [cost $5](a.png).\n\nAnd <https://a.org/$b> or https://a.org/$c; $$E = mc^2$$ inline."
    out, _ = forum(md)
    assert out == md.replace("cost $5", r"cost \$5")
    assert maths(out) == [("E = mc^2", True)]
    # As on LessWrong, a lone `$` pairs with the next one in the paragraph, even inside a link.
    assert find_maths("See [cost $5]($a.png).")[0].latex == "5]("


def test_dollars_are_judged_in_every_kind_of_text():
    md = ("# Costs $5 $h$\n\n> quoted $5 $q$\n\n- item $5 $l$\n\n| $5 | $c$ \\| x |\n|---|---|\n| $6 | y |\n\n"
          "\u00a0\nafter a no-break space $5 $n$, [link $5 $k$](u.html), ![alt $5 $a$](https://x.org/a.png),"
          " ^[inline note $5 $i$]\n\n[^1]: note $5 $f$\n")
    out, _ = forum(md)
    assert out == md.replace("$5", r"\$5").replace("$6", r"\$6")
    assert [m.latex for m in find_maths(out)] == ["h", "q", "l", "c", "n", "k", "a", "i", "f"]


# --- display blocks ---------------------------------------------------------------------------

def test_blank_lines_inside_display_maths_are_removed():
    out, warnings = forum("Text\n\n$$\na\n\n  \nb\n$$\n\nafter $x$")
    assert out == "Text\n\n$$\na\nb\n$$\n\nafter $x$"
    assert maths(out) == [("a\nb", True), ("x", False)]
    assert warnings == []


def test_display_maths_in_a_list_item_is_mended_in_place():
    out, _ = forum("- item\n\n  $$\n  y\n\n  z\n  $$\n- next")
    assert out == "- item\n\n  $$\n  y\n  z\n  $$\n- next"
    assert [(m.latex.strip(), m.display) for m in find_maths(out)] == [("y\n  z", True)]


def test_lines_that_would_start_a_block_are_indented_into_the_maths():
    md = "Before\n$$\na\n+ b\n# c\n> d\n- 1\n$$\nafter"
    assert [m.latex for m in find_maths(md)] == []  # LessWrong would break it into a list, a heading...
    out, _ = forum(md)
    assert out == "Before\n$$\na\n    + b\n    # c\n    > d\n    - 1\n$$\nafter"
    assert [m.latex.split() for m in find_maths(out)] == [["a", "+", "b", "#", "c", ">", "d", "-", "1"]]
    assert "<li>" not in FORUM.render(out) and "<h1>" not in FORUM.render(out)


def test_unclosed_display_maths_is_escaped_with_a_warning():
    out, warnings = forum("Text\n\n$$\na = b\n\nMore text.")
    assert out == "Text\n\n\\$\\$\na = b\n\nMore text."
    assert warnings == ["post.md line 3: `$$` does not open or close display maths on LessWrong "
                        "(an unclosed block?), so it is escaped as \\$\\$"]


def test_a_valid_display_block_is_never_touched():
    md = "$$\na\n$$\n\n$$\nb\n$$\n\nText $$c$$ and\n$$\nd\n$$"
    assert forum(md) == (md, [])


# --- code ---------------------------------------------------------------------------------------

def test_nothing_changes_inside_code():
    md = ("Use `$5` and `![x](y.png)` and ``a $ ` b``.\n\n```python\ncost = '$5'  # $ x $\n"
          "![x](figures/y.png)\n```\n\n    $ 6 and ![z](z.png)\n\n~~~\n$$\n\n$$\n~~~\n")
    calls = []
    assert forum(md, lambda s: calls.append(s)) == (md, [])
    assert calls == []
    assert maths(md) == []


# --- images -------------------------------------------------------------------------------------

def test_relative_images_become_absolute_and_others_are_left_alone():
    calls = []
    md = ("![a](figures/a.png) ![b](<figures/b c.png> \"B\") ![c](https://x.org/c.png) "
          "![d](HTTP://x.org/d.png) ![e][ref] [![f](figures/f.png)](https://x.org)\n\n[ref]: figures/e.png\n")
    out, warnings = forum(md, lambda s: calls.append(s) or BASE + s)
    assert out == (f"![a]({BASE}figures/a.png) ![b]({BASE}figures/b%20c.png \"B\") ![c](https://x.org/c.png) "
                   f"![d](HTTP://x.org/d.png) ![e][ref] [![f]({BASE}figures/f.png)](https://x.org)\n\n"
                   f"[ref]: {BASE}figures/e.png\n")
    assert calls == ["figures/a.png", "figures/b c.png", "figures/e.png", "figures/f.png"]
    assert warnings == []
    srcs = [t.attrs["src"] for t in flat(FORUM.parse(out)) if t.type == "image"]
    assert len(srcs) == 6 and all(re.match(r"(?i)https?://", s) for s in srcs)


def test_unmapped_images_stay_relative_with_one_warning_each():
    md = "![a](figures/x.png)\n\n![again](figures/x.png) ![b](figures/y.png) ![c](https://x.org/c.png)"
    out, warnings = forum(md, lambda s: None)
    assert out == md
    assert warnings == [
        "figures/x.png is still a relative link: set image_base_url in expost.toml or publish the gist first",
        "figures/y.png is still a relative link: set image_base_url in expost.toml or publish the gist first",
    ]


def test_only_real_image_syntax_is_rewritten():
    md = "Not an image: \\![a](figures/a.png), $x ![b](figures/b.png)$, `![c](c.png)`; ![d](figures/d.png)"
    out, _ = forum(md)
    assert out == md.replace("](figures/d.png)", f"]({BASE}figures/d.png)")


def test_an_image_url_that_is_not_http_is_refused():
    with pytest.raises(PublishError, match=r"'figures/a.png' maps to 'cdn.example/figures/a.png'.*https://"):
        to_forum_markdown("![a](figures/a.png)", lambda s: "cdn.example/" + s)


def test_raw_html_is_flagged_because_the_forum_shows_it_as_text():
    md = "Text <br> and <!-- note --> but `<b>` and $a<b>c$ and a <y and z> comparison."
    out, warnings = forum(md)
    assert out == md
    assert [w.split(" shows")[0] for w in warnings] == ["post.md line 1: raw HTML '<br>'",
                                                        "post.md line 1: raw HTML '<!--'"]


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("md, line, what", [
    ("# T\n\nHello {{ name }}.", 3, "'{{'"),
    ("Line\n{% if x %}shown{% endif %}", 2, "'{%'"),
    ("a\n\nb }} c", 3, "'}}'"),
    ("$$\na\n\nb\n$$\n\nText %} here", 7, "'%}'"),  # numbered as in the input, before mending
    ("| a | b |\n|---|---|\n| {{ x }} | y |", 3, "'{{'"),
    ("[link]({{ url }})", 1, "'{{'"),
])
def test_leftover_template_syntax_is_refused_with_its_line(md, line, what):
    with pytest.raises(PublishError, match=rf"^post\.md line {line}: unrendered template syntax {re.escape(what)}"):
        to_forum_markdown(md, url)


def test_braces_in_maths_and_code_are_not_template_syntax():
    md = "$\\frac{1}{\\sqrt{n}}$ and $${{a}}$$ and `{{ x }}` and `{% y %}`\n\n```\n{{ z }}\n```\n"
    assert forum(md) == (md, [])


@pytest.mark.parametrize("md, line", [
    ("![fig](/home/me/fig.png)", 1),
    ("Saved to /Users/me/proj/out.png.", 1),
    ("text\n\nsee /root/.cache/x", 3),
    ("See C:\\Users\\me\\fig.png", 1),
    ("[log](file:///tmp/run.log)", 1),
    ("```\npath = '/home/me/data'\n```", 2),
])
def test_local_paths_are_refused_with_their_line(md, line):
    with pytest.raises(PublishError, match=rf"^post\.md line {line}: local path"):
        to_forum_markdown(md, url)


@pytest.mark.parametrize("src", ["/figures/a.png", "~/a.png"])
def test_absolute_image_paths_are_refused(src):
    with pytest.raises(PublishError, match="absolute local path"):
        to_forum_markdown(f"![a]({src})", url)


def test_urls_that_merely_contain_home_are_fine():
    md = "![a](https://x.org/home/a.png) and https://x.org/Users/b, profile:/x"
    assert forum(md) == (md, [])


# --- bytes ---------------------------------------------------------------------------------

def test_crlf_line_ends_are_kept():
    out, _ = forum(POST.replace("\n", "\r\n"))
    assert out == EXPECTED.replace("\n", "\r\n")


def test_find_maths_offsets_and_lesswrong_only_forms():
    md = "a $x$ b\r\n$$y$$ \\\\(z\\\\) \\\\[w\\\\] \\begin{align}u\\end{align}"
    found = find_maths(md)
    assert [(m.latex, m.display) for m in found] == [
        ("x", False), ("y", True), ("z", False), ("w", True), ("\\begin{align}u\\end{align}", True)]
    assert [md[m.start:m.end] for m in found][:2] == ["$x$", "$$y$$"]


# --- LessWrong's rule on random text ----------------------------------------------------------

def lesswrong_maths(text):
    """An independent port of ForumMagnum's `texMath` over each paragraph (no other markdown)."""
    found = []
    for para in re.split(r"\n[ \t]*\n", text):
        src, pos = para.strip(), 0
        while pos < len(src):
            if src[pos] == "\\" and src[pos + 1:pos + 2] and src[pos + 1] in string.punctuation + "\n":
                pos += 2
                continue
            if src[pos] != "$":
                pos += 1
                continue
            start, marker = pos + 1, "$"
            if src[start:start + 1] == "$":
                start, marker = start + 1, "$$"
                if src[start:start + 1] == "$":
                    pos += 1
                    continue
            elif src[start:start + 1] in (" ", "\t", "\n"):
                pos += 1
                continue
            end = src.find(marker, start)
            if end < 0 or src[end - 1] == "\\" or marker == "$" and (
                    src[end - 1] in " \t\n" or src[end + 1:end + 2] in tuple("0123456789")):
                pos += 1
                continue
            found.append((src[start:end], marker == "$$"))
            pos = end + len(marker)
    return found


PIECES = ["$", "$", "$$", "x", "ab", " ", "5", "\n", "{", "}", "\\", "y2", "*", "\n\n"]


def test_find_maths_matches_lesswrong_on_random_text():
    rnd = random.Random(11)
    for _ in range(600):
        src = "x" + "".join(rnd.choice(PIECES) for _ in range(rnd.randint(1, 16)))
        if re.search(r"(^|\n) {4}|\n[ \t]*[*]", src):
            continue  # indented code and list items: not in the simple port
        assert [(m.latex, m.display) for m in find_maths(src)] == lesswrong_maths(src), repr(src)


def test_forum_markdown_keeps_every_maths_span_on_random_text():
    rnd = random.Random(5)
    pieces = [p for p in PIECES if p not in ("*", "\n\n")]
    for _ in range(400):
        src = "x" + "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 16)))
        if re.search(r"\{\{|\}\}", src):
            continue  # refused as template syntax outside maths; tested above
        out, _ = forum(src)  # idempotent: so no dollar is left for the forum to misread
        before, after = [m.latex for m in find_maths(src)], iter(m.latex for m in find_maths(out))
        assert all(any(a == b for a in after) for b in before), (src, out)
        # only `\` in, spaces out; maths holding `\$` is written `\\( ... \\)` instead of `$ ... $`
        assert re.sub(r"[\\ ]", "", out.replace("\\\\(", "$").replace("\\\\)", "$")) == re.sub(r"[\\ ]", "", src), (src, out)
