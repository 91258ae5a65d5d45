"""The offline preview: a post's markdown as one self-contained HTML file.

The markdown is the text pasted into LessWrong, so `$...$` and `$$...$$` follow the rules of its
markdown-it maths plugin (ForumMagnum `markdownMathjax.ts`, `texMath`), checked against a port of
it in the tests. One deliberate difference: a `$$` block on its own lines is kept away from other
block rules here, where LessWrong would let a line inside it such as `- x` start a list.
Everything the page needs is inside it: images as data URIs, maths as MathML (typeset by the
browser, no JavaScript), code highlighted by pygments with its CSS embedded. Same input, same bytes.
"""

from __future__ import annotations

import base64
import html
import re
import xml.etree.ElementTree as etree
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import markdown
from latex2mathml.converter import convert_to_element
from markdown.blockprocessors import BlockProcessor
from markdown.extensions import Extension
from markdown.inlinepatterns import InlineProcessor
from markdown.treeprocessors import Treeprocessor
from markdown.util import STX, ETX, AtomicString
from pygments.formatters import HtmlFormatter

from expost.errors import ExpostError

PYGMENTS_STYLE = "default"
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif", ".webp": "image/webp"}


class HtmlError(ExpostError):
    """The preview cannot be built: a missing or unsafe image, or raw HTML that would load something."""


# --- maths -------------------------------------------------------------------------------------

def latex_to_mathml(latex: str, display: bool) -> str:
    """MathML for `latex`, or the source in a <code class="math-error"> when it cannot be converted."""
    source = re.sub(r"\\arg(?![A-Za-z])", r"\\operatorname{arg}", latex)  # standard; latex2mathml lacks it
    try:
        tree = convert_to_element(source, display="block" if display else "inline")
    # latex2mathml's exceptions share no base class and malformed input also surfaces as
    # StopIteration/ValueError/IndexError from its tokenizer; a preview shows the source instead.
    except Exception:  # noqa: BLE001
        return f'<code class="math-error" title="LaTeX that could not be converted">{html.escape(latex)}</code>'
    for el in tree.iter():
        if el.text and re.fullmatch(r"\\[A-Za-z]+", el.text):
            el.set("mathcolor", "#b42318")  # an unknown command: MathJax on LessWrong shows it red too
    # Not latex2mathml.convert(): it un-escapes its whole output, so `\text{<b>}` would inject a tag.
    # Its symbols are written as literal "&#x...;" text; only those are turned back into references.
    out = etree.tostring(tree, encoding="unicode")
    return re.sub(r"&amp;(#x[0-9A-Fa-f]+;)", r"&\1", out)


_ESCAPED = re.compile(f"{STX}(\\d+){ETX}")


class InlineMath(InlineProcessor):
    """`$x$` and `$$x$$` in running text, with the rules of LessWrong's markdown-it maths plugin.

    `$`: the next character is not a space, tab or newline; it closes at the next `$`, which must
    not follow a space, tab, newline or backslash nor precede a digit (`$5 and $6` is prose).
    `$$` (not `$$$`): closes at the next `$$`, which must not follow a backslash. When a rule fails
    at a `$` the search goes on from the next character, as markdown-it's does.
    """

    PATTERN = (r"(?s)\$\$(?!\$)((?:(?!\$\$).)*)(?<!\\)\$\$"
               r"|\$(?![ \t\n$])([^$]*)(?<![ \t\n\\])\$(?![0-9])")

    def handleMatch(self, m, data):
        display = m.group(1) is not None
        # Runs after `escape`: `\$` is no delimiter; put back what it stashed (`\{` stays `\{`).
        latex = _ESCAPED.sub(lambda e: "\\" + chr(int(e.group(1))), self.unescape(m.group(2 - display)))
        return self.md.htmlStash.store(latex_to_mathml(latex.strip(), display)), m.start(0), m.end(0)


_MASK = re.compile(r"\\.|(`+).+?(?<!`)\1(?!`)", re.S)  # escapes and code spans hold no delimiter
_CONTAINER = re.compile(r" {0,3}(?:[*+-][ \t]|\d+[.)][ \t]|\[\^[^\]]+\]:)")  # list item, footnote


