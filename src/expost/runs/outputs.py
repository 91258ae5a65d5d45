"""A run's outputs, checked against its OUTPUTS in the parent: scalars and series, or an error
that names the output and the fix."""

from __future__ import annotations

import math

import numpy as np


class OutputError(Exception):
    """The run returned outputs that do not match OUTPUTS."""


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def convert_outputs(returned, declared: dict) -> tuple[dict, dict, list]:
    """Split a run's return value into scalars and series, checked against OUTPUTS."""
    if not isinstance(returned, dict):
        raise OutputError(f"run() returned {type(returned).__name__}; it must return a dict of the declared OUTPUTS")
    missing = [k for k in declared if k not in returned]
    extra = [k for k in returned if k not in declared]
    if missing:
        raise OutputError(f"declared but not produced: {', '.join(missing)} (return them from run(), or remove them from OUTPUTS)")
    if extra:
        raise OutputError(f"produced but not declared: {', '.join(extra)} (declare them in OUTPUTS, or stop returning them)")
    scalars, series, nonfinite = {}, {}, []
    for name, kind in declared.items():
        arr = to_numpy(returned[name])
        if kind == "scalar":
            if arr.size != 1:
                raise OutputError(f"output {name!r} is declared 'scalar' but has shape {arr.shape}")
            v = arr.reshape(()).item()
            if isinstance(returned[name], (bool, np.bool_)):
                v = bool(returned[name])
            elif isinstance(returned[name], (int, np.integer)):
                v = int(returned[name])
            scalars[name] = v
            if not math.isfinite(float(v)):
                nonfinite.append(name)
        else:
            if arr.ndim != 1 or arr.size == 0:
                raise OutputError(f"output {name!r} is declared 'series' but has shape {arr.shape}; return a 1-D list or tensor")
            series[name] = arr
            if not np.isfinite(arr).all():
                nonfinite.append(name)
    return scalars, series, nonfinite
