"""`expost diff`: what a change did to a post, comparing two bundles of it (review/bundle.py).

    claims    every claim whose verdict flipped (k/n before and after), or whose count changed
    numbers   every scalar, per config, that moved beyond seed noise (review/numbers.py)
    figures   every figure whose bytes changed, scored and drawn side by side (review/images.py)
    prose     post.md's word changes as a diff, its number-only changes folded (review/prose.py)
    notes     what changed in the inputs: an experiment's code, parameters, seeds, profile

The front door (Workspace.diff) reads the committed side, renders the working tree's side into a
temporary folder and calls `compare` per post.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from expost.review.bundle import Bundle
from expost.review.images import Scored, score, side_by_side
from expost.review.numbers import Numbers, compare_numbers
from expost.review.prose import Prose, compare_prose

FLIPPED, CHANGED, ADDED, REMOVED = "flipped", "changed", "added", "removed"


@dataclass
class ClaimChange:
    experiment: str
    claim: str  # the after side's sentence (the before side's for a removed claim)
    group: str
    kind: str  # FLIPPED (the verdict changed), CHANGED (same verdict, other count or xfail), ADDED, REMOVED
    before: dict | None  # the manifest's verdict dict
    after: dict | None
    reworded: str = ""  # the before side's sentence, when the claim (same index and group) was reworded


@dataclass
class FigureChange:
    name: str
    kind: str  # CHANGED, ADDED or REMOVED
    score: Scored | None = None
    image: Path | None = None  # before | after | changed pixels


@dataclass
class PostDiff:
    name: str
    before: str  # where each side comes from, for people
    after: str
    claims: list[ClaimChange] = field(default_factory=list)
    numbers: Numbers | None = None
    figures: list[FigureChange] = field(default_factory=list)
    figures_same: int = 0
    prose: Prose | None = None
    notes: list[str] = field(default_factory=list)  # what changed in the inputs
    warnings: list[str] = field(default_factory=list)
    status: str = "compared"  # or "new" (not committed at REV) or "gone" (no template in the working tree)

    @property
    def flipped(self) -> list[ClaimChange]:
        return [c for c in self.claims if c.kind == FLIPPED]

    @property
    def same(self) -> bool:
        """Nothing to review: same verdicts and counts, every number the same in every paired seed,
        same figures and post.md."""
        n = self.numbers
        return (self.status == "compared" and not self.claims and not self.figures
                and (self.prose is None or self.prose.same)
                and (n is None or not (n.moved or n.within_noise or n.lost or n.only_before or n.only_after
                                       or n.missing or n.untestable)))


@dataclass
class DiffReport:
    rev: str
    commit: str
    posts: list[PostDiff] = field(default_factory=list)
    runs: object = None  # the RunReport of the runs the working tree's side needed

    @property
    def flipped(self) -> list[ClaimChange]:
        return [c for p in self.posts for c in p.flipped]


def compare(before: Bundle, after: Bundle, images: Path) -> PostDiff:
    """Every difference between two bundles of one post; changed figures are drawn under `images`."""
    out = PostDiff(before.name, before.where, after.where, warnings=before.warnings + after.warnings)
    out.notes = _input_notes(before.experiments, after.experiments)
    if before.manifest.get("command") != after.manifest.get("command"):  # e.g. built with --seeds 20 there
        out.notes.insert(0, f"built by `{before.manifest.get('command')}` there, by `{after.manifest.get('command')}` "
                            "here")
    out.claims = compare_claims(before.manifest.get("claims") or [], after.manifest.get("claims") or [])
    missing = {**after.missing, **before.missing}
    out.numbers = compare_numbers(before.numbers, after.numbers, missing)
    out.figures, out.figures_same = compare_figures(before, after, images)
    out.prose = compare_prose(before.post_md, after.post_md)
    return out


# --- claims ---------------------------------------------------------------------------------------


def _key(v: dict) -> tuple:
    return (v.get("experiment"), v.get("claim"), v.get("group") or "")


def compare_claims(before: list[dict], after: list[dict]) -> list[ClaimChange]:
    """Claims matched by experiment, sentence and group (then by index and group: a reworded
    claim); flipped first, in the after side's order."""
    old = {_key(v): v for v in before}
    new = {_key(v): v for v in after}
    out = []
    pairs = [(old[k], new[k], "") for k in new if k in old]
    by_index = {(v.get("experiment"), v.get("index"), v.get("group") or ""): v for k, v in old.items() if k not in new}
    matched = set()
    for k, v in new.items():
        if k in old:
            continue
        idx = (v.get("experiment"), v.get("index"), v.get("group") or "")
        was = by_index.pop(idx, None)
        if was is not None:
            pairs.append((was, v, was.get("claim", "")))
            matched.add(_key(was))
        else:
            out.append(ClaimChange(v.get("experiment", ""), v.get("claim", ""), v.get("group") or "", ADDED, None, v))
    for k, v in old.items():
        if k not in new and k not in matched:
            out.append(ClaimChange(v.get("experiment", ""), v.get("claim", ""), v.get("group") or "", REMOVED, v, None))
    for was, now, reworded in pairs:
        if was.get("verdict") != now.get("verdict"):
            kind = FLIPPED
        elif any(was.get(f) != now.get(f) for f in ("k", "n", "n_seeds", "missing", "xfail", "per_seed")) or reworded:
            kind = CHANGED
        else:
            continue
        out.append(ClaimChange(now.get("experiment", ""), now.get("claim", ""), now.get("group") or "", kind, was, now,
                               reworded))
    order = {FLIPPED: 0, CHANGED: 1, ADDED: 2, REMOVED: 3}
    return sorted(out, key=lambda c: order[c.kind])


