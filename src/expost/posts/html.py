"""The offline preview: a post's markdown as one self-contained HTML file.

The page is rendered from the token stream of the one markdown parse (expost.posts.markdown), taken
after the forum's repairs, so it shows what LessWrong will show of the post.md made from the same
text: which text is maths, a footnote, a list item, a table cell or raw HTML (never: LessWrong shows
`<b>` as text, and so does the page) is decided there, once, by the forum's rules. Only the look is
the preview's own: a `$$` block on its own lines gets a block of its own, an image paragraph (with
an italic caption paragraph) becomes a <figure>, headings get ids, footnotes sit under a rule.
Everything the page needs is inside it: images as data URIs, maths as MathML (typeset by the
browser, no JavaScript), code highlighted by pygments with its CSS embedded. Same input, same bytes.
"""

from __future__ import annotations

import base64
import html
import re
import unicodedata
import xml.etree.ElementTree as etree
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml, unescapeAll
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

from expost.errors import ExpostError
from expost.posts.markdown import normalise, parse

PYGMENTS_STYLE = "default"
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif", ".webp": "image/webp"}


class HtmlError(ExpostError):
    """The preview cannot be built: a missing or unsafe image, or HTML that would load something."""


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


def _maths(token: Token) -> str:
    """The MathML of a maths token (math_inline, math_display, math_bracket), converted once."""
    if "html" not in token.meta:
        token.meta["html"] = latex_to_mathml(token.meta["latex"], token.meta["display"])
    return token.meta["html"]


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


class _Audit(HTMLParser):
    """Refuse what would load something or run: the parse has HTML off, so this guards the renderer."""

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
details.collapsible { margin: 1rem 0; border: 1px solid var(--rule); border-radius: 6px; padding: 0.4rem 1rem; }
details.collapsible > summary { cursor: pointer; font-weight: 600; }
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


# --- the token stream, as the page lays it out ----------------------------------------------------

_BREAKS = ("softbreak", "hardbreak")


def _whole(children: list[Token], open_type: str) -> bool:
    """Whether `children` is one `open_type` element (its open token first, its close token last)."""
    if not children or children[0].type != open_type:
        return False
    depth = 0
    for k, c in enumerate(children):
        depth += c.nesting
        if depth == 0:
            return k == len(children) - 1
    return False


def _figure_parts(children: list[Token]) -> tuple[Token, list[Token] | None] | None:
    """(image, caption children or None) when a paragraph is an image, maybe with `*caption*` after it."""
    if not children or children[0].type != "image":
        return None
    rest = children[1:]
    while rest and (rest[0].type in _BREAKS or rest[0].type == "text" and not rest[0].content.strip()):
        rest = rest[1:]
    if not rest:
        return children[0], None
    return (children[0], rest) if _whole(rest, "em_open") else None


def _own_line_display(children: list[Token], n: int) -> bool:
    c = children[n]
    return (c.type in ("math_display", "math_bracket") and c.meta["display"]
            and (n == 0 or children[n - 1].type in _BREAKS)
            and (n == len(children) - 1 or children[n + 1].type in _BREAKS))


def _inline(children: list[Token]) -> Token:
    token = Token("inline", "", 0)
    token.children = children
    return token


def _layout(tokens: list[Token]) -> list[Token]:
    """Paragraphs laid out for the page: figures, and display maths standing on its own lines."""
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type != "paragraph_open":
            out.append(tok)
            i += 1
            continue
        k = i + 2
        while tokens[k].type != "paragraph_close":  # footnote anchors sit before the close
            k += 1
        children, anchors, close = tokens[i + 1].children or [], tokens[i + 2:k], tokens[k]
        i = k + 1
        figure = None if tok.hidden or anchors else _figure_parts(children)
        if figure is not None:
            image, caption = figure
            if caption is None and tokens[i:i + 1] and tokens[i].type == "paragraph_open" \
                    and not tokens[i].hidden and tokens[i + 2].type == "paragraph_close" \
                    and _whole(tokens[i + 1].children or [], "em_open"):
                caption, i = tokens[i + 1].children, i + 3
            token = Token("figure", "figure", 0)
            token.meta = {"image": image, "caption": caption}
            out.append(token)
            continue
        parts, run = [], []
        for n, c in enumerate(children):
            if _own_line_display(children, n):
                parts += [run, c]
                run = []
            else:
                run.append(c)
        parts.append(run)
        for n, part in enumerate(parts):
            if isinstance(part, Token):
                block = Token("math_block", "div", 0)
                block.meta = part.meta
                out.append(block)
                continue
            while part and part[0].type in _BREAKS:
                part = part[1:]
            while part and part[-1].type in _BREAKS:
                part = part[:-1]
            last = n == len(parts) - 1
            if part or (last and anchors):
                out += [tok, _inline(part), *(anchors if last else []), close]
    return out


