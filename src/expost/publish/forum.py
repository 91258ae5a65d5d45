"""The forum bundle: a rendered post's markdown made safe to paste into LessWrong / Alignment Forum.

LessWrong renders markdown with markdown-it (`markdownIt({linkify: true})`, raw HTML off) plus its
maths plugin (ForumMagnum `markdown-mathjax.ts`), markdown-it-footnote, -sub and -sup. We parse with
markdown-it-py and the same plugins, with a port of the maths rules, so every `$` is judged where
LessWrong's parser would meet it: inside code spans, fences, autolinks or link destinations it is
never seen; in text it either opens maths or stays a literal dollar. Left out: linkify (it needs
linkify-it-py; a `$` inside a bare URL is simply not escaped) and the spoiler container.

The output is the input byte for byte except for these repairs: prose dollars become `\\$`,
`$ x $` becomes `$x$`, a `$$` block broken by blank lines (or by a line such as `+ b` that would
start a list) is mended, and relative image links become absolute URLs. Applying it twice changes
nothing more.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable

from markdown_it import MarkdownIt
from markdown_it.common.utils import normalizeReference
from markdown_it.helpers import parseLinkDestination
from mdit_py_plugins.footnote import footnote_plugin
from mdit_py_plugins.subscript import sub_plugin
from mdit_py_plugins.superscript import superscript_plugin

from expost.errors import PublishError

_REC = "expost_forum_records"  # key in the markdown-it env: what the rules below saw, and where
_SPACE = (" ", "\t", "\n")
_DIGITS = tuple("0123456789")


@dataclass(frozen=True)
class Maths:
    """One maths span as LessWrong reads it: offsets of its delimiters in the text, and its TeX."""

    start: int
    end: int
    latex: str
    display: bool


@dataclass
class _Rec:
    kind: str  # math | bracket | dollar | code | image | image_ref
    start: int
    end: int
    info: object = None


# --- LessWrong's maths rules (markdown-mathjax.ts), ported -----------------------------------

def _tex_math(src: str, pos: int) -> tuple[int, bool] | None:
    """(end, display) of the `$...$` / `$$...$$` opening at src[pos], by LessWrong's `texMath`.

    `$`: not followed by a space, tab or newline; closes at the very next `$`, which must not follow
    a space, tab, newline or backslash nor precede a digit. `$$` (not `$$$`): closes at the next
    `$$`, which must not follow a backslash. The search runs to the end of the paragraph.
    """
    start, marker = pos + 1, "$"
    if src[start:start + 1] == "$":
        start, marker = start + 1, "$$"
        if src[start:start + 1] == "$":
            return None
    elif src[start:start + 1] in _SPACE:
        return None
    end = src.find(marker, start)
    if end < 0 or src[end - 1] == "\\":
        return None
    if marker == "$" and (src[end - 1] in _SPACE or src[end + 1:end + 2] in _DIGITS):
        return None
    return end + len(marker), marker == "$$"


_PROSE = re.compile(r"(?i)[a-z]{2,}[\s,;:.!?]+[a-z]{2,}|\b(?:and|or|the|to|of|for|per|is|are|was|"
                    r"with|from|by|than|then|vs|each|only)\b")
_TEX_WORDS = re.compile(r"\\[A-Za-z]+(?:\s*\{[^{}]*\})?")


def _padded_math(src: str, pos: int) -> int | None:
    """End of `$ x $` at src[pos] when it is maths written with spaces inside, else None.

    Only where LessWrong's rule failed at both dollars, on one line, and the inside looks like TeX
    rather than prose (`costs $ 5 and $ 6` stays prose).
    """
    if src[pos + 1:pos + 2] == "$" or src[pos - 1:pos] == "$" or src[pos - 1:pos].isalnum():
        return None
    end = src.find("$", pos + 1)
    if end < 0 or src[end + 1:end + 2] == "$" or src[end + 1:end + 2].isalnum() or _tex_math(src, end):
        return None
    inner = src[pos + 1:end]
    tex = inner.strip(" \t")
    if not tex or tex == inner or "\n" in inner or tex[-1] in "\\-+*/=<>,;:" \
            or _PROSE.search(_TEX_WORDS.sub(" ", tex)):
        return None
    return end + 1


def _tex_math_rule(lenient: bool):
    def tex_math(state, silent):
        src, pos = state.src, state.pos
        if src[pos] != "$":
            return False
        hit, padded = _tex_math(src, pos), False
        if hit is None and lenient and (end := _padded_math(src, pos)):
            hit, padded = (end, False), True
        recs = state.env.get(_REC)
        if hit is None:
            if not silent and recs is not None:
                recs.append(_Rec("dollar", pos, pos + 1))
            return False
        end, display = hit
        if not silent:
            token = state.push("math_display" if display else "math_inline", "", 0)
            token.content = src[pos + 1 + display:end - 1 - display]
            if recs is not None:
                recs.append(_Rec("math", pos, end, (display, padded)))
        state.pos = end
        return True
    return tex_math


_BRACKET = re.compile(r"\\\[|\\\(|begin\{([^}]*)\}")


def _bracket_math(state, silent):
    """LessWrong's `math` rule: `\\\\[..\\\\]`, `\\\\(..\\\\)` and `\\begin{env}..\\end{env}`."""
    src, pos = state.src, state.pos
    if src[pos] != "\\":
        return False
    m = _BRACKET.match(src, pos + 1)
    if not m or not (m.group(0) in ("\\[", "\\(") or m.group(1)):
        return False
    marker = {"\\[": "\\\\]", "\\(": "\\\\)"}.get(m.group(0)) or "\\end{" + m.group(1) + "}"
    end = src.find(marker, m.end())
    if end < 0:
        return False
    if not silent:
        state.push("math_bracket", "", 0).content = src[pos:end + len(marker)]
        if (recs := state.env.get(_REC)) is not None:
            recs.append(_Rec("bracket", pos, end + len(marker), m.group(0) != "\\("))
    state.pos = end + len(marker)
    return True