def seeds_count(v: dict) -> str:
    """What a verdict's count means, as `expost check` says it: '6/10 hold' or 'one test on 10 seeds'."""
    if v.get("per_seed"):
        text = f"{v.get('k')}/{v.get('n')} hold"
    else:
        text = f"one test on {v.get('n_seeds')} seeds"
    if v.get("missing"):
        text += f", {v['missing']} missing"
    return text


def verdict_text(v: dict) -> str:
    """'holds (9/10 hold)', 'fails (one test on 10 seeds; xfail)'."""
    mark = ""
    if v.get("xfail"):
        mark = "; xfail" if v.get("verdict") != "holds" else "; XPASS: xfail claim holds"
    return f"{v.get('verdict')} ({seeds_count(v)}{mark})"


# --- figures --------------------------------------------------------------------------------------


def compare_figures(before: Bundle, after: Bundle, images: Path) -> tuple[list[FigureChange], int]:
    out, same = [], 0
    for name in sorted(set(before.figures) | set(after.figures)):
        a, b = before.figures.get(name), after.figures.get(name)
        if a is None:
            out.append(FigureChange(name, ADDED))
        elif b is None:
            out.append(FigureChange(name, REMOVED))
        elif a == b:
            same += 1
        elif name.lower().endswith(".png"):
            scored = score(a, b)
            image = side_by_side(a, b, images / name, (f"before: {before.where}", f"after: {after.where}")) \
                if scored.visible else None
            out.append(FigureChange(name, CHANGED, scored, image))
        else:
            out.append(FigureChange(name, CHANGED))
    return out, same


def clear_images(folder: Path) -> None:
    """The default images folder holds only the last diff of its post."""
    shutil.rmtree(folder, ignore_errors=True)


# --- inputs ---------------------------------------------------------------------------------------


def _seeds(seeds: list) -> str:
    seeds = sorted(seeds or [])
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds)) or "none"


def _input_notes(before: dict, after: dict) -> list[str]:
    """What changed in each experiment's inputs, as the manifests record them."""
    notes = []
    for exp in sorted(set(before) | set(after)):
        b, a = before.get(exp), after.get(exp)
        if b is None or a is None:
            notes.append(f"experiment {exp} {'added' if b is None else 'removed'}")
            continue
        said = []
        if b.get("source_hash") != a.get("source_hash"):
            said.append("its code changed (so its runs ran again)")
        params = _param_changes(b.get("configs") or [], a.get("configs") or [])
        if params:
            said.append("parameters " + ", ".join(params))
        if b.get("seeds") != a.get("seeds"):
            said.append(f"seeds {_seeds(b.get('seeds'))} → {_seeds(a.get('seeds'))}")
        if (b.get("profile") or {}).get("name") != (a.get("profile") or {}).get("name"):
            said.append(f"profile {(b.get('profile') or {}).get('name')} → {(a.get('profile') or {}).get('name')}")
        if said:
            notes.append(f"{exp}: " + "; ".join(said))
    return notes


def _param_changes(before: list[dict], after: list[dict]) -> list[str]:
    """'dip 0.5 → 0.7' for each parameter whose set of values changed; 'init_scale +1e-6' for a sweep."""
    out = []
    keys = sorted({k for c in before + after for k in c})
    for k in keys:
        vb = [c.get(k) for c in before]
        va = [c.get(k) for c in after]
        sb, sa = _distinct(vb), _distinct(va)
        if sb == sa:
            continue
        if len(sb) == 1 and len(sa) == 1:
            out.append(f"{k} {sb[0]!r} → {sa[0]!r}")
        else:
            added = [v for v in sa if v not in sb]
            removed = [v for v in sb if v not in sa]
            out.append(f"{k} " + " ".join([f"+{v!r}" for v in added] + [f"-{v!r}" for v in removed]))
    return out


def _distinct(values: list) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out
