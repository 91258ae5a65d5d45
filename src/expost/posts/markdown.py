"""The one markdown parse: a post's text read the way LessWrong's markdown-it pipeline reads it.

LessWrong renders markdown with markdown-it (`markdownIt({linkify: true})`, raw HTML off) plus its
maths plugin (ForumMagnum `markdown-mathjax.ts`), markdown-it-footnote, -sub and -sup. `parse` is
that parser in markdown-it-py with the same plugins and a port of the maths rules, so every `$` is
judged where LessWrong's parser would meet it: inside code spans, fences, autolinks or link
destinations it is never seen; in text it either opens maths or stays a literal dollar. Left out:
linkify (it needs linkify-it-py; a bare URL stays text) and the spoiler container.

Both readers of a post use this one token stream: the HTML preview (posts.html) renders it, and the
forum export (publish.forum) checks and rewrites post.md with it. So which text is maths, a
footnote, a list item, a table cell or raw HTML (never: HTML is off, so `<b>` is text) is decided
here, once. `normalise` holds the forum's repairs, applied before either reads the text: prose
dollars become `\\$`, `$ x $` becomes `$x$`, and a `$$` block broken by blank lines (or by a line
such as `+ b` that would start a list) is mended. Applying it twice changes nothing more.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable

from markdown_it import MarkdownIt
from markdown_it.common.utils import normalizeReference
from markdown_it.helpers import parseLinkDestination
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin
from mdit_py_plugins.subscript import sub_plugin
from mdit_py_plugins.superscript import superscript_plugin

from expost.errors import ExpostError

_REC = "expost_records"  # key in the markdown-it env: what the inline rules saw, and where
_FOUND = "expost_found"  # key in the markdown-it env: those findings, placed in the whole text
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
class Span:
    """Something the parse met in the text, with its offsets there.

    kind: math (info: (display, padded)), bracket (info: display), dollar (a `$` left as text),
    code (a code span), image (info: its destination), image_ref (info: the reference label).
    """

    kind: str
    start: int
    end: int
    info: object = None


@dataclass
class Parsed:
    """The token stream of a text (footnotes at the end, as rendered) and where things are in it."""

    tokens: list[Token]
    found: list[Span]  # sorted by offset
    code_lines: set[int] = field(default_factory=set)  # lines of fenced and indented code
    fence_lines: set[int] = field(default_factory=set)
    references: dict = field(default_factory=dict)


@dataclass
class Normalised:
    """A text with the forum's repairs, the original line number of each of its lines, and warnings."""

    text: str
    origin: list[int]
    warnings: list[str]


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
                recs.append(Span("dollar", pos, pos + 1))
            return False
        end, display = hit
        if not silent:
            token = state.push("math_display" if display else "math_inline", "math", 0)
            token.markup = "$$" if display else "$"
            token.content = src[pos + 1 + display:end - 1 - display]
            token.meta = {"latex": token.content.strip(), "display": display}
            if recs is not None:
                recs.append(Span("math", pos, end, (display, padded)))
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
        token = state.push("math_bracket", "math", 0)
        token.content = body = src[pos:end + len(marker)]
        display = m.group(0) != "\\("
        # MathJax on LessWrong typesets an environment whole; `\\[x\\]` is x.
        token.meta = {"latex": (body if m.group(1) else body[3:-3]).strip(), "display": display}
        if (recs := state.env.get(_REC)) is not None:
            recs.append(Span("bracket", pos, end + len(marker), display))
    state.pos = end + len(marker)
    return True


# --- LessWrong's collapsible sections: `+++ Title` ... `+++` ------------------------------