# --- where the parser met what: rules that note their findings -----------------------------

def _noting(rule, kind):
    """Wrap a markdown-it-py inline rule so that a successful, non-silent match is noted."""
    def noted(state, silent):
        start, recs = state.pos, state.env.get(_REC)
        seen = len(recs) if recs is not None else 0
        if not rule(state, silent):
            return False
        if silent or recs is None:
            return True
        if kind == "code":
            recs.append(_Rec("code", start, state.pos))
            return True
        for rec in recs[seen:]:  # found while parsing the alt text / note text, which start at +2
            rec.start, rec.end = rec.start + start + 2, rec.end + start + 2
        if kind == "image":
            recs.append(_image_destination(state, start))
        return True
    return noted


def _image_destination(state, start) -> _Rec:
    src = state.src
    label_end = state.md.helpers.parseLinkLabel(state, start + 1, False)
    pos = label_end + 1
    if src[pos:pos + 1] == "(":
        pos += 1
        while src[pos:pos + 1] in (" ", "\t", "\n"):
            pos += 1
        res = parseLinkDestination(src, pos, state.posMax)
        return _Rec("image", pos, res.pos if res.ok else pos, res.str if res.ok else "")
    label = ""
    if src[pos:pos + 1] == "[":
        close = state.md.helpers.parseLinkLabel(state, pos)
        label = src[pos + 1:close] if close >= 0 else ""
    return _Rec("image_ref", start, start, normalizeReference(label or src[start + 2:label_end]))


@functools.lru_cache(maxsize=2)
def _parser(lenient: bool) -> MarkdownIt:
    md = MarkdownIt("js-default").use(footnote_plugin).use(sub_plugin).use(superscript_plugin)
    md.inline.ruler.before("escape", "lw_bracket_math", _bracket_math)
    md.inline.ruler.push("lw_tex_math", _tex_math_rule(lenient))
    for name, kind in (("backticks", "code"), ("image", "image"), ("footnote_inline", "note")):
        rule = next(r.fn for r in md.inline.ruler.__rules__ if r.name == name)
        md.inline.ruler.at(name, _noting(rule, kind))
    # _scan runs the inline rules per token, knowing where each is; footnote definitions stay put.
    md.core.ruler.disable(["inline", "footnote_tail"])
    return md


@dataclass
class _Scan:
    recs: list[_Rec]
    code_lines: set[int]  # lines of fenced and indented code
    fence_lines: set[int]
    references: dict


