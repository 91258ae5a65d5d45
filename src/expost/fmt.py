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
        mant = f"{x:.{sig - 1}e}"
        base, exp = mant.split("e")
        base = base.rstrip("0").rstrip(".")
        return f"{base}e{int(exp)}"
    decimals = max(0, sig - 1 - mag)
    s = f"{round(x, decimals):.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s
