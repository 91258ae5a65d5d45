"""Number formatting for prose and tables: sensible significant figures."""

from __future__ import annotations

import math


def num(x, sig: int = 3) -> str:
    """3 significant figures, no trailing zeros, integers as integers, scientific when tiny or huge."""
    if x is None:
        return "n/a"
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= 6 or mag <= -4:
        return _scientific(x, sig)
    decimals = max(0, sig - 1 - mag)
    s = f"{round(x, decimals):.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def _scientific(x: float, sig: int) -> str:
    mant = f"{x:.{sig - 1}e}"
    base, exp = mant.split("e")
    base = base.rstrip("0").rstrip(".")
    return f"{base}e{int(exp)}"


def nums(values, sig: int = 3) -> list[str]:
    """Numbers shown along one axis, in one legend or one table column, in one format: when any of
    them needs scientific notation (1e-4), every non-zero finite one gets it (1e-2, 1e-3, 1e-4, never
    0.01 next to 1e-4); otherwise each as num() gives it."""
    shown = [num(v, sig) for v in values]
    if not any("e" in s and s not in ("inf", "-inf") for s in shown):
        return shown
    out = []
    for v, s in zip(values, shown):
        x = float(v) if v is not None else math.nan
        out.append(_scientific(x, sig) if math.isfinite(x) and x != 0 else s)
    return out