def find_display(block: str) -> tuple[int, int, str] | None:
    """(first line, last line, latex) of the first `$$...$$` standing on its own lines, or None.

    Found with InlineMath's own rules over the whole paragraph, so `a $$b` + newline + `$$ c`
    pairs the same way as it does inline; the block processor only keeps other block rules away.
    """
    if _CONTAINER.match(block):
        block = block.split("\n", 1)[0]  # the item's own text is parsed again, and found then
    masked = _MASK.sub(lambda m: "_" * len(m.group(0)), block)
    for m in re.finditer(InlineMath.PATTERN, masked):
        start, end = m.span()
        if m.group(1) is not None and re.fullmatch(r" {0,3}", block[block.rfind("\n", 0, start) + 1:start]) \
                and block[end:].split("\n", 1)[0].strip() == "":
            return block.count("\n", 0, start), block.count("\n", 0, end), block[m.start(1):m.end(1)].strip()
    return None


class DisplayMath(BlockProcessor):
    """`$$ ... $$` on its own lines (a blank line ends the block, so it cannot be inside)."""

    def test(self, parent, block):
        return find_display(block) is not None

    def run(self, parent, blocks):
        block = blocks.pop(0)
        first, last, latex = find_display(block)
        lines = block.split("\n")
        if first:
            self.parser.parseBlocks(parent, ["\n".join(lines[:first])])
        div = etree.SubElement(parent, "div", {"class": "math display"})
        div.text = AtomicString(self.parser.md.htmlStash.store(latex_to_mathml(latex, display=True)))
        if last + 1 < len(lines):
            blocks.insert(0, "\n".join(lines[last + 1:]))


class DollarMathExtension(Extension):
    """Python-Markdown extension: LessWrong-style `$...$` and `$$...$$` maths as MathML."""

    def extendMarkdown(self, md):
        md.ESCAPED_CHARS = [*md.ESCAPED_CHARS, "$"]
        # After code spans, escapes, links and autolinks (a `$` in a URL is no maths), as on
        # LessWrong; before hard breaks, raw HTML (its loose pattern takes `<y$ and $z>` for a tag)
        # and emphasis (`$a_1*b_2$` is not emphasis; LessWrong's maths rule skips the markers).
        md.inlinePatterns.register(InlineMath(InlineMath.PATTERN, md), "dollar_math", 105)
        # Below indented code (80): a `$$` indented four spaces is code. Fences are already stashed.
        md.parser.blockprocessors.register(DisplayMath(md.parser), "dollar_math_block", 78)


# --- images and captions ------------------------------------------------------------------------

def image_data_uri(src: str, base_dir: Path) -> str:
    """The data: URI for a relative image path, read from under `base_dir`."""
    parts = urlsplit(src)
    if parts.scheme or parts.netloc or src.startswith("/"):
        raise HtmlError(f"image {src!r}: only relative paths (read from {base_dir}) or http(s) URLs "
                        f"can be used in the preview")
    rel = unquote(parts.path)
    root = base_dir.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise HtmlError(f"image {src!r} points outside {base_dir}; keep figures inside the post folder")
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise HtmlError(f"image {src!r}: unsupported type {path.suffix!r}; use one of {', '.join(MIME)}")
    if not path.is_file():
        raise HtmlError(f"image {src!r} not found: {base_dir / rel} does not exist; fix the path "
                        f"or write the figure before rendering the preview")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _blank(s: str | None) -> bool:
    return not (s and s.strip())


class Figures(Treeprocessor):
    """Inline every image; an image paragraph (plus an italic caption paragraph) becomes a <figure>."""

    def __init__(self, md, base_dir: Path):
        super().__init__(md)
        self.base_dir = base_dir

    def run(self, root):
        for img in root.iter("img"):
            src = img.get("src", "")
            if not re.match(r"(?i)(https?|data):", src):
                img.set("src", image_data_uri(src, self.base_dir))
        for parent in list(root.iter()):
            kids = list(parent)
            for i, p in enumerate(kids):
                if not _image_paragraph(p):
                    continue
                caption = None
                if len(p) == 2:  # `![..](..)` and `*caption*` on the next line: one paragraph
                    caption = p[1]
                    p.remove(caption)
                elif i + 1 < len(kids) and _caption_paragraph(kids[i + 1]):
                    caption = kids[i + 1][0]
                    parent.remove(kids[i + 1])
                p.tag, p[0].tail = "figure", None
                if caption is not None:
                    caption.tail = None
                    etree.SubElement(p, "figcaption").append(caption)


def _image_paragraph(p) -> bool:
    return (p.tag == "p" and _blank(p.text) and [k.tag for k in p] in (["img"], ["img", "em"])
            and all(_blank(k.tail) for k in p))


def _caption_paragraph(p) -> bool:
    return p.tag == "p" and _blank(p.text) and len(p) == 1 and p[0].tag == "em" and _blank(p[0].tail)