class _Renderer(RendererHTML):
    """markdown-it-py's HTML renderer with the page's rules; env: base_dir and the heading ids used."""

    def text(self, tokens, idx, options, env):
        return html.escape(tokens[idx].content, quote=False)  # quotes stay quotes in running text

    def math_inline(self, tokens, idx, options, env):
        return _maths(tokens[idx])

    math_display = math_bracket = math_inline

    def math_block(self, tokens, idx, options, env):
        return f'<div class="math display">{_maths(tokens[idx])}</div>\n'

    def fence(self, tokens, idx, options, env):
        info = unescapeAll(tokens[idx].info).strip()
        return _highlight(tokens[idx].content, info.split()[0] if info else "")

    def code_block(self, tokens, idx, options, env):
        return _highlight(tokens[idx].content, "")

    def collapsible_open(self, tokens, idx, options, env):  # LessWrong's `+++ Title` section, folded
        title = self.renderInline(tokens[idx + 1].children or [], options, env)
        tokens[idx + 1].children = []  # the title is shown in <summary>, not again as text
        return f'<details class="collapsible">\n<summary>{title}</summary>\n'

    def collapsible_close(self, tokens, idx, options, env):
        return "</details>\n"

    def heading_open(self, tokens, idx, options, env):
        text = self.renderInline(tokens[idx + 1].children or [], options, env)
        return f'<{tokens[idx].tag} id="{_heading_id(text, env["ids"])}">'

    def image(self, tokens, idx, options, env):
        token = tokens[idx]
        src = token.attrGet("src") or ""
        if not re.match(r"(?i)(https?|data):", src):
            src = image_data_uri(src, env["base_dir"])
        alt = self.renderInlineAsText(token.children, options, env)
        title = token.attrGet("title")
        title = f' title="{escapeHtml(str(title))}"' if title else ""
        return f'<img alt="{escapeHtml(alt)}" src="{escapeHtml(src)}"{title}>'

    def figure(self, tokens, idx, options, env):
        meta = tokens[idx].meta
        out = "<figure>" + self.image([meta["image"]], 0, options, env)
        if meta["caption"] is not None:
            out += f"<figcaption>{self.renderInline(meta['caption'], options, env)}</figcaption>"
        return out + "</figure>\n"

    def th_open(self, tokens, idx, options, env):
        token = tokens[idx]
        if style := token.attrGet("style"):  # text-align:right
            token.attrSet("style", str(style).replace(":", ": ") + ";")
        return self.renderToken(tokens, idx, options, env)

    td_open = th_open

    # Footnotes as LessWrong numbers them (by first reference), marked up as Python-Markdown does.
    def footnote_ref(self, tokens, idx, options, env):
        n, ref = _note_ids(tokens[idx].meta)
        return f'<sup id="{ref}"><a class="footnote-ref" href="#fn:{n}">{n}</a></sup>'

    def footnote_anchor(self, tokens, idx, options, env):
        n, ref = _note_ids(tokens[idx].meta)
        after_text = tokens[idx - 1].type == "inline" and bool(tokens[idx - 1].children)
        space = "&#160;" if after_text and not tokens[idx].meta.get("subId") else ""
        return (f'{space}<a class="footnote-backref" href="#{ref}" '
                f'title="Jump back to footnote {n} in the text">&#8617;</a>')

    def footnote_block_open(self, tokens, idx, options, env):
        return '<div class="footnote">\n<hr>\n<ol>\n'

    def footnote_block_close(self, tokens, idx, options, env):
        return "</ol>\n</div>\n"

    def footnote_open(self, tokens, idx, options, env):
        return f'<li id="fn:{tokens[idx].meta["id"] + 1}">\n'

    def footnote_close(self, tokens, idx, options, env):
        return "</li>\n"

    # HTML is off in the parse, so these never come; were they to, they would show as text.
    def html_inline(self, tokens, idx, options, env):
        return escapeHtml(tokens[idx].content)

    html_block = html_inline


