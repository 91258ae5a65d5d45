"""The forum bundle: a rendered post's markdown made safe to paste into LessWrong / Alignment Forum.

The text is read by the one markdown parse (expost.posts.markdown: LessWrong's markdown-it pipeline
and maths rules, the parse the HTML preview renders) after its repairs (`normalise`: prose dollars
become `\\$`, `$ x $` becomes `$x$`, a `$$` block broken by blank lines or by a line such as `+ b` is
mended). Here, on top of that parse: relative image links become absolute URLs, leftover template
syntax and local paths are refused, and raw HTML (plain text on LessWrong) is warned about. The
output is the input byte for byte except for those repairs and links; applying it twice changes
nothing more.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_right
from typing import Callable

from markdown_it.common.utils import normalizeReference
from markdown_it.helpers import parseLinkDestination

from expost.errors import PublishError
from expost.posts.markdown import Parsed, Span, normalise, parse


def to_forum_markdown(md: str, image_url: Callable[[str], str | None], *, name: str = "post.md",
                      unpublished: Callable[[str], str] | None = None) -> tuple[str, list[str]]:
    """(markdown for LessWrong's markdown editor, warnings) for a rendered post's markdown.

    `image_url(relative_src)` gives the absolute URL for a relative image link, or None to keep
    it relative (with a warning), or to link `unpublished(relative_src)` when that is given (the
    gist's README: the figure's own file in the gist). Raises PublishError on leftover template
    syntax or a local path.
    """
    crlf = "\r\n" in md and "\n" not in md.replace("\r\n", "")
    fixed = normalise(md, name=name)
    text = fixed.text
    parsed = parse(text)  # what LessWrong, and the preview, read
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        return fixed.origin[bisect_right(line_starts, offset) - 1]

    _refuse_template_syntax(text, parsed, line_starts, line_of, name)
    _refuse_local_paths(text, line_of, name)
    edits: dict[tuple[int, int], str] = {}  # a reference definition may serve several images
    warnings = _raw_html(text, parsed, line_starts, line_of, name) + fixed.warnings
    for r in parsed.found:
        if r.kind in ("image", "image_ref"):
            if r.kind == "image_ref":
                r = _reference_destination(text, r.info, parsed.references.get(r.info), line_starts, r)
            url = _image_link(r.info, line_of(r.start), name, image_url, warnings, unpublished) if r.info else None
            if url is not None:
                edits[r.start, r.end] = url
    for (start, end), new in sorted(edits.items(), reverse=True):
        text = text[:start] + new + text[end:]
    return (text.replace("\n", "\r\n") if crlf else text), list(dict.fromkeys(warnings))


def as_details(md: str) -> str:
    """LessWrong's collapsible sections (`+++ Title` ... `+++`) as the <details> blocks that GitHub's
    markdown folds the same way; everything else unchanged."""
    if "+++" not in md:
        return md  # no section: skip the parse
    lines = md.split("\n")
    for tok in reversed(parse(md).tokens):
        if tok.type != "collapsible_open" or not tok.map:
            continue
        first, end = tok.map
        if end - 1 > first and lines[end - 1].strip().startswith("+++"):
            lines[end - 1] = "\n</details>"
        lines[first] = f"<details><summary>{html.escape(tok.info)}</summary>\n"
    return "\n".join(lines)


# --- refusals and warnings --------------------------------------------------------------------

def _outside_code_and_maths(pattern: re.Pattern, text, parsed: Parsed, line_starts):
    """(match, line index) for each match of pattern that is not in code or maths."""
    skip = [(r.start, r.end) for r in parsed.found if r.kind in ("code", "math", "bracket")]
    for m in pattern.finditer(text):
        index = bisect_right(line_starts, m.start()) - 1
        if index not in parsed.code_lines and not any(a <= m.start() < b for a, b in skip):
            yield m, index


_TEMPLATE = re.compile(r"\{\{|\}\}|\{%|%\}")


def _refuse_template_syntax(text, parsed: Parsed, line_starts, line_of, name) -> None:
    # `}}` is everyday TeX (\frac{a}{\sqrt{b}}) and everyday code, so only the rest is searched.
    for m, index in _outside_code_and_maths(_TEMPLATE, text, parsed, line_starts):
        line = text[line_starts[index]:].split("\n", 1)[0]
        raise PublishError(f"{name} line {line_of(m.start())}: unrendered template syntax {m.group(0)!r} "
                           f"in {line.strip()!r}; fix the template (or put literal braces in `code`) "
                           f"and render again")


_HTML = re.compile(r"(?i)<!--|</?(?:a|b|i|u|s|em|strong|small|big|center|br|hr|img|div|span|p|sup|sub|"
                   r"code|pre|kbd|blockquote|details|summary|figure|figcaption|table|tr|td|th|ul|ol|li|"
                   r"h[1-6]|iframe|video|audio|script|style)\b[^<>]*>")


def _raw_html(text, parsed: Parsed, line_starts, line_of, name) -> list[str]:
    return [f"{name} line {line_of(m.start())}: raw HTML {m.group(0)[:40]!r} shows as plain text on "
            f"LessWrong, whose markdown has HTML turned off; write it in markdown"
            for m, _ in _outside_code_and_maths(_HTML, text, parsed, line_starts)]


_LOCAL_PATH = re.compile(r"(?i:\bfile:/)|(?<![\w.~/-])/(?:home|Users|root)/|\b[A-Za-z]:[\\/]+Users[\\/]")


def _refuse_local_paths(text, line_of, name) -> None:
    m = _LOCAL_PATH.search(text)
    if m:
        end = re.compile(r"[\s)\]>\"'`]|$").search(text, m.end()).start()
        raise PublishError(f"{name} line {line_of(m.start())}: local path {text[m.start():end]!r} "
                           f"cannot be read on the forum and names your machine; use a path relative "
                           f"to the post folder, or an http(s) URL")


def _image_link(src: str, line: int, name, image_url, warnings, unpublished=None) -> str | None:
    """The replacement for an image destination, or None to leave it as it is."""
    if re.match(r"(?i)(?:https?:)?//", src) or src.startswith("data:"):
        return None
    if src.startswith(("/", "~", "\\")) or re.match(r"(?i)[a-z]:[\\/]|file:", src):
        raise PublishError(f"{name} line {line}: image {src!r} is an absolute local path; use a path "
                           f"relative to the post folder (figures/...) or an http(s) URL")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", src):
        return None  # some other scheme: the forum decides
    url = image_url(src)
    if url is None and unpublished is not None:
        return unpublished(src)
    if url is None:
        warnings.append(f"{src} is still a relative link: set image_base_url in expost.toml "
                        f"or publish the gist first")
        return None
    if not re.match(r"(?i)https?://", url):
        raise PublishError(f"image {src!r} maps to {url!r}, which is not an http(s) URL; "
                           f"set image_base_url in expost.toml to an https:// address")
    return re.sub(r"[ ()<>]", lambda c: "%{:02X}".format(ord(c.group(0))), url)


def _reference_destination(text, key, ref, line_starts, rec) -> Span:
    """The destination of a reference-style image, in its `[label]: dest` definition."""
    if ref is not None:
        line = ref["map"][0]
        labels = re.compile(r"\[((?:\\.|[^\\\[\]])+)\]:[ \t]*(?:\n[ \t>]*)?")
        eol = text.find("\n", line_starts[line])
        eol = len(text) if eol < 0 else eol
        for m in labels.finditer(text, line_starts[line]):
            if m.start() > eol:
                break
            if normalizeReference(m.group(1)) == key:
                res = parseLinkDestination(text, m.end(), len(text))
                if res.ok:
                    return Span("image", m.end(), res.pos, res.str)
    return Span("image", rec.start, rec.start, "")