class _Audit(HTMLParser):
    """Raw HTML passes through markdown untouched; refuse what would load something or run."""

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "iframe", "object", "embed", "base", "frame"):
            raise HtmlError(f"raw HTML <{tag}> in the post cannot be in an offline preview; remove it")
        src = dict(attrs).get("src")
        if src is not None and not re.match(r"(?i)(https?|data):", src):
            raise HtmlError(f"raw HTML <{tag} src={src!r}> is not inlined; write images as ![alt]({src})")


# --- page ---------------------------------------------------------------------------------------

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --rule: #d1d9e0; --code-bg: #f6f8fa; --zebra: #f6f8fa; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0 auto; padding: 2rem 1.25rem 4rem; max-width: 42rem; color: var(--fg); background: #fff;
  font: 17px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans",
  "Liberation Sans", Arial, sans-serif; overflow-wrap: break-word; }
h1, h2, h3, h4 { line-height: 1.25; margin: 2rem 0 0.75rem; }
h1 { font-size: 2rem; margin-top: 0; } h2 { font-size: 1.45rem; } h3 { font-size: 1.2rem; }
p.summary { color: var(--muted); font-size: 1.1rem; border-bottom: 1px solid var(--rule); padding-bottom: 1rem; }
a { color: #0b63c4; }
img { max-width: 100%; height: auto; }
figure { margin: 1.5rem 0; text-align: center; }
figure img { display: block; margin: 0 auto; }
figcaption { margin-top: 0.4rem; color: var(--muted); font-size: 0.92rem; line-height: 1.45; text-align: left; }
blockquote { margin: 1rem 0; padding: 0 1rem; color: var(--muted); border-left: 0.25rem solid var(--rule); }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.88em; }
:not(pre) > code { background: var(--code-bg); padding: 0.1em 0.3em; border-radius: 4px; }
.codehilite { background: var(--code-bg); border: 1px solid var(--rule); border-radius: 6px; margin: 1rem 0; }
.codehilite pre { margin: 0; padding: 0.75rem 1rem; overflow-x: auto; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; display: block; overflow-x: auto; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--rule); padding: 0.3rem 0.7rem; }
th { background: #eef1f4; } tbody tr:nth-child(even) { background: var(--zebra); }
math { font-family: "STIX Two Math", "Cambria Math", "Latin Modern Math", "DejaVu Math TeX Gyre", math; }
.math.display { margin: 1rem 0; overflow-x: auto; overflow-y: hidden; text-align: center; }
math[display="block"] { display: block math; margin: 0 auto; }
code.math-error { color: #b42318; background: #fef3f2; }
hr { border: 0; border-top: 1px solid var(--rule); margin: 2rem 0; }
.footnote { font-size: 0.85rem; color: var(--muted); margin-top: 3rem; }
.footnote hr { margin: 1rem 0; } .footnote li p { margin: 0.3rem 0; }
sup { line-height: 0; }
"""


def _converter(base_dir: Path) -> markdown.Markdown:
    md = markdown.Markdown(
        extensions=["tables", "fenced_code", "codehilite", "footnotes", "sane_lists", "toc",
                    DollarMathExtension()],
        extension_configs={
            "codehilite": {"css_class": "codehilite", "guess_lang": False, "pygments_style": PYGMENTS_STYLE},
            "toc": {"marker": ""},  # heading ids only: LessWrong has no [TOC] marker
        },
        output_format="html",
    )
    # After `unescape` (0), so image src values are final.
    md.treeprocessors.register(Figures(md, base_dir), "expost_figures", -1)
    return md


def _inline(text: str, base_dir: Path) -> str:
    """A title or summary line as inline HTML: its maths rendered like the body's."""
    out = _converter(base_dir).convert(text).strip()
    return out[3:-4] if out.startswith("<p>") and out.endswith("</p>") else html.escape(text)


def markdown_to_html(md_text: str, *, title: str, base_dir: Path, summary: str = "") -> str:
    """One self-contained HTML page for a post's markdown; images are read from under `base_dir`."""
    body = _converter(Path(base_dir)).convert(md_text)
    heading, summary_html = (_inline(t, Path(base_dir)) for t in (title, summary))
    for part in (body, heading, summary_html):
        _Audit().feed(part)
    style = HtmlFormatter(style=PYGMENTS_STYLE).get_style_defs(".codehilite")
    lead = f'<p class="summary">{summary_html}</p>\n' if summary.strip() else ""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{CSS}\n{style}\n</style>\n</head>\n<body>\n<article>\n"
        f"<h1>{heading}</h1>\n{lead}{body}\n</article>\n</body>\n</html>\n"
    )