def _scan(text: str, lenient: bool) -> _Scan:
    """Parse `text` (\\n line ends) as LessWrong would; every finding with its offsets in `text`."""
    md, env = _parser(lenient), {}
    tokens = md.parse(text, env)
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    scan = _Scan([], set(), set(), env.get("references", {}))
    cursor: dict[int, int] = {}  # table rows: where the next cell may start
    for i, tok in enumerate(tokens):
        if tok.type in ("fence", "code_block"):
            scan.code_lines.update(range(*tok.map))
            if tok.type == "fence":
                scan.fence_lines.update(range(*tok.map))
        if tok.type != "inline" or not tok.content:
            continue
        env[_REC] = recs = []
        md.inline.parse(tok.content, md, env, [])
        where = _place(tok, tokens[i - 1].type in ("th_open", "td_open"), lines, starts, cursor)
        for rec in recs:
            start = where(rec.start)
            rec.start, rec.end = start, (where(rec.end - 1) + 1 if rec.end > rec.start else start)
            scan.recs.append(rec)
    scan.recs.sort(key=lambda r: (r.start, r.end))
    return scan


def _place(tok, cell: bool, lines: list[str], starts: list[int], cursor: dict[int, int]):
    """Offset in the text of each character of an inline token's content.

    A content line is its source line less a prefix (indent, `>`, list marker, `#`s), less trailing
    blanks or a closing `#` run; a table cell is a stretch of its row less `\\` before `|`. Lines
    that held only whitespace such as U+00A0 may be gone from the start of a paragraph.
    """
    parts = tok.content.split("\n")
    for skip in range(max(tok.map[1] - tok.map[0] - len(parts), 0) + 1):
        cols, placed = _columns(parts, tok.map[0] + skip, cell, lines, starts, cursor)
        if placed:
            break
    if cell and tok.content:
        cursor[tok.map[0]] = max(cols) - starts[tok.map[0]] + 1

    def where(i: int) -> int:
        if cols[i] < 0:  # never happens for `$`, `!`, `\\` or a backtick; a guard, not a path
            raise PublishError(f"line {tok.map[0] + 1}: cannot place {tok.content[i]!r} of "
                               f"{tok.content!r}; please report this with the line")
        return cols[i]
    return where


def _columns(parts, first, cell, lines, starts, cursor) -> tuple[list[int], bool]:
    """(offset of each content character or -1 for a leading blank, whether all were found)."""
    cols: list[int] = []
    placed = True
    for k, part in enumerate(parts):
        line, core = lines[first + k], part.lstrip(" \t")
        found = None
        if not cell:
            for end in sorted({len(line), len(line.rstrip(" \t")), len(line.rstrip())}, reverse=True):
                if line[end - len(core):end] == core:
                    found = list(range(end - len(core), end))
                    break
        if found is None:  # heading with a closing `#` run, or a table cell: in order, from the left
            found, p = [], cursor.get(first, 0) if cell else 0
            for ch in core:
                q = line.find(ch, p)
                found.append(q)
                p = q + 1 if q >= 0 else p
            placed = placed and -1 not in found
        at = starts[first + k]
        cols += [-1] * (len(part) - len(core)) + [at + c if c >= 0 else -1 for c in found] + [at + len(line)]
    return cols[:-1], placed


# --- the public functions -----------------------------------------------------------------

def find_maths(md: str) -> list[Maths]:
    """Every maths span of `md` (a markdown string) exactly as LessWrong's parser reads it."""
    text = md.replace("\r\n", "\n").replace("\r", "\n")
    back = _offsets_back(md)
    out = []
    for r in _scan(text, lenient=False).recs:
        if r.kind == "math":
            inner = 2 if r.info[0] else 1
            out.append(Maths(back(r.start), back(r.end), text[r.start + inner:r.end - inner], r.info[0]))
        elif r.kind == "bracket":
            body = text[r.start:r.end]
            out.append(Maths(back(r.start), back(r.end), body if body[1] != "\\" else body[3:-3], r.info))
    return out


