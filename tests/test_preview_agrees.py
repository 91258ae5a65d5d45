"""The preview shows what the forum will show, one adversarial construct at a time.

For each construct the post goes both ways, as `expost build` sends it: to the forum post.md
(publish.forum.to_forum_markdown: the repairs, absolute image URLs) and to post.html (the page for the
same post.md). The forum side is read from the forum's parse of that post.md; the preview side from
the produced HTML, parsed with html.parser. Compared: the maths (each one's MathML, so its TeX and
whether it is display), the footnotes (reference numbers, notes), the list items (depth, kind), the
table cells (kind, alignment, maths inside), raw HTML (tags the forum passes through: none, as its
HTML is off; on the page, any element that no markdown construct makes), every element a construct
makes, and the visible text (where a `<b>` the forum shows as text must be text too).
"""

import re
from collections import Counter
from html.parser import HTMLParser

import pytest

from expost.posts.html import latex_to_mathml, post_to_html
from expost.posts.markdown import parse
from expost.publish.forum import to_forum_markdown

BASE = "https://gist.githubusercontent.com/u/abc/raw/0123abcd/"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a2b6a0d90000000049454e44ae426082")

CORPUS = {
    # display maths that LessWrong would break, and the forum's repairs of it
    "display with a blank line": "Text\n\n$$\na = b\n\nc = d\n$$\n\nafter",
    "display with a blank and a spaces-only line": "$$\na\n\n   \nb\n$$",
    "display with a list-like line": "Before\n$$\na\n+ b\n$$\nafter",
    "display with heading- and quote-like lines": "$$\na\n# c\n> d\n- 1\n$$",
    "display in a paragraph": "Text before\n$$\nx^2\n$$\ntext after",
    "display inline in a sentence": "So $$E = mc^2$$ holds.",
    "display in a list item with a blank line": "- item\n\n  $$\n  y\n\n  z\n  $$\n- next",
    "display unclosed": "Text\n\n$$\na = b\n\nMore text.",
    "two display blocks": "$$\na\n$$\n\n$$\nb\n$$",
    # LaTeX delimiters LessWrong reads and markdown does not
    "align environment": "\\begin{align}\na &= b \\\\\nc &= d\n\\end{align}",
    "align* in a sentence": "We have \\begin{align*}x &= 1\\end{align*} here.",
    "escaped-paren inline maths": "Inline \\\\(x + 1\\\\) maths.",
    "escaped-bracket display maths": "Display\n\\\\[\n\\sum_i x_i\n\\\\]\nend.",
    "single-backslash parens are text": "Not maths: \\(x\\) and \\[y\\].",
    "pmatrix inside dollars": "$\\begin{pmatrix}1 & 2\\end{pmatrix}$",
    # dollars: maths or prose
    "prose dollars": "It costs $5 and $6 today.",
    "price range": "Between $5-$6 a unit.",
    "prices US$20, or 20$": "Pay US$20, or 20$ if late.",
    "lone dollars": "A lone $ sign, and another $ here.",
    "three dollars": "Three $$$ dollars.",
    "escaped dollars": "Price \\$x\\$ and \\$5, but $y$ is maths.",
    "escaped dollar inside maths": "Then $\\$5 + x$ is what?",
    "padded maths": "Take $ x + y $ and $x_1 $ now.",
    "padded prose": "Costs $ 5 and $ 6.",
    "closing before a digit": "So $x$5 and $a$b.",
    "emphasis markers inside maths": "Here $a_1 * b_2 * c_{[i]}$ and $\\{x\\}$.",
    "comparisons inside maths": "Both $a<b$ and $c>d$, not tags.",
    "bad latex": "Broken $a^$ and $$\\left($$ here.",
    # code
    "code spans with dollars": "Use `$x$` and ``a $ ` b`` and `$5`.",
    "fenced code with maths": "```python\ncost = '$a$'  # $$b$$\n```",
    "indented code with maths": "Para.\n\n    indented $$c$$ and $d$\n",
    "tilde fence with a blank $$ block": "~~~\n$$\n\n$$\n~~~",
    # links and images
    "dollars in links and autolinks": "[see $x$](https://a.org/q?a=$b$c) <https://a.org/$y$z>",
    "dollar in link text": "See [cost $5](https://a.org/p).",
    "figure with caption": "![loss](figures/a.png)\n\n*Figure 1: loss, $n = 10$ seeds.*",
    "figure with caption in one paragraph": "![loss](figures/a.png)\n*Figure 2: same paragraph.*",
    "reference image": "![e][ref] and text\n\n[ref]: figures/a.png",
    "image alt with maths": "![alt $x$ here](figures/a.png) next to text",
    # footnotes
    "footnotes": "A claim.[^1] Another.[^n]\n\n[^1]: Over $10$ seeds.\n[^n]: Named note.",
    "footnotes out of order": "First[^b], then[^a].\n\n[^a]: note a\n[^b]: note b",
    "footnote referenced twice": "Twice[^1] and again[^1].\n\n[^1]: once",
    "footnote never referenced": "No reference here.\n\n[^x]: orphan note",
    "undefined footnote": "Dangling[^nope] reference.",
    "inline footnotes": "An inline note^[with $x$ and *em*] and another^[plain].",
    "footnote with display maths": "Note[^1].\n\n[^1]: see\n    $$\n    z\n    $$\n",
    # lists
    "nested list with 2 spaces": "- a\n  - b $x$\n    - c\n- d",
    "nested list with 4 spaces": "- a\n    - b\n- c",
    "ordered list from 3 with )": "3) three\n4) four $y$",
    "list interrupting a paragraph": "Para\n- item\n* other",
    "2. does not interrupt a paragraph": "Para\n2. not a list\n1. but this is",
    "loose list with maths": "- a $x$\n\n- b\n\n  $$\n  c\n  $$",
    "list in a footnote": "Note[^1].\n\n[^1]: items:\n\n    - one\n    - two",
    # tables
    "table with maths and alignment": "| rank $r$ | loss |\n|---|---:|\n| 2 | $0.5$ |\n| 4 | $a \\| b$ |",
    "table with a pipe in maths": "| a | b |\n|---|---|\n| $x|y$ | z |",
    "table with bracket maths": "| a |\n|:-:|\n| \\\\(x\\\\) |",
    "table with prose dollars": "| cost | note |\n|---|---|\n| $5 | $6 each |",
    # headings and quotes
    "maths in headings": "## Loss $L(t)$\n\n### Setext $x$\n---\n\nText.",
    "heading with closing hashes": "## Cost $5 ##\n\nText.",
    "blockquote with maths": "> quoted $q$\n>\n> $$\n> r\n> $$",
    # raw HTML: plain text on LessWrong (HTML is off)
    "raw bold": "Some <b>bold</b> text.",
    "raw html block": "<div class=\"note\">\nA *note*.\n</div>",
    "raw comment and br": "Text <br> and <!-- note --> more.",
    "raw span and details": "<details><summary>More</summary>\n\nHidden $x$.\n\n</details>",
    "raw script": "<script src=\"x.js\"></script>",
    # other inline syntax the forum has
    "strikethrough sub sup": "~~gone~~, H~2~O and x^2^.",
    "hard break and entities": "Line one  \nline two &amp; &copy; &#36;5",
    "emphasis around maths": "*italic $x$* and **bold $$y$$**",
}