def _note_ids(meta: dict) -> tuple[int, str]:
    n, sub = meta["id"] + 1, meta.get("subId", 0)  # an inline note ^[..] has one reference
    return n, f"fnref{sub + 1 if sub else ''}:{n}"


def _heading_id(inner_html: str, used: set[str]) -> str:
    """A unique id from a heading's text, as Python-Markdown's toc makes them (maths as its MathML text)."""
    text = re.sub(r"&[#a-zA-Z0-9]+;", "", re.sub(r"<[^>]+>", "", inner_html))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())
    candidate, n = slug, 0
    while candidate in used or not candidate:
        n += 1
        candidate = f"{slug}_{n}"
    used.add(candidate)
    return candidate


_OPTIONS = MarkdownIt("js-default").options  # LessWrong's: no xhtmlOut, no breaks
_FORMATTER = HtmlFormatter(cssclass="codehilite", wrapcode=True, style=PYGMENTS_STYLE)


def _highlight(code: str, lang: str) -> str:
    """A code block highlighted by pygments (plain text for no or an unknown language)."""
    try:
        lexer = get_lexer_by_name(lang) if lang else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, _FORMATTER) + "\n"


def post_to_html(post_md: str, *, title: str, base_dir: Path) -> str:
    """The preview page of a whole post.md, its figures read from under `base_dir`.

    The text gets the forum's repairs first (posts.markdown.normalise, as the forum post.md does),
    then one parse; its opening `# title` heading and `*summary*` line become the page's header.
    `title` is the page's <title>.
    """
    return _page(post_md, title=title, base_dir=Path(base_dir), summary=True)


def markdown_to_html(md_text: str, *, title: str, base_dir: Path, summary: str = "") -> str:
    """One self-contained HTML page for a post body, under `title` and `summary` written above it
    as post.md has them (`# title`, `*summary*`); images are read from under `base_dir`."""
    header = f"# {title}\n\n" + (f"*{summary}*\n\n" if summary.strip() else "")
    return _page(header + md_text, title=title, base_dir=Path(base_dir), summary=bool(summary.strip()))


def _page(md_text: str, *, title: str, base_dir: Path, summary: bool) -> str:
    tokens = parse(normalise(md_text).text).tokens
    renderer, env = _Renderer(), {"base_dir": base_dir, "ids": set()}
    options = _OPTIONS
    heading = html.escape(title)
    if [t.type for t in tokens[:3]] == ["heading_open", "inline", "heading_close"] and tokens[0].tag == "h1":
        heading, tokens = renderer.renderInline(tokens[1].children or [], options, env), tokens[3:]
    lead = ""
    if summary and [t.type for t in tokens[:3]] == ["paragraph_open", "inline", "paragraph_close"]:
        children = tokens[1].children or []
        lead = renderer.renderInline(children[1:-1] if _whole(children, "em_open") else children, options, env)
        lead, tokens = f'<p class="summary">{lead}</p>\n', tokens[3:]
    body = renderer.render(_layout(tokens), options, env)
    for part in (body, heading, lead):
        _Audit().feed(part)
    style = HtmlFormatter(style=PYGMENTS_STYLE).get_style_defs(".codehilite")
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{CSS}\n{style}\n</style>\n</head>\n<body>\n<article>\n"
        f"<h1>{heading}</h1>\n{lead}{body.rstrip()}\n</article>\n</body>\n</html>\n"
    )