def _collapsible(state, start_line, end_line, silent):
    """A block rule for `+++ Title` ... `+++` (three or more `+`; the closing run at least as long,
    alone on its line; unclosed: to the end), which LessWrong shows as a section folded under its
    title. Tokens: collapsible_open (info: the title), an inline title, collapsible_close."""
    if state.sCount[start_line] - state.blkIndent >= 4:
        return False
    start, end = state.bMarks[start_line] + state.tShift[start_line], state.eMarks[start_line]
    line = state.src[start:end]
    marker = len(line) - len(line.lstrip("+"))
    title = line[marker:].strip()
    if marker < 3 or not title or title.endswith("+" * marker) or not line[marker:marker + 1].isspace():
        return False
    if silent:
        return True
    close = start_line + 1
    while close < end_line:
        first = state.bMarks[close] + state.tShift[close]
        text = state.src[first:state.eMarks[close]]
        if state.sCount[close] < state.blkIndent and text:
            break
        if state.sCount[close] - state.blkIndent < 4 and text.startswith("+" * marker) and not text.strip("+").strip():
            break
        close += 1
    closed = close < end_line and state.src[state.bMarks[close] + state.tShift[close]:state.eMarks[close]].startswith("+")
    token = state.push("collapsible_open", "details", 1)
    token.block, token.markup, token.info, token.map = True, "+" * marker, title, [start_line, close + closed]
    token = state.push("inline", "", 0)
    token.content, token.map, token.children = title, [start_line, start_line + 1], []
    old_parent, old_max = state.parentType, state.lineMax
    state.parentType, state.lineMax = "reference", close
    state.md.block.tokenize(state, start_line + 1, close)
    state.parentType, state.lineMax = old_parent, old_max
    token = state.push("collapsible_close", "details", -1)
    token.block, token.markup = True, "+" * marker
    state.line = close + closed
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
            recs.append(Span("code", start, state.pos))
            return True
        for rec in recs[seen:]:  # found while parsing the alt text / note text, which start at +2
            rec.start, rec.end = rec.start + start + 2, rec.end + start + 2
        if kind == "image":
            recs.append(_image_destination(state, start))
        return True
    return noted


def _image_destination(state, start) -> Span:
    src = state.src
    label_end = state.md.helpers.parseLinkLabel(state, start + 1, False)
    pos = label_end + 1
    if src[pos:pos + 1] == "(":
        pos += 1
        while src[pos:pos + 1] in (" ", "\t", "\n"):
            pos += 1
        res = parseLinkDestination(src, pos, state.posMax)
        return Span("image", pos, res.pos if res.ok else pos, res.str if res.ok else "")
    label = ""
    if src[pos:pos + 1] == "[":
        close = state.md.helpers.parseLinkLabel(state, pos)
        label = src[pos + 1:close] if close >= 0 else ""
    return Span("image_ref", start, start, normalizeReference(label or src[start + 2:label_end]))


def _inline_placed(state) -> None:
    """Core rule in place of markdown-it's `inline`: parse each inline token (as it does), and
    place every finding of the rules above at its offset in the whole text."""
    text, env = state.src, state.env
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    found = env.setdefault(_FOUND, [])
    cursor: dict[int, int] = {}  # table rows: where the next cell may start
    tokens = state.tokens
    for i, tok in enumerate(tokens):
        if tok.type != "inline":
            continue
        if tok.children is None:
            tok.children = []
        env[_REC] = recs = []
        state.md.inline.parse(tok.content, state.md, env, tok.children)
        if not tok.content:
            continue
        where = _place(tok, tokens[i - 1].type in ("th_open", "td_open"), lines, starts, cursor)
        for rec in recs:
            start = where(rec.start)
            rec.start, rec.end = start, (where(rec.end - 1) + 1 if rec.end > rec.start else start)
            found.append(rec)
    env.pop(_REC, None)


@functools.lru_cache(maxsize=2)
def _parser(lenient: bool) -> MarkdownIt:
    md = MarkdownIt("js-default").use(footnote_plugin).use(sub_plugin).use(superscript_plugin)
    md.inline.ruler.before("escape", "lw_bracket_math", _bracket_math)
    md.inline.ruler.push("lw_tex_math", _tex_math_rule(lenient))
    md.block.ruler.before("fence", "lw_collapsible", _collapsible, {"alt": ["paragraph", "reference", "blockquote",
                                                                          "list"]})
    for name, kind in (("backticks", "code"), ("image", "image"), ("footnote_inline", "note")):
        rule = next(r.fn for r in md.inline.ruler.__rules__ if r.name == name)
        md.inline.ruler.at(name, _noting(rule, kind))
    md.core.ruler.at("inline", _inline_placed)
    return md


def parse(text: str) -> Parsed:
    """The token stream of `text` (\\n line ends) as LessWrong reads it, and where each finding is."""
    return _parse(text, lenient=False)


