"""Render stage: a post template plus results, verdicts and figures -> markdown.

The renderer never runs experiments: it reads ResultSets and verdicts handed to it, and copies a
figure whose inputs did not change from the figure cache (posts/figcache.py) instead of drawing it
(nor importing matplotlib, nor the experiment for its own figure function). Templates
render in a sandboxed Jinja environment with StrictUndefined; the helpers below are its globals.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath, PureWindowsPath
from types import FunctionType, ModuleType
from typing import Callable

import jinja2
import numpy as np
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from expost.posts import caveats
from expost.runs.claims import ClaimText, Verdict, claim_texts
from expost.posts.codeembed import extract
from expost.posts.figcache import FigureCache
from expost.errors import ExpostError, TemplateError
from expost.fmt import num, nums
from expost.posts.post import LAYOUT, PACKAGE_LAYOUTS, SUFFIX, Post, split_front_matter
from expost.runs.results import Record, ResultSet
from expost.runs.spec import Spec
from expost.runs.stats import compare as paired_compare

FOLD_ROWS = 8  # with fold: [tables], seed tables of more rows go into a collapsible section
FIGURE_PREFIX = "figure_"  # def figure_NAME(ax, r) in an experiment: figure(r, "NAME") in a template
RENDER_SECONDS = 60  # a template that loops longer than this is stopped (expost.toml: render_timeout)
MAX_TEXT = 5_000_000  # characters: one value or the whole post; beyond this a template is refused
_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>|<(?:function|bound method|built-in function|module) [^>]*>")


class PostLoader(jinja2.FileSystemLoader):
    """Workspace templates first, then the package's layouts; front matter blanked (line numbers kept).

    Only files inside those folders load: `{% include %}`, `{% import %}` and `{% extends %}` of an
    absolute path, of a name with '..', or of a symlink leading out of the folder are refused."""

    def get_source(self, environment, template):
        pieces = template.replace("\\", "/").split("/")
        if (template.startswith(("/", "\\")) or PureWindowsPath(template).drive or ".." in pieces):
            raise TemplateError(f"template {template!r} is outside templates/: includes, imports and extends may "
                                "only name files inside templates/; move the file there and name it relative to "
                                "templates/, e.g. \"_macros.md.j2\"")
        source, filename, uptodate = super().get_source(environment, template)
        real = Path(filename).resolve()
        if not any(real.is_relative_to(Path(folder).resolve()) for folder in self.searchpath):
            raise TemplateError(f"template {template!r} is a link to {real}, outside templates/; "
                                "copy the file into templates/ instead of linking to it")
        if template.endswith(SUFFIX) and not PurePath(template).name.startswith("_") and template != LAYOUT:
            _, source, _ = split_front_matter(Path(filename), source)
        return source, filename, uptodate


class PostSandbox(SandboxedEnvironment):
    """Jinja's sandbox (no '_' attributes, no unsafe callables) that also hides file system access:
    templates get numbers and text from the helpers, never a path, a module or a file reader.
    Repeating a string or list past MAX_TEXT, or a power with a huge exponent, is refused."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_TEXT:
                    raise SecurityError(f"{type(seq).__name__} * {times} would hold {len(seq) * times} items "
                                        f"(more than {MAX_TEXT})")
        if operator == "**" and isinstance(right, int) and abs(right) > 10_000 and isinstance(left, int):
            raise SecurityError(f"an integer power with exponent {right} is too large for a post")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj, attr, value):
        if isinstance(obj, (PurePath, ModuleType)) or isinstance(value, (PurePath, ModuleType)):
            return False
        if attr == "load_series":  # a Record's cache reader; r.series(name) is the template API
            return False
        return super().is_safe_attribute(obj, attr, value)


def make_env(templates_dir: Path) -> SandboxedEnvironment:
    loader = PostLoader([str(templates_dir), str(PACKAGE_LAYOUTS)])
    env = PostSandbox(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                      keep_trailing_newline=True, trim_blocks=False, lstrip_blocks=False, finalize=_shown)
    env.filters["num"] = num
    return env


@dataclass
class Inputs:
    """Everything a render reads: no run cache, no runner."""

    post: Post
    specs: dict[str, Spec]  # static specs suffice (code, outputs, params); the module is imported lazily
    results: dict[str, ResultSet]
    verdicts: dict[str, list[Verdict]]
    seeds: dict[str, list[int]]
    command: str
    claims: dict[str, list[ClaimText]] | None = None  # remembered with the verdicts; else from full specs
    load: Callable[[str], Spec] | None = None  # imports an experiment: only a figure function not cached needs it
    figure_cache: FigureCache | None = None  # drawn figures by their inputs; None draws every one
    profiles: dict[str, str | None] = field(default_factory=dict)  # the PROFILES entry each experiment ran under

    def claims_of(self, experiment: str) -> list[ClaimText]:
        if self.claims is not None and experiment in self.claims:
            return self.claims[experiment]
        return claim_texts(self.specs[experiment])

    def imported(self, experiment: str) -> Spec:
        """The experiment with its module imported (a spec that has one, or `load`'s)."""
        spec = self.specs[experiment]
        return spec if spec.module is not None or self.load is None else self.load(experiment)