def flat(tokens, into_images=False):
    for t in tokens:
        yield t
        if t.children and (into_images or t.type != "image"):
            yield from flat(t.children, into_images)


MATHS = ("math_inline", "math_display", "math_bracket")
TAGS = {"bullet_list_open": "ul", "ordered_list_open": "ol", "list_item_open": "li",
        "blockquote_open": "blockquote", "hr": "hr", "table_open": "table", "thead_open": "thead",
        "tbody_open": "tbody", "tr_open": "tr", "th_open": "th", "td_open": "td", "em_open": "em",
        "strong_open": "strong", "s_open": "s", "sub_open": "sub", "sup_open": "sup", "link_open": "a",
        "image": "img", "code_inline": "code", "hardbreak": "br", "fence": "pre", "code_block": "pre"}

# Every element the page makes for a markdown construct; any other one came from raw HTML.
MARKDOWN_TAGS = {*TAGS.values(), "h1", "h2", "h3", "h4", "h5", "h6", "p", "div", "figure", "figcaption",
                 "article"}


def forum_facts(post_md: str) -> dict:
    """What LessWrong shows of post_md, read from the forum's parse of it."""
    tokens = list(flat(parse(post_md).tokens))
    facts = {"maths": Counter(latex_to_mathml(t.meta["latex"], t.meta["display"]) for t in tokens if t.type in MATHS),
             "footnote refs": [t.meta["id"] + 1 for t in tokens if t.type == "footnote_ref"],
             "notes": sum(t.type == "footnote_open" for t in tokens),
             "list items": [], "cells": [], "elements": Counter(), "raw html": [], "text": ""}
    lists, text = [], []
    for i, t in enumerate(tokens):
        if t.type in ("bullet_list_open", "ordered_list_open"):
            lists.append(TAGS[t.type])
        elif t.type in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif t.type == "list_item_open":
            facts["list items"].append((len(lists), lists[-1]))
        elif t.type in ("th_open", "td_open"):
            inline = tokens[i + 1]
            cell = list(flat(inline.children or [])) if inline.type == "inline" else []
            style = t.attrGet("style") or ""
            facts["cells"].append((t.tag, style.partition(":")[2] or None, sum(c.type in MATHS for c in cell)))
        if t.type.startswith("heading_open"):
            facts["elements"][t.tag] += 1
        elif t.type in TAGS:
            facts["elements"][TAGS[t.type]] += 1
        elif t.type in ("html_inline", "html_block"):  # never, with HTML off: `<b>` is text there
            facts["raw html"] += re.findall(r"<([A-Za-z][\w-]*)", t.content)
        if t.type in ("text", "code_inline", "fence", "code_block", "html_inline", "html_block"):
            text.append(t.content)
    facts["text"] = "".join("".join(text).split())
    return facts