def _parse(text: str, lenient: bool) -> Parsed:
    env: dict = {}
    tokens = _parser(lenient).parse(text, env)
    parsed = Parsed(tokens, sorted(env.get(_FOUND, []), key=lambda r: (r.start, r.end)),
                    references=env.get("references", {}))
    for tok in tokens:
        if tok.type in ("fence", "code_block") and tok.map:
            parsed.code_lines.update(range(*tok.map))
            if tok.type == "fence":
                parsed.fence_lines.update(range(*tok.map))
    return parsed


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
            raise ExpostError(f"line {tok.map[0] + 1}: cannot place {tok.content[i]!r} of "
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


def find_maths(md: str) -> list[Maths]:
    """Every maths span of `md` (a markdown string) exactly as LessWrong's parser reads it."""
    text = md.replace("\r\n", "\n").replace("\r", "\n")
    back = _offsets_back(md)
    out = []
    for r in parse(text).found:
        if r.kind == "math":
            inner = 2 if r.info[0] else 1
            out.append(Maths(back(r.start), back(r.end), text[r.start + inner:r.end - inner], r.info[0]))
        elif r.kind == "bracket":
            body = text[r.start:r.end]
            out.append(Maths(back(r.start), back(r.end), body if body[1] != "\\" else body[3:-3], r.info))
    return out


def _offsets_back(md: str) -> Callable[[int], int]:
    """Map an offset in md with \\r\\n made \\n back to an offset in md."""
    if "\r" not in md:
        return lambda offset: offset
    removed = [m.start() - k for k, m in enumerate(re.finditer(r"\r(?=\n)", md))]
    return lambda offset: offset + bisect_right(removed, offset)


# --- the forum's repairs -------------------------------------------------------------------------

def normalise(md: str, *, name: str = "post.md") -> Normalised:
    """`md` (any line ends; \\n ones out) as it should be pasted into LessWrong, figure links unchanged.

    Prose dollars become `\\$` (not inside a bare URL), `$ x $` becomes `$x$`, and `$$` blocks that
    LessWrong would break are mended. Warns (naming `name` and the line) where a `$$` is left over.
    """
    text, origin = _mend_display_maths(md.replace("\r\n", "\n").replace("\r", "\n"))
    text = _mend_table_maths(text)
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    edits: dict[tuple[int, int], str] = {}
    warnings = []

    def warn(offset: int, problem: str) -> None:
        warnings.append(f"{name} line {origin[bisect_right(line_starts, offset) - 1]}: {problem}")

    urls = [m.span() for m in re.finditer(r"(?:https?://|www\.)[^\s<>]*", text)]
    found = _parse(text, lenient=True).found
    dollars = {r.start for r in found if r.kind == "dollar"}
    for r in found:
        if r.kind == "dollar" and r.start in dollars and (end := _escaped_dollar_maths(text, r.start, dollars)):
            # `$\$5 + x$`: LessWrong rejects maths holding `\$`; its `\\( ... \\)` form takes it
            edits[r.start, end] = "\\\\(" + text[r.start + 1:end - 1] + "\\\\)"
            dollars.discard(end - 1)
        elif r.kind == "math" and not r.info[0] and _money(text, r.start, r.end):
            edits[r.start, r.start] = edits[r.end - 1, r.end - 1] = "\\"
            warn(r.start, f"{text[r.start:r.end]!r} would be typeset as maths on LessWrong, but reads as prose "
                          f"with dollar signs; escaped as \\$ (write \\$ for a dollar sign, $...$ only for maths)")
        elif r.kind == "math":
            body = r.start + 1 + r.info[0], r.end - 1 - r.info[0]
            inner = text[body[0]:body[1]]
            if r.info[1]:  # `$ x $`
                inner = inner.strip(" \t")
            fixed = re.sub(r"(?<!\\)((?:\\\\)*)%", r"\1\\%", inner)  # `%` starts a TeX comment: `\%` is the sign
            if r.info[1] or fixed != inner:
                edits[r.start, r.end] = text[r.start:body[0]] + fixed + text[body[1]:r.end]
    for r in found:
        if r.kind == "dollar" and r.start in dollars and not any(a <= r.start < b for a, b in urls) \
                and not any(a <= r.start < b for a, b in edits if b > a):
            edits[r.start, r.start] = "\\"
            around = text[r.start - 1:r.start] + text[r.start + 2:r.start + 3]
            if text[r.start:r.start + 2] == "$$" and "$" not in around:  # `$$`, not `$$$`
                warn(r.start, "`$$` does not open or close display maths on LessWrong (an unclosed block?), "
                              "so it is escaped as \\$\\$")
    for (start, end), new in sorted(edits.items(), reverse=True):  # within lines: `origin` holds
        text = text[:start] + new + text[end:]
    return Normalised(text, origin, list(dict.fromkeys(warnings)))


def _escaped_dollar_maths(text: str, pos: int, dollars: set[int]) -> int | None:
    """End of `$ ... \\$ ... $` opening at a `$` LessWrong rejected (pos), when it is maths that
    holds an escaped dollar: LessWrong's rule ends maths at the first `$` and refuses one after a
    backslash, so the whole span is text there. None when it is no such span."""
    if text[pos + 1:pos + 2] in ("", " ", "\t", "\n", "$") or text[pos - 1:pos] == "$":
        return None
    escaped, j = False, pos + 1
    while j < len(text):
        if text.startswith("\\$", j):
            escaped, j = True, j + 2
            continue
        if text[j] == "`" or text.startswith("\n\n", j):
            return None
        if text[j] == "$":
            ok = j in dollars and text[j - 1] not in _SPACE and text[j + 1:j + 2] not in _DIGITS + ("$",)
            return j + 1 if ok and escaped else None
        j += 1
    return None


def _money(text: str, start: int, end: int) -> bool:
    """Is the maths span text[start:end] (`$20, or 20$`) prose with dollar signs? Only when it
    looks like nothing but prose: words, no TeX, opening at a number or right after a word."""
    inner = text[start + 1:end - 1]
    return bool(_PROSE.search(inner)) and not re.search(r"[\\^_{}=]", inner) \
        and (inner[:1].isdigit() or text[start - 1:start].isalnum())


def _mend_table_maths(text: str) -> str:
    """`$|x|$` in a table row: the row is split into cells at every `|` before any maths is read,
    so inside maths there each `|` becomes `\\vert` (the same symbol in TeX)."""
    if not any("|" in line and "$" in line for line in text.split("\n")):
        return text  # no line could hold such a row: skip the parse
    parsed = parse(text)
    rows = {i for tok in parsed.tokens if tok.type == "table_open" and tok.map for i in range(*tok.map)}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i in parsed.code_lines or not (i in rows or line.lstrip(" ").startswith("|")):
            continue
        out, pos = [], 0
        while (at := line.find("$", pos)) >= 0:
            hit = None if line[at - 1:at] == "\\" or line[:at].count("`") % 2 else _tex_math(line, at)
            if hit is None or hit[1] or "|" not in line[at:hit[0]]:
                out.append(line[pos:at + 1])
                pos = at + 1
                continue
            inner = re.sub(r"(?<!\\)\|(?=([A-Za-z]?))", lambda m: "\\vert" + (" " if m.group(1) else ""),
                           line[at + 1:hit[0] - 1])
            out.append(line[pos:at] + "$" + inner + "$")
            pos = hit[0]
        lines[i] = "".join(out) + line[pos:]
    return "\n".join(lines)


_INTERRUPTS = re.compile(r"#{1,6}(?:[ \t]|$)|>|`{3}|~{3}|[-+*](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)"
                         r"|=+[ \t]*$|-+[ \t]*$|(?:[*_-][ \t]*){3,}$|\[\^[^\]]*\]:|\|")


def _mend_display_maths(text: str) -> tuple[str, list[int]]:
    """Mend the `$$` blocks that LessWrong would break; (text, original line number of each line).

    A `$$` block is maths inside a paragraph there, so a blank line ends it and a line inside that
    could start a block (`+ b`, `# x`, `> y`) breaks it. Only a block whose own-line opening `$$`
    and closing `$$` LessWrong rejects is touched: its blank lines go, such lines get indented.
    """
    lines = text.split("\n")
    parsed = parse(text)
    rejected = {r.start for r in parsed.found if r.kind == "dollar"}
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)

    def closing_line(i: int) -> int | None:
        line = lines[i]
        col = len(line) - len(line.lstrip(" \t"))
        if line[col:col + 2] != "$$" or "$" in line[col + 2:] or starts[i] + col not in rejected \
                or i in parsed.code_lines:
            return None
        j = i + 1
        while j < len(lines) and "$$" not in lines[j] and j not in parsed.fence_lines:
            j += 1
        closer = lines[j].rstrip(" \t") if j < len(lines) else ""
        if closer.endswith("$$") and closer.count("$") == 2 and j not in parsed.fence_lines \
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