def to_forum_markdown(md: str, image_url: Callable[[str], str | None], *,
                      name: str = "post.md") -> tuple[str, list[str]]:
    """(markdown for LessWrong's markdown editor, warnings) for a rendered post's markdown.

    `image_url(relative_src)` gives the absolute URL for a relative image link, or None to keep
    it relative (with a warning). Raises PublishError on leftover template syntax or a local path.
    """
    crlf = "\r\n" in md and "\n" not in md.replace("\r\n", "")
    text, origin = _mend_display_maths(md.replace("\r\n", "\n").replace("\r", "\n"))
    scan = _scan(text, lenient=True)
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        return origin[bisect_right(line_starts, offset) - 1]

    _refuse_template_syntax(text, scan, line_starts, line_of, name)
    _refuse_local_paths(text, line_of, name)
    edits: dict[tuple[int, int], str] = {}  # a reference definition may serve several images
    warnings = _raw_html(text, scan, line_starts, line_of, name)
    urls = [m.span() for m in re.finditer(r"(?:https?://|www\.)[^\s<>]*", text)]
    for r in scan.recs:
        if r.kind == "dollar" and not any(a <= r.start < b for a, b in urls):
            edits[r.start, r.start] = "\\"
            around = text[r.start - 1:r.start] + text[r.start + 2:r.start + 3]
            if text[r.start:r.start + 2] == "$$" and "$" not in around:  # `$$`, not `$$$`
                warnings.append(f"{name} line {line_of(r.start)}: `$$` does not open or close display "
                                f"maths on LessWrong (an unclosed block?), so it is escaped as \\$\\$")
        elif r.kind == "math" and r.info[1]:  # `$ x $`
            edits[r.start, r.end] = "$" + text[r.start + 1:r.end - 1].strip(" \t") + "$"
        elif r.kind in ("image", "image_ref"):
            if r.kind == "image_ref":
                r = _reference_destination(text, r.info, scan.references.get(r.info), line_starts, r)
            url = _image_link(r.info, line_of(r.start), name, image_url, warnings) if r.info else None
            if url is not None:
                edits[r.start, r.end] = url
    for (start, end), new in sorted(edits.items(), reverse=True):
        text = text[:start] + new + text[end:]
    return (text.replace("\n", "\r\n") if crlf else text), list(dict.fromkeys(warnings))


# --- repairs and refusals -------------------------------------------------------------------

_INTERRUPTS = re.compile(r"#{1,6}(?:[ \t]|$)|>|`{3}|~{3}|[-+*](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)"
                         r"|=+[ \t]*$|-+[ \t]*$|(?:[*_-][ \t]*){3,}$|\[\^[^\]]*\]:|\|")


def _mend_display_maths(text: str) -> tuple[str, list[int]]:
    """Mend the `$$` blocks that LessWrong would break; (text, original line number of each line).

    A `$$` block is maths inside a paragraph there, so a blank line ends it and a line inside that
    could start a block (`+ b`, `# x`, `> y`) breaks it. Only a block whose own-line opening `$$`
    and closing `$$` LessWrong rejects is touched: its blank lines go, such lines get indented.
    """
    lines = text.split("\n")
    scan = _scan(text, lenient=False)
    rejected = {r.start for r in scan.recs if r.kind == "dollar"}
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)

    def closing_line(i: int) -> int | None:
        line = lines[i]
        col = len(line) - len(line.lstrip(" \t"))
        if line[col:col + 2] != "$$" or "$" in line[col + 2:] or starts[i] + col not in rejected \
                or i in scan.code_lines:
            return None
        j = i + 1
        while j < len(lines) and "$$" not in lines[j] and j not in scan.fence_lines:
            j += 1
        closer = lines[j].rstrip(" \t") if j < len(lines) else ""
        if closer.endswith("$$") and closer.count("$") == 2 and j not in scan.fence_lines \
                and starts[j] + len(closer) - 2 in rejected:
            return j
        return None

    out, origin, i = [], [], 0
    while i < len(lines):
        j = closing_line(i)
        if j is not None:
            col = len(lines[i]) - len(lines[i].lstrip(" \t"))
            out.append(lines[i])
            origin.append(i + 1)
            for k in range(i + 1, j):
                inner = lines[k]
                if not inner.strip():
                    continue
                lead = len(inner) - len(inner.lstrip(" \t"))
                if lead < col + 4 and _INTERRUPTS.match(inner.lstrip(" \t")):
                    inner = " " * (col + 4 - lead) + inner
                out.append(inner)
                origin.append(k + 1)
            i = j
        out.append(lines[i])
        origin.append(i + 1)
        i += 1
    return "\n".join(out), origin