@dataclass
class Rendered:
    markdown: str  # the whole post.md
    body: str  # without the title header (the HTML page sets its own)
    figures: dict[str, Path] = field(default_factory=dict)  # relative name -> written file


class Helpers:
    """The template helpers. Each returns markdown (or a ResultSet) and never touches the cache."""

    def __init__(self, inputs: Inputs, figures_dir: Path):
        self.i = inputs
        self.figures_dir = figures_dir
        self.figures: dict[str, Path] = {}
        self.count = 0
        self.jobs: list = []  # figures are drawn after the template, several at once
        self.to_store: list[tuple[str, Path]] = []  # (key, path) of drawn figures, for the figure cache
        self.stated: set[str] = set()  # what stat() returned: words and a `%`, never maths

    def _key(self, function, path: Path, args: tuple, kwargs: dict | None = None) -> str | None:
        return self.i.figure_cache.key(function, args, kwargs or {}, path) if self.i.figure_cache else None

    def _fetched(self, key: str | None, path: Path) -> bool:
        """The figure copied from the figure cache (no drawing, no matplotlib)."""
        return self.i.figure_cache is not None and self.i.figure_cache.fetch(key, path)

    def _queue(self, job: tuple, key: str | None) -> None:
        self.jobs.append(job)
        if key is not None:
            self.to_store.append((key, job[1]))

    def _draw(self, fn, path: Path, *args, **kwargs) -> None:
        """A built-in kind: copied from the figure cache, or drawn by draw_all."""
        key = self._key(f"{fn.__module__}.{fn.__qualname__}", path, args, kwargs)
        if not self._fetched(key, path):
            self._queue((fn, path, args, kwargs), key)

    def _draw_own(self, spec: Spec, kind: str, path: Path, r: ResultSet) -> None:
        """An experiment's figure function, keyed by every byte of the experiment's files: copied
        from the figure cache without importing the experiment, or imported and drawn."""
        from expost.posts import figures

        name = kind if str(kind).startswith(FIGURE_PREFIX) else f"{FIGURE_PREFIX}{kind}"
        missing = TemplateError(f"figure kind {kind!r}: not a built-in kind (curves, scalar, seeds, panels) "
                                f"and no figure function `def {name}(ax, r)` in {spec.path.name}; figure "
                                f"functions are named {FIGURE_PREFIX}NAME and used as figure(r, \"NAME\")")
        if not str(kind).isidentifier() or kind.startswith("_"):
            raise missing
        own = lambda s: {"experiment": s.name, "function": name, "file": s.file_hash}
        if self._fetched(self._key(own(spec), path, (r,)), path):
            return
        full = self.i.imported(spec.name)
        fn = getattr(full.module, name, None)
        if not isinstance(fn, FunctionType):
            raise missing
        self._queue((figures.custom, path, (fn, r), {}), self._key(own(full), path, (r,)))  # by what is drawn

    def draw_all(self) -> None:
        """Draw every figure the template asked for: in forked workers when there are several
        (each file's bytes do not depend on where it was drawn), else here."""
        jobs, self.jobs = self.jobs, []
        workers = min(len(jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            import matplotlib.backends.backend_agg  # noqa: F401  (imported once, before the fork)

            global _JOBS
            _JOBS = jobs
            try:
                with multiprocessing.get_context("fork").Pool(workers, initializer=_default_signals) as pool:
                    errors = pool.map(_draw_job, range(len(jobs)))
            finally:
                _JOBS = []
        else:
            errors = [_draw(job) for job in jobs]
        for error in errors:
            if error:
                raise TemplateError(error)
        stored, self.to_store = self.to_store, []
        for key, path in stored:
            self.i.figure_cache.store(key, path)

    def globals(self) -> dict:
        return {"results": self.results, "stat": self.stat, "figure": self.figure, "code": self.code,
                "claim": self.claim, "verdict": self.verdict, "caveat": self.caveat, "compare": self.compare,
                "seed_table": self.seed_table, "collapsible": self.collapsible, "seed_budget": self.seed_budget,
                "post": self.i.post, "num": num}

    @property
    def names(self) -> str:
        """The helpers' names, for error hints: the functions globals() gives templates."""
        return ", ".join(name for name, value in self.globals().items() if callable(value))

    def _spec(self, experiment: str) -> Spec:
        if experiment not in self.i.specs:
            raise TemplateError(f"experiment {experiment!r} is not in this post's front matter "
                                f"(experiments: {', '.join(self.i.specs)}); add it there")
        return self.i.specs[experiment]

    def results(self, experiment: str, **where) -> ResultSet:
        """results("scurves", rank=1): the experiment's runs, filtered by config."""
        self._spec(experiment)
        return self.i.results[experiment].where(**where)

    def stat(self, r: ResultSet, name: str, unit: str = "", kind: str = "median") -> str:
        """A statistic for prose: 'median 340 steps (95% CI 310–372, n=10)' or 'mean 0.52 ± 0.04 ...'."""
        said = self._stat(r, name, unit, kind)
        self.stated.add(said)
        return said

    def check_maths(self, text: str) -> None:
        """stat()'s sentence inside `$...$` is an error: its words and `%` (a TeX comment, which
        drops the rest of the formula on LessWrong) are no maths; num() gives a bare number."""
        from expost.posts.markdown import find_maths

        for m in find_maths(text) if self.stated else ():
            said = next((s for s in self.stated if s in m.latex), None)
            if said:
                shown = text[m.start:m.end]
                raise TemplateError(f"stat() inside maths {shown[:80]!r}: it gives prose ({said!r}), whose words "
                                    "and % break the formula on LessWrong; inside $...$ use a bare number, "
                                    "e.g. {{ r.stats(\"NAME\").median | num }}, and put stat() in the prose")

    def _stat(self, r: ResultSet, name: str, unit: str, kind: str) -> str:
        s = r.stats(name)
        u = f" {unit}" if unit else ""
        n = f"n={s.n}" + (f"; {caveats.not_reached(s)}" if s.n_unreached else "")  # seeds without a value
        if kind == "median":
            lo, hi = s.median_ci
            return f"median {num(s.median)}{u} (95% CI {num(lo)}–{num(hi)}, {n})"
        if kind == "mean":
            lo, hi = s.mean_ci
            half = max(s.mean - lo, hi - s.mean)
            return f"mean {num(s.mean)} ± {num(half, 2)}{u} (95% CI, {n})"
        if kind == "iqm":
            return f"interquartile mean {num(s.iqm)}{u} ({n})"
        if kind == "range":
            return f"{num(s.min)}–{num(s.max)}{u} ({n})"
        raise TemplateError(f"stat(kind={kind!r}): use median, mean, iqm or range")

    def code(self, experiment: str, name: str | None = None, region: str | None = None) -> str:
        """The exact source of a function/class (or a marked region) as a fenced python block."""
        spec = self._spec(experiment)
        if (name is None) == (region is None):
            raise TemplateError("code(): give a function/class name or region=NAME, not both")
        path = spec.path
        if name and "." not in name:
            # look in the workspace modules the experiment imports if the script does not define it
            from expost.posts.codeembed import symbols
            from expost.runs.spec import local_sources

            for candidate in local_sources(spec.path, spec.path.parent):
                if name in symbols(candidate.read_text()):
                    path = candidate
                    break
        return f"```python\n{extract(path, name, region)}\n```"

    def _verdicts(self, experiment: str, which) -> tuple[ClaimText, list[Verdict]]:
        """The claim named by index or by a unique part of its text, and its verdicts."""
        self._spec(experiment)
        claims = self.i.claims_of(experiment)
        if isinstance(which, int):
            if not 0 <= which < len(claims):
                raise TemplateError(f"claim({experiment!r}, {which}): {experiment} has {len(claims)} claims (0-based)")
            idx = which
        else:
            hits = [c.index for c in claims if str(which).lower() in c.text.lower()]
            if len(hits) != 1:
                raise TemplateError(f"claim({experiment!r}, {which!r}): matches {len(hits)} claims; use the index "
                                    f"or a unique part of the text. Claims: "
                                    + "; ".join(f"{c.index}: {c.text}" for c in claims))
            idx = hits[0]
        return claims[idx], [v for v in self.i.verdicts[experiment] if v.index == idx]

    def claim(self, experiment: str, which) -> str:
        """The claim sentence with its verdict: '... — holds in 9 of 10 seeds.'"""
        shown, vs = self._verdicts(experiment, which)
        text = vs[0].claim if vs else shown.text
        quantitative = bool(vs) and shown.quantitative
        vs = _groups_shown(self.i.specs[experiment], vs)
        said = "; ".join(caveats.claim_sentence(v) + (f" ({v.numbers})" if quantitative and v.numbers else "")
                         for v in vs)
        return f"**Claim:** {text} — *{said}.*"

    def verdict(self, experiment: str, which) -> str:
        """A claim's overall verdict: holds, fails, inconclusive, or mixed (its groups disagree)."""
        kinds = {v.verdict for v in self._verdicts(experiment, which)[1]}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def seed_budget(self, experiment: str, which, confidence: float = 0.9) -> str:
        """Whether a claim's seeds decide it at `confidence`, and how many seeds in all would
        (runs/budget.py): '**Seed budget:** undecided at 90%: ...; 280 seeds in all would settle it ...'."""
        from expost.errors import ConfigError
        from expost.runs import budget

        try:
            confidence = budget.check_confidence(confidence)
        except ConfigError as e:
            raise TemplateError(f"seed_budget({experiment!r}, {which!r}, {e})") from None
        shown, vs = self._verdicts(experiment, which)
        numbers = {}
        if shown.quantitative:  # the CI projection needs the per-seed numbers: the experiment's `value`
            numbers = budget.quantities(self.i.imported(experiment), self.i.results[experiment])
        said = [budget.advise(v, confidence, *numbers.get((v.index, v.group), (None, None))).sentence() for v in vs]
        vs = _groups_shown(self.i.specs[experiment], vs)  # as the reader sees them, after the lookup by group
        if not said:
            return "**Seed budget:** no verdict yet."
        if len(vs) == 1 and not vs[0].group:
            return f"**Seed budget:** {said[0]}."
        return "**Seed budget:**\n\n" + "\n".join(f"- {v.group}: {text}." for v, text in zip(vs, said))

    def caveat(self, r: ResultSet, name: str, unit: str = "", by: str | None = None) -> str:
        """The seed-variance caveats that apply to a quantity (empty when none do)."""
        spec = self._spec(r.experiment)
        groups = r.group_by(by) if by else {None: r}
        shown = _values_shown(spec, by, list(groups))
        out = []
        for value, g in groups.items():
            for sentence in caveats.quantity(g.stats(name), spec.label_of(name), unit or spec.unit_of(name)):
                out.append(f"{sentence[:-1]} ({shown[value]})." if by else sentence)
        return " ".join(out)

    def compare(self, a: ResultSet, b: ResultSet, name: str, label_a: str, label_b: str, unit: str = "") -> str:
        """A difference between two conditions, or 'within seed noise' when the intervals overlap."""
        sa, sb = a.stats(name), b.stats(name)
        paired = None
        if a.seeds == b.seeds:
            paired = paired_compare(a.scalar(name), b.scalar(name))
        spec = self._spec(a.experiment)
        return caveats.difference(spec.label_of(name), label_a, sa, label_b, sb, paired, unit or spec.unit_of(name))

    def collapsible(self, title: str, text: str | None = None, caller=None) -> str:
        """LessWrong's collapsible section (`+++ title` ... `+++`), folded under its title:
        collapsible("Title", text), or {% call collapsible("Title") %}...{% endcall %}."""
        body = caller() if caller is not None else text
        title = " ".join(str(title).split())
        if not title or body is None:
            raise TemplateError("collapsible(title, text): give a title and the text (or use it as "
                                "{% call collapsible(\"Title\") %}...{% endcall %})")
        return f"+++ {title}\n{str(body).strip()}\n+++"

    def seed_table(self, r: ResultSet, outputs, by: str | None = None, layout: str = "wide",
                   fold: bool | None = None) -> str:
        """A markdown table: one row per seed, one column per output (and per group with `by`);
        layout="long" instead gives one row per (config, seed), with a column for each sweep axis
        that varies in `r`: readable for wide sweeps, whose wide table would have many columns.
        fold=True puts it in a collapsible section; by default tables of more than FOLD_ROWS rows
        are folded when the front matter says fold: [tables]."""
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        if layout not in ("wide", "long"):
            raise TemplateError(f"seed_table(layout={layout!r}): use layout=\"wide\" (a row per seed) or "
                                "layout=\"long\" (a row per config and seed)")
        table = self._long_table(r, outputs) if layout == "long" else self._wide_table(r, outputs, by)
        rows = table.count("\n") - 1
        if fold is None:
            fold = "tables" in self.i.post.fold and rows > FOLD_ROWS
        if not fold:
            return table
        spec = self._spec(r.experiment)
        return self.collapsible(f"Per-seed table: {', '.join(map(spec.label_of, outputs))} ({rows} rows)", table)

    def _wide_table(self, r: ResultSet, outputs: list[str], by: str | None) -> str:
        spec = self._spec(r.experiment)
        groups = r.group_by(by) if by else {None: r}
        group_shown = _values_shown(spec, by, list(groups))
        cols, data = [], []
        for value, g in groups.items():
            for name in outputs:
                cols.append(f"{spec.axis_label(name)} ({group_shown[value]})" if by else spec.axis_label(name))
                shown = _column(g.scalar(name), g.reached(name))
                data.append(dict(zip(g.seeds, shown)))
        seeds = sorted({s for d in data for s in d})
        lines = ["| seed | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
        for s in seeds:
            lines.append(f"| {s} | " + " | ".join(d.get(s, "–") for d in data) + " |")
        return "\n".join(lines)

    def _long_table(self, r: ResultSet, outputs: list[str]) -> str:
        """One row per (config, seed): a column per sweep axis that varies in `r`, then the outputs."""
        spec = self._spec(r.experiment)
        axes = [a for a in (r.records[0].point if r.records else {}) if len({repr(x.point[a]) for x in r.records}) > 1]
        records = sorted(r.records, key=lambda x: ([repr(x.point[a]) for a in axes], x.seed))
        columns = [_values_shown(spec, None, [rec.point[a] for rec in records], bare=True) for a in axes]
        columns = [[shown[rec.point[a]] for rec in records] for a, shown in zip(axes, columns)]
        columns.append([str(rec.seed) for rec in records])
        ones = [r._new([rec]) for rec in records]
        for n in outputs:
            columns.append(_column([one.scalar(n)[0] for one in ones], [one.reached(n)[0] for one in ones]))
        header = [spec.label_of(a) for a in axes] + ["seed"] + [spec.axis_label(n) for n in outputs]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(axes) + "---:|" * (1 + len(outputs))]
        lines += ["| " + " | ".join(row) + " |" for row in zip(*columns)]
        return "\n".join(lines)

    @staticmethod
    def _decorations(kind: str, xlim, hline) -> dict:
        """figure()'s xlim and hline, checked: keyword arguments for the drawing function."""
        out: dict = {}
        if xlim is not None:
            if (not isinstance(xlim, (list, tuple)) or len(xlim) != 2 or not all(map(_finite_number, xlim))
                    or not xlim[0] < xlim[1]):
                raise TemplateError(f"figure(xlim={xlim!r}): give two numbers, lowest first, e.g. xlim=[0, 500]")
            if kind == "scalar":
                raise TemplateError("figure(kind='scalar', xlim=...): the x axis holds conditions; "
                                    "xlim applies to curves, seeds and panels")
            out["xlim"] = (float(xlim[0]), float(xlim[1]))
        if hline is not None:
            values = list(hline) if isinstance(hline, (list, tuple)) else [hline]
            if not values or not all(map(_finite_number, values)):
                raise TemplateError(f"figure(hline={hline!r}): give a number or a list of numbers, e.g. hline=0.5")
            out["hlines"] = tuple(float(v) for v in values)
        return out

    def figure(self, r: ResultSet, kind: str, output: str | None = None, by: str | None = None,
               caption: str = "", logy: bool = False, logx: bool = False, alt: str | None = None,
               ylabel: str | None = None, xlabel: str | None = None, xlim=None, hline=None) -> str:
        """Draw a figure (a named kind, or a figure function of the experiment) and return its markdown.
        xlim=[lo, hi]: the steps shown (series kinds); hline=y or [y, ...]: dashed reference lines.
        For kind='curves', output may be a list of series outputs drawn together, one colour each."""
        from expost.posts import figures

        extra = self._decorations(kind, xlim, hline)
        outputs = list(output) if isinstance(output, (list, tuple)) else None
        if outputs is not None:
            if kind != "curves" or not outputs or not all(isinstance(o, str) for o in outputs):
                raise TemplateError(f"figure(output={output!r}): several outputs are drawn together only by "
                                    "kind='curves', as a list of output names")
            output = "+".join(outputs)

        self.count += 1
        slug = re.sub(r"[^a-z0-9]+", "-", f"{kind}-{output or ''}-{by or ''}".lower()).strip("-")
        rel = f"figures/fig{self.count}-{slug}.png"
        path = self.figures_dir.parent / rel
        spec = self._spec(r.experiment)
        groups = r.group_by(by) if by else {None: r}
        shown = _values_shown(spec, by, list(groups))
        label = lambda v: shown[v] if by else spec.label_of(output) if output else ""
        n = len(r.seeds)
        if kind in ("curves", "scalar", "seeds", "panels") and output is None:
            raise TemplateError(f"figure(kind={kind!r}) needs output=NAME; outputs: {', '.join(spec.outputs)}")
        if kind == "curves" and outputs is not None:  # several outputs overlaid: a colour per output (and group)
            lines = {(f"{spec.label_of(o)}, {label(v)}" if by else spec.label_of(o)): g.series(o)
                     for v, g in groups.items() for o in outputs}
            self._draw(figures.curves, path, lines, ylabel=ylabel or ", ".join(map(spec.axis_label, outputs)),
                       xlabel=xlabel or "step",
                       logy=logy, **extra)
            what = f"{n} seeds per line. Thin lines: individual seeds, bold: the median across seeds"
            what += _view_notes(lines, logy, extra, None)
        elif kind == "curves":
            axis, x = _logged_steps(spec, r, output)
            lines = {label(v): g.series(output) for v, g in groups.items()}
            self._draw(figures.curves, path, lines,
                       ylabel=ylabel or spec.axis_label(output), xlabel=xlabel or axis, logy=logy,
                       **({"x": x} if x is not None else {}),
                       **extra)
            what = f"{n} seeds per condition. Thin lines: individual seeds, bold: the median across seeds"
            what += _view_notes(lines, logy, extra, x, axis)
        elif kind == "scalar":
            if not by:
                raise TemplateError("figure(kind='scalar') needs by=AXIS: the conditions on the x axis")
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in groups)
            cond = {(v if numeric else label(v)): g.scalar(output) for v, g in groups.items()}
            self._draw(figures.scalar_by_condition, path, cond, ylabel=ylabel or spec.axis_label(output),
                       xlabel=xlabel or spec.axis_label(by),
                       logy=logy, logx=logx, numeric_x=numeric, **extra)
            what = f"Each point is one of {n} seeds; bars: median and its 95% bootstrap CI"
        elif kind == "seeds":
            single = groups[next(iter(groups))] if len(groups) == 1 else r
            arr = single.series(output)
            panels = {f"seed {s}": row for s, row in zip(single.seeds, arr)}
            self._draw(figures.small_multiples, path, panels,
                       ylabel=ylabel or spec.axis_label(output), xlabel=xlabel or "step", logy=logy, **extra)
            what = f"One panel per seed ({n} seeds)" + _view_notes(panels, logy, extra, None, coincide=False)
        elif kind == "panels":
            panels = {label(v): g.series(output) for v, g in groups.items()}
            self._draw(figures.small_multiples, path, panels,
                       ylabel=ylabel or spec.axis_label(output), xlabel=xlabel or "step", logy=logy, **extra)
            what = f"One panel per condition; each line is one of {n} seeds"
            what += _view_notes(panels, logy, extra, None, coincide=False)
        else:
            if extra:
                raise TemplateError(f"figure(kind={kind!r}): xlim and hline apply to the built-in kinds; "
                                    "a figure function draws its own axes")
            self._draw_own(spec, kind, path, r)
            what = f"{n} seeds"
        self.figures[rel] = path
        if kind in ("curves", "scalar", "seeds", "panels"):
            alt_text = alt or f"{kind} of {', '.join(map(spec.label_of, outputs or [output]))}" + \
                (f" by {spec.label_of(by)}" if by else "")
        else:  # an experiment's own figure function: its docstring says what it shows
            alt_text = alt or _figure_doc(spec, kind) or kind.replace("_", " ")
        cap = caption.strip().rstrip(".")
        cap = f"{cap}. " if cap else ""
        return f"![{alt_text}]({rel})\n\n*Figure {self.count}: {cap}{what}.*"


def _values_shown(spec: Spec, axis: str | None, values: list, bare: bool = False) -> dict:
    """value -> how a legend, panel title or table shows it: 'init scale s = 1e-3' (bare: '1e-3'),
    the numbers of one axis in one format (fmt.nums)."""
    distinct = list(dict.fromkeys(values))
    numbers = [v for v in distinct if isinstance(v, (int, float)) and not isinstance(v, bool)]
    text = dict(zip(numbers, nums(numbers)))
    shown = {v: text[v] if v in text else str(v) for v in distinct}
    if bare or axis is None:
        return shown
    return {v: f"{spec.label_of(axis)} = {s}" for v, s in shown.items()}


def _view_notes(lines: dict, logy: bool, extra: dict, x=None, axis: str = "step", coincide: bool = True) -> str:
    """What the caption must say about the view the drawing chooses: a cropped x axis (the steps
    after the series settled are not shown) and medians drawn dashed because they coincide."""
    from expost.posts import figures

    notes = ""
    if "xlim" not in extra and (shown := figures.active_steps(lines, logy)):
        last = num(float(np.ravel(x)[shown - 1])) if x is not None else str(shown - 1)
        notes += (f". The {axis} axis ends at {last}: after it every seed stays within "
                  f"{figures.SETTLED:.0%} of its range of its final value")
    if coincide and len(lines) > 1:
        pairs = figures.coinciding(lines, logy)
        if pairs:
            said = "; ".join(f"the medians of {a} and {b} coincide ({b} dashed)" for a, b in pairs)
            notes += ". " + said[0].upper() + said[1:]
    return notes


def _groups_shown(spec: Spec, verdicts: list[Verdict]) -> list[Verdict]:
    """The verdicts with their groups as a reader sees them: 'init scale s = 1e-5', not
    'init_scale=1e-5', the values of one axis in one format (1e-5, 1e-4, 1e-3, not 0.001)."""
    parts = [v.group.partition("=") for v in verdicts]
    values: dict[str, list] = {}
    for axis, sep, value in parts:
        if sep and axis in spec.params:
            values.setdefault(axis, []).append(value)
    shown = {}
    for axis, texts in values.items():
        try:  # the group holds the value as text: as a number again, it is shown as the figures show it
            keys = [float(t) for t in texts]
        except ValueError:
            keys = texts
        by_value = _values_shown(spec, axis, keys)
        shown.update({(axis, t): by_value[k] for t, k in zip(texts, keys)})
    return [replace(v, group=shown[axis, value]) if (axis, value) in shown else v
            for v, (axis, _, value) in zip(verdicts, parts)]


def _column(values, reached) -> list[str]:
    """A table column of per-seed numbers in one format; 'not reached' for an optional output's gaps."""
    values = list(values)
    shown = iter(nums([x for x, ok in zip(values, reached) if ok]))
    return [next(shown) if ok else "not reached" for ok in reached]


def _figure_doc(spec: Spec, kind: str) -> str:
    """The first line of `figure_KIND`'s docstring, read from the file (nothing imported)."""
    import ast

    from expost.runs.spec import parse

    try:
        tree = parse(spec.path)  # parsed once per version of the file, as the spec loader does
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == FIGURE_PREFIX + kind:
            doc = ast.get_docstring(node) or ""
            return doc.strip().splitlines()[0].strip().rstrip(".") if doc.strip() else ""
    return ""


def _logged_steps(spec: Spec, r: ResultSet, output: str) -> tuple[str, object]:
    """The x axis of a series: ("step", None) for one value per step; but when the experiment
    logs a series named step (or epoch), as a `run` that yields every k steps does, and every run
    logged the same ones, those values, so the curve sits at the steps it was logged at."""
    for axis in ("step", "epoch"):
        if axis == output or spec.outputs.get(axis) is None or spec.outputs[axis].kind != "series":
            continue
        steps = r.series(axis)
        if steps.ndim == 2 and len(steps) and steps.shape[1] == r.series(output).shape[1] \
                and (steps == steps[0]).all():
            return axis, steps[0]
    return "step", None


def _shown(value):
    """What `{{ ... }}` writes into a post: never a default object repr (a memory address that
    changes on every rebuild, and means a helper was used wrongly)."""
    if isinstance(value, (ResultSet, Record)):
        raise TemplateError(f"the template writes an object into the post: {value!r}; write numbers or text "
                            "from it instead (stat(r, NAME), seed_table(r, NAME), figure(r, ...))")
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = value if isinstance(value, str) else None
    else:
        text = str(value)
    if text is not None and _REPR.search(text):
        raise TemplateError(f"the template writes an object into the post: {_REPR.search(text).group(0)}; write "
                            "a number or text instead (e.g. stat(r, NAME), num(x), or r.scalar(NAME) | list)")
    if text is not None and len(text) > MAX_TEXT:
        raise TemplateError(f"one value written into the post has {len(text)} characters (more than {MAX_TEXT})")
    return value


@contextlib.contextmanager
def _time_limit(seconds: float, what: str):
    """Stop a template that runs longer than `seconds` (main thread only: signals)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TemplateError(f"{what}: the template ran for more than {seconds:g} s and was stopped (a loop too "
                            "large?); simplify it, or raise render_timeout in expost.toml")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_JOBS: list = []  # the figure jobs of the render in progress, inherited by forked workers


def _draw(job) -> str | None:
    fn, path, args, kwargs = job
    try:
        fn(path, *args, **kwargs)
    except Exception as e:  # a user figure function, or bad data: reported with the figure's file
        return f"figure {path.name}: {type(e).__name__}: {e}"
    return None


def _default_signals() -> None:
    """A figure worker ends quietly when its pool is done with it (SIGTERM), whatever the command
    set up for itself; Ctrl-C is the command's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _draw_job(i: int) -> str | None:
    return _draw(_JOBS[i])


def _template_where(tb, filename: str) -> str | None:
    """'file:line' of the innermost template frame (the post, or a macro file or include it uses)."""
    where = None
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == filename or name.endswith(".j2"):
            where = f"{Path(name).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def render(inputs: Inputs, templates_dir: Path, out_dir: Path, timeout: float = RENDER_SECONDS) -> Rendered:
    """Render one post's markdown into out_dir (figures under out_dir/figures)."""
    env = make_env(templates_dir)
    helpers = Helpers(inputs, out_dir / "figures")
    env.globals.update(helpers.globals())
    post = inputs.post
    filename = str(post.path)
    try:
        with _time_limit(timeout, post.path.name):
            template = env.get_template(post.path.name)
            body = template.render()
            layout = env.get_template(LAYOUT)
            text = layout.render(post=post, body=body.strip(), repro=_repro(inputs))
        if len(text) > MAX_TEXT:
            raise TemplateError(f"the post has {len(text)} characters (more than {MAX_TEXT}); shorten it")
    except jinja2.TemplateSyntaxError as e:
        where = Path(e.filename or filename).name
        problem = (e.message or "invalid syntax").rstrip(".")
        raise TemplateError(f"{where}:{e.lineno}: template syntax error: {problem}. Fix the {{% ... %}} or "
                            "{{ ... }} on that line: every tag closed, every block ended ({% endif %}, {% endfor %})"
                            ) from None
    except SyntaxError as e:  # Jinja compiled the template to invalid Python (e.g. a[:, -5:])
        raise TemplateError(f"{post.path.name}: the template compiles to invalid code ({e.msg}); "
                            "simplify the expression (Jinja supports fewer slicing forms than Python)") from None
    except Exception as e:  # user template code: report where it failed, never a bare traceback
        loc = _template_where(sys.exc_info()[2], filename) or post.path.name
        hint = ""
        if isinstance(e, jinja2.TemplateNotFound):
            e = TemplateError(f"template {e.name!r} not found in templates/; create templates/{e.name} or fix the name")
        elif isinstance(e, SecurityError):
            hint = f" (templates run in a sandbox without access to internals or files: use the helpers {helpers.names})"
        elif isinstance(e, jinja2.UndefinedError):
            hint = f" (a typo? helpers: {helpers.names})"
        text = str(e) if isinstance(e, (ExpostError, jinja2.TemplateError)) else f"{type(e).__name__}: {e}"
        raise TemplateError(f"{loc}: {text}{hint}") from None
    helpers.check_maths(text)
    helpers.draw_all()
    header = f"# {post.title}\n\n*{post.summary}*\n\n"
    body = text.strip() + "\n"
    return Rendered(header + body, body, helpers.figures)


def _repro(inputs: Inputs) -> dict:
    claims, notes = [], []
    for exp, verdicts in inputs.verdicts.items():
        for v in _groups_shown(inputs.specs[exp], verdicts):
            claims.append({"text": v.claim + (f" ({v.group})" if v.group else ""),
                           "sentence": caveats.claim_sentence(v).replace(f" ({v.group})", ""),
                           "verdict": v.verdict, "numbers": v.numbers})
    for exp, rs in inputs.results.items():
        seeds = inputs.seeds[exp]
        bad = rs.nonfinite_runs  # NaN/inf only: an optional output a run did not reach is not a divergence
        if bad:
            notes.append(f"{exp}: {len(bad)} of {len(rs)} runs diverged (NaN/inf) and are flagged in the numbers.")
        for name, k in rs.unreached().items():
            notes.append(f"{exp}: {name} was not reached within the run in {k} of {len(rs)} runs; they are left out "
                         "of its numbers.")
        if len(seeds) < caveats.FEW_SEEDS:
            notes.append(f"{exp}: only {len(seeds)} seeds: too few to judge seed variance.")
    seed_text = "; ".join(f"{exp}: {_seed_range(s)}{_profile(inputs, exp)}" for exp, s in inputs.seeds.items())
    return {"claims": claims, "notes": notes, "seeds": seed_text, "command": inputs.command}


def _profile(inputs: Inputs, experiment: str) -> str:
    """', profile cpu (steps=500, n=31)': the profile an experiment ran under, with its values."""
    name = inputs.profiles.get(experiment)
    if not name:
        return ""
    values = inputs.specs[experiment].profiles[name]
    return f", profile {name} ({', '.join(f'{k}={num(v) if isinstance(v, float) else v}' for k, v in values.items())})"


def _seed_range(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{len(seeds)} seeds ({seeds[0]}–{seeds[-1]})"
    return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
