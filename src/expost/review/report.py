"""`expost diff`'s report as text (a terminal) or markdown (a pull request comment)."""

from __future__ import annotations

import re
from typing import Callable

from expost.fmt import num
from expost.review.diff import ADDED, CHANGED, FLIPPED, REMOVED, DiffReport, PostDiff, verdict_text
from expost.review.numbers import RULE, Moved


def _signed(x: float) -> str:
    return ("+" if x > 0 else "") + num(x)


def _moved(m: Moved) -> tuple[str, str, str, str]:
    """(before, after, change with CI, seeds) of a number beyond seed noise."""
    change = f"{_signed(m.diff)} (95% CI {_signed(m.ci[0])} to {_signed(m.ci[1])})"
    seeds = f"{m.paired} seeds paired: {m.up} up, {m.down} down"
    return num(m.before), num(m.after), change, seeds


def headline(p: PostDiff) -> str:
    """One line: what changed in a post."""
    if p.status == "new":
        return f"{p.name}: new since {p.before}; nothing to compare with"
    if p.status == "gone":
        return f"{p.name}: committed at {p.before}, but the working tree has no templates/{p.name}.md.j2"
    if p.same:
        return (f"{p.name}: no change: the working tree builds it as committed at {p.before} (same verdicts, the "
                "same numbers in every seed, same figures and post.md)")
    parts = []
    flips = len(p.flipped)
    parts.append(f"{flips} claim verdict(s) flipped" if flips else "no claim flipped")
    others = len(p.claims) - flips
    if others:
        parts.append(f"{others} other claim change(s)")
    n = p.numbers
    if n is not None:
        parts.append(f"{len(n.moved)} of {n.tested} number(s) beyond seed noise")
        if n.missing:
            parts.append(f"numbers of {', '.join(sorted(n.missing))} NOT compared")
    changed = [f for f in p.figures if f.kind == CHANGED]
    visibly = sum(f.score is None or f.score.visible for f in changed)
    parts.append(f"{len(changed)} figure(s) changed" + (f" ({visibly} visibly)" if visibly < len(changed) else "")
                 + (f", {len(p.figures) - len(changed)} added or removed" if len(p.figures) > len(changed) else ""))
    if p.prose is not None:
        parts.append(f"post.md: {p.prose.summary}")
    return f"{p.name}: " + "; ".join(parts)


# --- text -----------------------------------------------------------------------------------------


def text(report: DiffReport, rel: Callable = str) -> str:
    out = [f"expost diff: the posts as committed at {report.rev} ({report.commit[:7]}) → as the working tree "
           "builds them"]
    for p in report.posts:
        out += [""] + _text_post(p, rel)
    out += ["", f"{len(report.flipped)} claim verdict(s) flipped" if report.flipped else "no claim verdict flipped"]
    return "\n".join(out) + "\n"


def _text_post(p: PostDiff, rel: Callable) -> list[str]:
    out = [f"== {headline(p)}"]
    if p.status != "compared" or p.same:
        return out + [f"warning: {w}" for w in p.warnings]
    out += [f"warning: {w}" for w in p.warnings]
    out += [f"inputs: {note}" for note in p.notes]
    if p.claims:
        out.append("claims:")
        for c in p.claims:
            where = f"{c.experiment}" + (f" [{c.group}]" if c.group else "")
            out.append(f"  {c.kind.upper():8} {where}: {c.claim}")
            if c.reworded:
                out.append(f"           (reworded; was: {c.reworded})")
            before = verdict_text(c.before) if c.before else "(no such claim)"
            after = verdict_text(c.after) if c.after else "(no such claim)"
            out.append(f"           {before} → {after}")
    n = p.numbers
    if n is not None:
        out.append(f"numbers: {len(n.moved)} of {n.tested} beyond seed noise ({n.within_noise} within seed noise, "
                   f"{n.unchanged} unchanged). Rule: {RULE}.")
        for m in n.moved:
            before, after, change, seeds = _moved(m)
            out.append(f"  {m.experiment} [{m.config}] {m.output}: {before} → {after}, {change}; {seeds}")
        for lost in n.lost:
            out.append(f"  {lost.experiment} [{lost.config}] {lost.output}: no value (diverged or not reached) in "
                       f"{lost.before} of {lost.n_before} seeds → {lost.after} of {lost.n_after}")
        for exp, why in sorted(n.missing.items()):
            out.append(f"  NOT COMPARED: {exp}: {why}")
        for what in n.only_before:
            out.append(f"  only before: {what}")
        for what in n.only_after:
            out.append(f"  only after: {what}")
        for what in n.untestable:
            out.append(f"  too few seeds to tell: {what}")
    if p.figures:
        folder = next((f.image.parent for f in p.figures if f.image), None)
        out.append(f"figures: {sum(f.kind == CHANGED for f in p.figures)} changed, {p.figures_same} the same"
                   + (f" (before | after | changed pixels, in {rel(folder)}/)" if folder else ""))
        for f in p.figures:
            if f.kind == CHANGED and f.score and not f.score.visible:
                out.append(f"  {f.name}: its bytes differ, but no visible change (SSIM {f.score.ssim:.4f})")
            elif f.kind == CHANGED and f.score:
                out.append(f"  {f.name}: SSIM {f.score.ssim:.3f}, {f.score.changed:.1%} of the area changed"
                           + _size(f.score))
            else:
                out.append(f"  {f.name}: {f.kind}")
    if p.prose is not None and not p.prose.same:
        out.append(f"post.md: {p.prose.summary}")
        out += ["  " + line for line in p.prose.diff]
        if p.prose.folded:
            out.append("  changed only in numbers:")
            for f in p.prose.folded:
                out.append(f"    line {f.line}: {f.text}")
    return out