class _Page(HTMLParser):
    """The same facts, read from the preview's <article> (maths apart: see preview_facts)."""

    VOID = {"img", "br", "hr", "meta", "input"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # (tag, role) of each open element
        self.facts = {"footnote refs": [], "notes": 0, "list items": [], "cells": [],
                      "elements": Counter(), "raw html": []}
        self.text, self.lists, self.cell = [], [], None

    def role_of(self, tag, attrs):
        parent = self.stack[-1][1] if self.stack else None
        cls, id_ = attrs.get("class") or "", attrs.get("id") or ""
        if parent in ("math", "skip", "note-ref"):
            return "skip"
        if parent in ("code", "in-code"):
            return "in-code"
        if tag == "math" or tag == "code" and "math-error" in cls:
            return "math"
        if tag == "div" and "codehilite" in cls:
            return "code"
        if tag == "sup" and id_.startswith("fnref"):
            return "note-ref"
        if tag == "a" and "footnote-backref" in cls:
            return "skip"
        if tag == "div" and "footnote" in cls or parent == "notes" and tag in ("hr", "ol"):
            return "notes"
        if tag == "li" and id_.startswith("fn:"):
            return "note"
        return "element"

    def handle_starttag(self, tag, attr_list):
        attrs, facts = dict(attr_list), self.facts
        role = self.role_of(tag, attrs)
        if role == "in-code" and tag == "pre":
            facts["elements"]["pre"] += 1
        elif role == "note":
            facts["notes"] += 1
        elif role == "math" and self.cell is not None:
            self.cell[2] += 1
        elif role == "element":
            if tag in ("ul", "ol"):
                self.lists.append(tag)
            elif tag == "li":
                facts["list items"].append((len(self.lists), self.lists[-1]))
            elif tag in ("th", "td"):
                self.cell = [tag, (attrs.get("style") or "").partition(":")[2].strip(" ;") or None, 0]
            if tag not in ("p", "div", "figure", "figcaption", "article"):
                facts["elements"][tag] += 1
            if tag not in MARKDOWN_TAGS:
                facts["raw html"].append(tag)
        if tag not in self.VOID:
            self.stack.append((tag, role))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while self.stack:
            open_tag, role = self.stack.pop()
            if role == "element" and open_tag in ("ul", "ol"):
                self.lists.pop()
            elif role == "element" and open_tag in ("th", "td"):
                self.facts["cells"].append(tuple(self.cell))
                self.cell = None
            if open_tag == tag:
                break

    def handle_data(self, data):
        roles = {role for _, role in self.stack}
        if "note-ref" in roles:
            self.facts["footnote refs"].append(int(data))
        elif not roles & {"math", "skip"}:
            self.text.append(data)


def preview_facts(page: str) -> dict:
    """What the preview shows: the page's <article>, parsed."""
    article = page[page.index("<article>"):page.index("</article>") + len("</article>")]
    reader = _Page()
    reader.feed(article)
    maths = re.findall(r'<math\b.*?</math>|<code class="math-error"[^>]*>.*?</code>', article, re.S)
    return {"maths": Counter(maths), **reader.facts, "text": "".join("".join(reader.text).split())}


@pytest.fixture
def post_dir(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG)
    return tmp_path


def test_the_corpus_is_adversarial_enough():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("name", CORPUS)
def test_preview_shows_what_the_forum_reads(name, post_dir):
    post_md = f"# A post\n\n*Its summary.*\n\n{CORPUS[name]}\n"  # as the render stage writes it
    forum, _ = to_forum_markdown(post_md, lambda src: BASE + src)
    page = post_to_html(post_md, title="A post", base_dir=post_dir)
    expected, shown = forum_facts(forum), preview_facts(page)
    expected["elements"]["em"] -= 1  # the summary line: the page shows it as its lead, not in italics
    assert +expected["elements"] == +shown.pop("elements")
    del expected["elements"]
    assert shown == expected