def _outside_code_and_maths(pattern: re.Pattern, text, scan: _Scan, line_starts):
    """(match, line index) for each match of pattern that is not in code or maths."""
    skip = [(r.start, r.end) for r in scan.recs if r.kind in ("code", "math", "bracket")]
    for m in pattern.finditer(text):
        index = bisect_right(line_starts, m.start()) - 1
        if index not in scan.code_lines and not any(a <= m.start() < b for a, b in skip):
            yield m, index


_TEMPLATE = re.compile(r"\{\{|\}\}|\{%|%\}")


def _refuse_template_syntax(text, scan: _Scan, line_starts, line_of, name) -> None:
    # `}}` is everyday TeX (\frac{a}{\sqrt{b}}) and everyday code, so only the rest is searched.
    for m, index in _outside_code_and_maths(_TEMPLATE, text, scan, line_starts):
        line = text[line_starts[index]:].split("\n", 1)[0]
        raise PublishError(f"{name} line {line_of(m.start())}: unrendered template syntax {m.group(0)!r} "
                           f"in {line.strip()!r}; fix the template (or put literal braces in `code`) "
                           f"and render again")


_HTML = re.compile(r"(?i)<!--|</?(?:a|b|i|u|s|em|strong|small|big|center|br|hr|img|div|span|p|sup|sub|"
                   r"code|pre|kbd|blockquote|details|summary|figure|figcaption|table|tr|td|th|ul|ol|li|"
                   r"h[1-6]|iframe|video|audio|script|style)\b[^<>]*>")


def _raw_html(text, scan: _Scan, line_starts, line_of, name) -> list[str]:
    return [f"{name} line {line_of(m.start())}: raw HTML {m.group(0)[:40]!r} shows as plain text on "
            f"LessWrong, whose markdown has HTML turned off; write it in markdown"
            for m, _ in _outside_code_and_maths(_HTML, text, scan, line_starts)]


_LOCAL_PATH = re.compile(r"(?i:\bfile:/)|(?<![\w.~/-])/(?:home|Users|root)/|\b[A-Za-z]:[\\/]+Users[\\/]")


def _refuse_local_paths(text, line_of, name) -> None:
    m = _LOCAL_PATH.search(text)
    if m:
        end = re.compile(r"[\s)\]>\"'`]|$").search(text, m.end()).start()
        raise PublishError(f"{name} line {line_of(m.start())}: local path {text[m.start():end]!r} "
                           f"cannot be read on the forum and names your machine; use a path relative "
                           f"to the post folder, or an http(s) URL")


def _image_link(src: str, line: int, name, image_url, warnings) -> str | None:
    """The replacement for an image destination, or None to leave it as it is."""
    if re.match(r"(?i)(?:https?:)?//", src) or src.startswith("data:"):
        return None
    if src.startswith(("/", "~", "\\")) or re.match(r"(?i)[a-z]:[\\/]|file:", src):
        raise PublishError(f"{name} line {line}: image {src!r} is an absolute local path; use a path "
                           f"relative to the post folder (figures/...) or an http(s) URL")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", src):
        return None  # some other scheme: the forum decides
    url = image_url(src)
    if url is None:
        warnings.append(f"{src} is still a relative link: set image_base_url in expost.toml "
                        f"or publish the gist first")
        return None
    if not re.match(r"(?i)https?://", url):
        raise PublishError(f"image {src!r} maps to {url!r}, which is not an http(s) URL; "
                           f"set image_base_url in expost.toml to an https:// address")
    return re.sub(r"[ ()<>]", lambda c: "%{:02X}".format(ord(c.group(0))), url)


def _reference_destination(text, key, ref, line_starts, rec) -> _Rec:
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
                    return _Rec("image", m.end(), res.pos, res.str)
    return _Rec("image", rec.start, rec.start, "")


def _offsets_back(md: str) -> Callable[[int], int]:
    """Map an offset in md with \\r\\n made \\n back to an offset in md."""
    if "\r" not in md:
        return lambda offset: offset
    removed = [m.start() - k for k, m in enumerate(re.finditer(r"\r(?=\n)", md))]
    return lambda offset: offset + bisect_right(removed, offset)