def _size(s) -> str:
    if s.size_before == s.size_after:
        return ""
    return f" (size {s.size_before[0]}x{s.size_before[1]} → {s.size_after[0]}x{s.size_after[1]})"


# --- markdown -------------------------------------------------------------------------------------


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """A code span for a table cell: the text as is (no bold or links half-open), pipes escaped."""
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if "`" in text else ""
    return f"{ticks}{pad}{_cell(text)}{pad}{ticks}"


def _fence(lines: list[str]) -> str:
    longest = max((len(m) for line in lines for m in re.findall(r"`+", line)), default=0)
    return "`" * max(3, longest + 1)


def markdown(report: DiffReport, rel: Callable = str) -> str:
    flips = len(report.flipped)
    out = [f"### expost diff: {report.rev} (`{report.commit[:7]}`) → working tree", "",
           f"**{flips} claim verdict(s) flipped.**" if flips else "No claim verdict flipped."]
    for p in report.posts:
        out += [""] + _md_post(p, rel)
    return "\n".join(out).rstrip("\n") + "\n"


def _md_post(p: PostDiff, rel: Callable) -> list[str]:
    out = [f"#### {p.name}", "", headline(p)[len(p.name) + 2:]]
    for w in p.warnings:
        out += ["", f"> warning: {w}"]
    if p.status != "compared" or p.same:
        return out
    if p.notes:
        out += ["", "Inputs: " + "; ".join(p.notes) + "."]
    if p.claims:
        out += ["", "| change | experiment | group | claim | before | after |", "|---|---|---|---|---|---|"]
        for c in p.claims:
            kind = {FLIPPED: "**flipped**", CHANGED: "count changed", ADDED: "added", REMOVED: "removed"}[c.kind]
            claim = c.claim + (f" (reworded; was: {c.reworded})" if c.reworded else "")
            out.append("| " + " | ".join(_cell(x) for x in (
                kind, c.experiment, c.group or "-", claim, verdict_text(c.before) if c.before else "-",
                verdict_text(c.after) if c.after else "-")) + " |")
    n = p.numbers
    if n is not None:
        out += ["", f"**Numbers beyond seed noise: {len(n.moved)} of {n.tested}** ({n.within_noise} within seed "
                f"noise, {n.unchanged} unchanged)."]
        if n.moved:
            out += ["", "| experiment | config | output | before | after | change | seeds |",
                    "|---|---|---|---|---|---|---|"]
            for m in n.moved:
                out.append("| " + " | ".join(_cell(x) for x in (m.experiment, m.config, m.output, *_moved(m))) + " |")
        extra = [f"no value (diverged or not reached) in {x.experiment} [{x.config}] {x.output}: {x.before} of "
                 f"{x.n_before} seeds → {x.after} of {x.n_after}" for x in n.lost]
        extra += [f"**not compared**: {exp}: {why}" for exp, why in sorted(n.missing.items())]
        extra += [f"only before: {w}" for w in n.only_before] + [f"only after: {w}" for w in n.only_after]
        extra += [f"too few seeds to tell: {w}" for w in n.untestable]
        out += [""] + [f"- {x}" for x in extra] if extra else []
        out += ["", f"<sub>Rule: {RULE}.</sub>"]
    if p.figures:
        out += ["", "| figure | change | SSIM | area changed | before, after, changed pixels |", "|---|---|---|---|---|"]
        for f in p.figures:
            if f.score and not f.score.visible:
                out.append(f"| `{f.name}` | bytes only, no visible change | {f.score.ssim:.4f} | 0% | - |")
            elif f.score:
                out.append(f"| `{f.name}` | changed{_size(f.score)} | {f.score.ssim:.3f} | {f.score.changed:.1%} | "
                           f"`{rel(f.image)}` |")
            else:
                out.append(f"| `{f.name}` | {f.kind} | - | - | - |")
        out += ["", f"{p.figures_same} other figure(s) unchanged."]
    if p.prose is not None and not p.prose.same:
        out += ["", f"**post.md**: {p.prose.summary}."]
        if p.prose.diff:
            fence = _fence(p.prose.diff)
            out += ["", f"{fence}diff", *p.prose.diff, fence]
        if p.prose.folded:
            out += ["", f"<details><summary>{len(p.prose.folded)} line(s) changed only in numbers</summary>", "",
                    "| line | the line, its changed numbers as before→after |", "|---|---|"]
            out += [f"| {f.line} | {_code(f.text)} |" for f in p.prose.folded]
            out += ["", "</details>"]
    return out
