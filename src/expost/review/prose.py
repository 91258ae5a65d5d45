"""The prose diff of post.md, with lines that changed only in their numbers folded.

A rerun with more seeds changes every median and CI in a post; shown as a plain diff, those lines
hide the sentence that really changed. So lines are matched with their numbers masked: a line
whose text is the same apart from its numbers is folded into one compact entry ("line 12: 340 →
352, 310–372 → 318–380") and the unified diff shows only the lines whose words changed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

# A number as posts write it: 340, -0.52, 1.2e-5, 1,234, with a unicode minus; not the digits
# inside a name (fig1, learned_2, x2).
NUMBER = re.compile(r"(?<![\w.])[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+−]?\d+)?(?![\w])")
CONTEXT = 2  # unchanged lines shown around a change


@dataclass
class Folded:
    """A line that changed only in its numbers."""

    line: int  # in the after side's post.md, from 1
    pairs: list[tuple[str, str]]  # (before, after) for each number that changed
    text: str  # the after line with its changed numbers as "before→after", cut around them


@dataclass
class Prose:
    diff: list[str] = field(default_factory=list)  # unified diff lines ('@@', ' ', '-', '+'), without headers
    removed: int = 0  # lines whose words changed: removed from the before side, added on the after side
    added: int = 0
    folded: list[Folded] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """'2 line(s) removed, 3 added, 5 changed only in numbers'."""
        return f"{self.removed} line(s) removed, {self.added} added, {len(self.folded)} changed only in numbers"

    @property
    def same(self) -> bool:
        return not self.diff and not self.folded


def inline(old: str, new: str, width: int = 90) -> str:
    """The after line with each changed number written "before→after", cut to about `width`
    characters around the changes: 'two drops in 4→6 of 10 seeds; needs 60%'."""
    olds = iter(NUMBER.findall(old))
    spans = []
    out, last = [], 0
    for m in NUMBER.finditer(new):
        was = next(olds, m.group())
        out.append(new[last:m.start()])
        if was != m.group():
            start = sum(len(x) for x in out)
            out.append(f"{was}→{m.group()}")
            spans.append((start, start + len(out[-1])))
        else:
            out.append(m.group())
        last = m.end()
    out.append(new[last:])
    text = "".join(out).strip()
    lead = len("".join(out)) - len("".join(out).lstrip())
    if len(text) <= width or not spans:
        return text[:width] + ("…" if len(text) > width else "")
    lo, hi = spans[0][0] - lead, spans[-1][1] - lead
    pad = max(15, (width - (hi - lo)) // 2)
    a = max(0, lo - pad)
    b = min(len(text), max(hi + pad, a + width) if hi - lo <= width else a + width)
    return ("…" if a > 0 else "") + text[a:b] + ("…" if b < len(text) else "")


def _mask(line: str) -> str:
    return NUMBER.sub("#", line)


def _folded(n: int, old: str, new: str) -> Folded:
    a, b = NUMBER.findall(old), NUMBER.findall(new)
    return Folded(n, [(x, y) for x, y in zip(a, b) if x != y], inline(old, new))


def compare_prose(before: str, after: str) -> Prose:
    """The word changes of post.md as a unified diff, and its number-only changes folded."""
    old, new = before.splitlines(), after.splitlines()
    out = Prose()
    matcher = difflib.SequenceMatcher(None, [_mask(x) for x in old], [_mask(x) for x in new], autojunk=False)
    changes: list[tuple[str, int, int, int, int]] = []  # (tag, i1, i2, j1, j2) of word changes
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out.folded += [_folded(j1 + k + 1, old[i1 + k], new[j1 + k]) for k in range(i2 - i1)
                           if old[i1 + k] != new[j1 + k]]
        else:
            changes.append((tag, i1, i2, j1, j2))
            out.removed += i2 - i1
            out.added += j2 - j1
    out.diff = _hunks(old, new, changes)
    return out


def _hunks(old: list[str], new: list[str], changes: list) -> list[str]:
    """Unified-diff hunks around the word changes (number-only changes show as context lines)."""
    groups: list[list] = []
    for c in changes:
        if groups and c[1] - groups[-1][-1][2] <= 2 * CONTEXT:
            groups[-1].append(c)
        else:
            groups.append([c])
    lines = []
    for group in groups:
        i1 = max(0, group[0][1] - CONTEXT)
        j1 = max(0, group[0][3] - CONTEXT)
        i2 = min(len(old), group[-1][2] + CONTEXT)
        j2 = min(len(new), group[-1][4] + CONTEXT)
        lines.append(f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
        j = j1
        for _, a1, a2, b1, b2 in group:
            lines += [" " + new[j + k] for k in range(b1 - j)]  # context: the after text
            lines += ["-" + x for x in old[a1:a2]]
            lines += ["+" + x for x in new[b1:b2]]
            j = b2
        lines += [" " + new[j + k] for k in range(j2 - j)]
    return lines
