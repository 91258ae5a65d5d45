"""Figures: one drawing function per figure kind, plain numpy in, one image file out.

Headless and deterministic: matplotlib is imported only inside the functions (a build with
nothing to draw never loads it), figures are `matplotlib.figure.Figure` objects on an Agg canvas
(no pyplot, no global state), the house style is applied with `rc_context`, and saving the same
data twice gives byte-identical PNG or SVG files, written atomically.

Every function returns a small info dict describing what was drawn (always with "path"), so that
tests and callers can check the data handed to the drawing without looking at pixels.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import numpy as np

from expost.errors import ExpostError
from expost.fmt import nums

# Okabe-Ito, colour-blind safe; yellow last because it is faint on white.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
FIGSIZE = (6.4, 3.6)  # inches; at DPI this is ~960 px wide, still readable scaled to a ~700 px column
DPI = 150
MAX_POINTS = 2000  # points per plotted line; longer series are min/max downsampled
JITTER_SEED = 0  # fixed, so per-seed point positions are the same on every rebuild
FORMATS = ("png", "svg")
_HINT = "thin: one seed, bold: median"


def _rc() -> dict:
    from cycler import cycler

    return {
        "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
        "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9,
        "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.axisbelow": True,
        "axes.prop_cycle": cycler(color=COLORS),
        "legend.frameon": False, "lines.solid_capstyle": "round",
        "figure.dpi": DPI, "savefig.dpi": DPI,
        "svg.hashsalt": "expost",  # otherwise SVG element ids are random per save
        "svg.fonttype": "path",  # text as paths: no dependence on the reader's fonts
    }


def _target(path) -> tuple[Path, str]:
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExpostError(f"figure {path}: unsupported file type {path.suffix or '(none)'!r}; "
                          f"name it with one of: {', '.join('.' + f for f in FORMATS)}")
    return path, fmt


@contextmanager
def _figure(path, *, figsize=FIGSIZE, nrows=1, ncols=1, xlim=None, hlines=(), **subplots):
    """Yield (fig, axes) in the house style; save deterministically when the block succeeds.
    `xlim` (lo, hi) and `hlines` (y values drawn as dashed reference lines) apply to every panel."""
    path, fmt = _target(path)  # fail before any drawing work
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=nrows * ncols == 1, **subplots)
        yield fig, axes
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            for y in hlines:
                ax.axhline(y, color="0.3", lw=0.9, ls=(0, (4, 3)), zorder=1.5)
            if xlim is not None:
                ax.set_xlim(*xlim)
        buf = BytesIO()
        if fmt == "png":
            # An intermediate: _compact_png re-encodes it, so no slow optimize pass here.
            extra = {"metadata": {"Software": None}, "pil_kwargs": {"compress_level": 1}}
        else:
            extra = {"metadata": {"Date": None}}
        fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.05, **extra)
    data = _compact_png(buf.getvalue()) if fmt == "png" else buf.getvalue()
    from expost.files import atomic_write

    atomic_write(path, data)


def _compact_png(data: bytes) -> bytes:
    """A 256-colour palette PNG: about 2.5x smaller for line plots, visually the same.
    Median cut without dithering is deterministic, so rebuilds stay byte-identical."""
    from PIL import Image  # Pillow comes with matplotlib

    with Image.open(BytesIO(data)) as im:
        q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = BytesIO()
    q.save(out, format="PNG", optimize=True)
    return out.getvalue()


# ---------------------------------------------------------------------------------------- data


def downsample_minmax(y, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Keep the min and max of each bucket (in order) plus both ends: <= max_points, spikes kept.

    Returns (x_indices, y_values). Non-finite values are never chosen over finite ones in a
    bucket; a bucket with no finite value contributes one non-finite point (a gap in the line).
    """
    y = np.asarray(y, dtype=float).ravel()
    n = len(y)
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}")
    if n <= max_points:
        return np.arange(n), y
    size = math.ceil(n / ((max_points - 2) // 2))
    nb = math.ceil(n / size)
    finite = np.isfinite(y)
    lo = np.full(nb * size, np.inf)
    hi = np.full(nb * size, -np.inf)
    lo[:n] = np.where(finite, y, np.inf)
    hi[:n] = np.where(finite, y, -np.inf)
    base = np.arange(nb) * size
    imin = base + lo.reshape(nb, size).argmin(axis=1)
    imax = base + hi.reshape(nb, size).argmax(axis=1)
    idx = np.sort(np.concatenate([[0, n - 1], imin, imax]))
    idx = idx[np.r_[True, np.diff(idx) > 0]]
    idx = idx[idx < n]
    return idx, y[idx]


def _median_over_seeds(a: np.ndarray) -> np.ndarray:
    """NaN-ignoring median down axis 0, NaN where fewer than half the seeds have a value.

    The coverage rule keeps a tail carried by the few longest runs from passing for the typical
    run. Computed in column chunks so memory stays small for huge inputs.
    """
    seeds, steps = a.shape
    need = math.ceil(seeds / 2)
    out = np.full(steps, np.nan)
    chunk = max(1, (1 << 22) // max(seeds, 1))  # ~32 MB of float64 at a time
    with np.errstate(invalid="ignore"):
        for s in range(0, steps, chunk):
            c = np.asarray(a[:, s:s + chunk], dtype=float)
            nan = np.isnan(c)
            if not nan.any():
                out[s:s + chunk] = np.median(c, axis=0)
                continue
            c = np.sort(c, axis=0)  # NaN sorts last
            n = (~nan).sum(axis=0)
            lo = np.take_along_axis(c, np.maximum((n - 1) // 2, 0)[None], 0)[0]
            hi = np.take_along_axis(c, np.maximum(n // 2, 0)[None], 0)[0]
            out[s:s + chunk] = np.where(n >= max(need, 1), (lo + hi) / 2, np.nan)
    return out


def _line(y, x, logy: bool, max_points: int):
    """One line ready to draw: non-positive masked on log axes, then downsampled."""
    y = np.asarray(y, dtype=float)
    nonpos = 0
    if logy:
        bad = y <= 0
        nonpos = int(bad.sum())
        if nonpos:
            y = np.where(bad, np.nan, y)
    idx, yy = downsample_minmax(y, max_points)
    return (idx if x is None else x[idx]), yy, nonpos


def _window(xlim, steps: int) -> slice:
    """The steps inside xlim (lo, hi), so downsampling spends its points on what is shown."""
    if xlim is None:
        return slice(0, steps)
    lo, hi = max(0, math.floor(xlim[0])), min(steps, math.ceil(xlim[1]) + 1)
    return slice(lo, max(lo, hi))


def _as_rows(data, label) -> np.ndarray:
    a = np.asarray(data)  # no dtype: a float32 input stays float32, rows are converted one at a time
    if a.ndim == 1:
        a = a[None] if a.size else a.reshape(0, 0)
    if a.ndim != 2:
        raise ValueError(f"condition {label!r}: expected seeds x steps, got shape {a.shape}")
    return a


def _curve_lines(data, *, x=None, logy=False, max_points=MAX_POINTS, label="") -> dict:
    """The lines `curves` draws for one condition: per-seed (x, y) pairs and the median (x, y)."""
    a = _as_rows(data, label)
    if x is not None:
        x = np.asarray(x, dtype=float).ravel()
        if len(x) < a.shape[1]:
            raise ValueError(f"condition {label!r}: x has {len(x)} values for {a.shape[1]} steps")
        x = x[:a.shape[1]]
    seeds, nonfinite, nonpos = [], 0, 0
    for row in a:
        row = np.asarray(row, dtype=float)
        nonfinite += int((~np.isfinite(row)).sum())
        xs, ys, k = _line(row, x, logy, max_points)
        nonpos += k
        seeds.append((xs, ys))
    mx, my, _ = _line(_median_over_seeds(a), x, logy, max_points)
    return {"seeds": seeds, "median": (mx, my), "steps": a.shape[1], "nonfinite": nonfinite,
            "nonpositive": nonpos}


def _median_ci(values, ci=None):
    """Median and 95% CI of the finite values (seeded bootstrap unless `ci` is given)."""
    from expost.runs.stats import bootstrap_ci

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), (float("nan"), float("nan"))
    ci = bootstrap_ci(v, np.median) if ci is None else ci
    return float(np.median(v)), (float(ci[0]), float(ci[1]))


def _jitter(n: int, width: float) -> np.ndarray:
    """Evenly spaced offsets in [-width, width], in a fixed shuffled order (no seed-order trend)."""
    if n <= 1:
        return np.zeros(n)
    return np.linspace(-width, width, n)[np.random.default_rng(JITTER_SEED).permutation(n)]


SETTLED = 0.01  # a series has settled once it stays within this fraction of its range of its last value
CROP_MIN = 0.25  # crop the x axis only when that hides at least this fraction of the steps
COINCIDE = 0.005  # medians closer than this fraction of the axis range, at every step, coincide


def _scaled(row, logy: bool) -> np.ndarray:
    row = np.asarray(row, dtype=float)
    if logy:
        with np.errstate(divide="ignore", invalid="ignore"):
            row = np.where(row > 0, np.log10(np.where(row > 0, row, 1.0)), np.nan)
    return row


def active_steps(conditions: dict, logy: bool = False) -> int | None:
    """How many leading steps to show: up to shortly after the last step at which any seed of any
    condition is still more than SETTLED of its range away from its last value (on the log scale
    when logy). None when that would hide less than CROP_MIN of the steps (nothing to crop)."""
    steps, end = 0, 0
    for label, data in conditions.items():
        a = _as_rows(data, label)
        steps = max(steps, a.shape[1])
        for row in a:
            v = _scaled(row, logy)
            idx = np.flatnonzero(np.isfinite(v))
            if len(idx) < 2:
                continue
            v = v[idx]
            span = v.max() - v.min()
            away = np.flatnonzero(np.abs(v - v[-1]) > SETTLED * span) if span > 0 else []
            if len(away):
                end = max(end, int(idx[away[-1]]) + 1)
            if idx[-1] < a.shape[1] - 1:  # the seed stops (diverged, or a shorter run): show where
                end = max(end, int(idx[-1]) + 1)
    shown = min(steps, math.ceil(end * 1.1) + 1)
    return shown if steps and shown <= (1 - CROP_MIN) * steps else None


def coinciding(conditions: dict, logy: bool = False) -> list[tuple[str, str]]:
    """Pairs (earlier, later) of conditions whose median curves lie on top of each other: within
    COINCIDE of the plot's range at every step both have. The later one is drawn dashed."""
    medians = {label: _scaled(_median_over_seeds(_as_rows(data, label)), logy) for label, data in conditions.items()}
    finite = [m[np.isfinite(m)] for m in medians.values()]
    finite = np.concatenate(finite) if finite else np.array([])
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    labels, pairs = list(medians), []
    for j, b in enumerate(labels):
        for a in labels[:j]:
            x, y = medians[a], medians[b]
            n = min(len(x), len(y))
            both = np.isfinite(x[:n]) & np.isfinite(y[:n])
            if both.sum() >= 2 and np.abs(x[:n][both] - y[:n][both]).max() <= COINCIDE * span:
                pairs.append((a, b))
                break
    return pairs


# ------------------------------------------------------------------------------------- figures


def curves(path, conditions, *, xlabel="step", ylabel="", logy=False, title=None, x=None,
           max_points=MAX_POINTS, legend_loc="best", xlim=None, hlines=()) -> dict:
    """Per-seed curves (thin, light) and their median (bold), one colour per condition.

    `conditions`: label -> seeds x steps array (NaN padding and NaN/inf from diverged runs are
    fine). `x`: step values shared by all conditions, or a dict label -> step values. `xlim`:
    (lo, hi) steps shown (with step x values the rest is cropped before downsampling). `hlines`:
    y values of dashed reference lines.
    Returns {"path", "conditions": {label: {"seeds", "steps", "max_points", "nonfinite",
    "nonpositive"}}}; "max_points" is the longest line actually drawn.
    """
    info = {"conditions": {}, "cropped": None}
    if xlim is None and not isinstance(x, dict) and (shown := active_steps(conditions, logy)):
        # the series stop changing early: show the steps where they change (xlim shows others)
        info["cropped"] = shown
        xlim = (0.0, float(shown - 1)) if x is None else (float(np.ravel(x)[0]), float(np.ravel(x)[shown - 1]))
    dashed = {b for _, b in coinciding(conditions, logy)} if len(conditions) > 1 else set()
    info["dashed"] = sorted(map(str, dashed))
    if xlim is not None and x is None:  # steps as x: crop to the window, keep the true step numbers
        cropped, xs = {}, {}
        for label, data in conditions.items():
            a = _as_rows(data, label)
            w = _window(xlim, a.shape[1])
            cropped[label] = a[:, w]
            xs[label] = np.arange(w.start, w.start + cropped[label].shape[1])
        conditions, x = cropped, xs
    with _figure(path, xlim=xlim, hlines=hlines) as (fig, ax):
        from matplotlib import patheffects
        from matplotlib.collections import LineCollection

        # A white halo keeps the median readable on top of a dense band of its own colour.
        halo = [patheffects.withStroke(linewidth=3.6, foreground="white"), patheffects.Normal()]

        handles = []
        for i, (label, data) in enumerate(conditions.items()):
            color = COLORS[i % len(COLORS)]
            xi = x.get(label) if isinstance(x, dict) else x
            d = _curve_lines(data, x=xi, logy=logy, max_points=max_points, label=label)
            n = len(d["seeds"])
            if n > 1:
                segs = [np.column_stack(s) for s in d["seeds"]]
                alpha = min(0.35, max(0.04, 1.5 / math.sqrt(n)))
                lc = LineCollection(segs, colors=color, linewidths=0.7, alpha=alpha, zorder=2)
                lc.set_rasterized(sum(len(s) for s in segs) > 50_000)  # keeps big SVGs small
                ax.add_collection(lc, autolim=True)
            if n:  # a median on top of an earlier one is dashed, and drawn above it, so both show
                style = {"ls": (0, (4, 2.5)), "zorder": 3.5} if label in dashed else {"zorder": 3}
                (med,) = ax.plot(*d["median"], color=color, lw=2.0, label=str(label), path_effects=halo, **style)
                handles.append(med)
            lengths = [len(s[0]) for s in d["seeds"]] + [len(d["median"][0])] if n else [0]
            info["conditions"][label] = {"seeds": n, "steps": d["steps"], "max_points": max(lengths),
                                         "nonfinite": d["nonfinite"], "nonpositive": d["nonpositive"]}
        multi_seed = any(c["seeds"] > 1 for c in info["conditions"].values())
        if logy:
            ax.set_yscale("log")
        ax.autoscale_view()
        if len(handles) > 1:
            ax.legend(handles=handles, loc=legend_loc, title=_HINT if multi_seed else None)
        elif handles and multi_seed:
            from matplotlib.lines import Line2D

            c = handles[0].get_color()
            ax.legend(handles=[Line2D([], [], color=c, lw=0.7, alpha=0.6),
                               Line2D([], [], color=c, lw=2.0)],
                      labels=["one seed", f"median of {max(c['seeds'] for c in info['conditions'].values())} seeds"],
                      loc=legend_loc)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title, loc="left")
    info["path"] = Path(path)
    return info


def scalar_by_condition(path, conditions, *, ylabel="", xlabel="", logy=False, logx=False,
                        numeric_x=False, cis=None, hlines=()) -> dict:
    """Every seed as a point, with the median (bold tick) and its 95% CI (vertical bar).

    `conditions`: label -> per-seed values. With `numeric_x` the labels are numbers placed on a
    real (log with `logx`) x axis and the medians are joined, so a trend shows. `cis`: optional
    label -> (lo, hi); missing ones are a seeded bootstrap CI of the median over finite values.
    Non-finite values (and non-positive ones on a log y axis) are not drawn, only counted.
    Returns {"path", "skipped", "conditions": {label: {"x", "n", "skipped", "median", "ci"}}}.
    """
    labels = list(conditions)
    if numeric_x:
        try:
            pos = np.array([float(lb) for lb in labels])
        except (TypeError, ValueError):
            raise ValueError(f"numeric_x needs numeric labels, got {labels!r}") from None
        if logx and (pos <= 0).any():
            raise ValueError(f"logx needs positive labels, got {labels!r}")
    else:
        pos = np.arange(len(labels), dtype=float)
    # Jitter half-width: a quarter of the closest gap between conditions (in log space on log x).
    t = np.log10(pos) if (numeric_x and logx) else pos
    gaps = np.diff(np.unique(t))
    width = 0.25 * (gaps.min() if len(gaps) else 1.0) if numeric_x else 0.25
    shift = (lambda p, o: p * 10.0 ** o) if (numeric_x and logx) else (lambda p, o: p + o)
    info = {"conditions": {}, "skipped": 0}
    with _figure(path, hlines=hlines) as (fig, ax):
        medians = []
        for i, (label, p) in enumerate(zip(labels, pos)):
            v = np.asarray(conditions[label], dtype=float).ravel()
            med, ci = _median_ci(v, (cis or {}).get(label))
            keep = np.isfinite(v) & ((v > 0) if logy else True)
            shown = v[keep]
            color = COLORS[0] if numeric_x else COLORS[i % len(COLORS)]
            ax.scatter(shift(p, _jitter(len(shown), width)), shown, s=14, color=color, alpha=0.55,
                       linewidths=0, zorder=2)
            ax.vlines(p, *ci, color="black", lw=1.4, zorder=4)
            ax.hlines(med, shift(p, -1.3 * width), shift(p, 1.3 * width), color="black", lw=2.5,
                      zorder=4)
            medians.append(med)
            skipped = int(len(v) - len(shown))
            info["skipped"] += skipped
            info["conditions"][label] = {"x": float(p), "n": int(len(shown)), "skipped": skipped,
                                         "median": med, "ci": ci}
        if logy:
            ax.set_yscale("log")
        if numeric_x:
            order = np.argsort(pos)
            ax.plot(pos[order], np.array(medians)[order], color="black", lw=0.8, alpha=0.6, zorder=3)
            if logx:
                ax.set_xscale("log")
            if len(pos) <= 12:
                from matplotlib.ticker import NullFormatter

                ax.set_xticks(pos, labels=nums(list(pos)))  # one format along the axis: 1e-2, 1e-3, 1e-4
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_xticks(pos, labels=[str(lb) for lb in labels])
            ax.set_xlim(-0.6, len(labels) - 0.4)
            ax.grid(False, axis="x")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    info["path"] = Path(path)
    return info


def small_multiples(path, panels, *, ncols=5, xlabel="step", ylabel="", logy=False, sharey=True,
                    max_points=MAX_POINTS, xlim=None, hlines=()) -> dict:
    """One small panel per entry (title -> 1-D series or lines x steps array), shared axes.

    Returns {"path", "panels", "grid": (nrows, ncols), "max_points", "nonfinite": {title: n}}.
    """
    n = len(panels)
    if n == 0:
        raise ValueError("small_multiples needs at least one panel")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    info = {"panels": n, "grid": (nrows, ncols), "max_points": 0, "nonfinite": {}, "cropped": None}
    if xlim is None and (shown := active_steps(panels, logy)):
        info["cropped"], xlim = shown, (0.0, float(shown - 1))
    with _figure(path, figsize=(FIGSIZE[0], 0.4 + 1.45 * nrows), nrows=nrows, ncols=ncols,
                 sharex=True, sharey=sharey, xlim=xlim, hlines=hlines) as (fig, axes):
        from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

        axes = np.asarray(axes).reshape(nrows, ncols)
        for k, (title, data) in enumerate(panels.items()):
            ax = axes.flat[k]
            rows = _as_rows(data, title)
            bad = 0
            w = _window(xlim, rows.shape[1])
            for j, row in enumerate(rows):
                row = np.asarray(row[w], dtype=float)
                bad += int((~np.isfinite(row)).sum())
                xs, ys, _ = _line(row, np.arange(w.start, w.start + len(row)), logy, max_points)
                ax.plot(xs, ys, color=COLORS[j % len(COLORS)], lw=1.0)
                info["max_points"] = max(info["max_points"], len(xs))
            info["nonfinite"][title] = bad
            ax.set_title(str(title), fontsize=9, pad=2)
            if logy:
                ax.set_yscale("log")
            # thin ticks: a few per small panel (a full set crowds a grid of 10)
            ax.xaxis.set_major_locator(MaxNLocator(3 if ncols < 4 else 2, integer=True))
            if logy:
                ax.yaxis.set_major_locator(LogLocator(numticks=3))
                ax.yaxis.set_minor_formatter(NullFormatter())
            else:
                ax.yaxis.set_major_locator(MaxNLocator(3))
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for k, ax in enumerate(axes.flat[:n]):
            if k + ncols >= n:  # lowest panel in its column, also when the last row is short
                ax.set_xlabel(xlabel)
                ax.xaxis.set_tick_params(labelbottom=True)
        if nrows > 1:  # one label for the whole grid: a label per row would overlap its neighbours
            fig.supylabel(ylabel, fontsize=10)
        else:
            axes[0, 0].set_ylabel(ylabel)
    info["path"] = Path(path)
    return info


def custom(path, draw, *args, **kwargs) -> dict:
    """Call a user figure function `draw(ax, *args, **kwargs)` on a house-style Axes; save it.

    `draw` must draw on `ax` (or `ax.figure`), not through pyplot. Returns {"path", "returned"}
    where "returned" is whatever `draw` returned.
    """
    with _figure(path) as (fig, ax):
        returned = draw(ax, *args, **kwargs)
    return {"path": Path(path), "returned": returned}
