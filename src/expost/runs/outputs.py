"""A run's outputs, checked against its OUTPUTS in the parent: scalars and series, or an error
that names the output and the fix.

Declared kinds: "series" (a 1-D list or tensor of numbers), "scalar" (one number or bool) and
"scalar?" (optional: None means the run did not reach it, stored as None, never as NaN).
Nothing is coerced behind the run's back: a string, a bool mixed into numbers, a complex number,
a dict, None or a ragged list is an OutputError; a series value beyond the float32 range (the
cache stores series as float32) is flagged with NaN/inf."""

from __future__ import annotations

import math

import numpy as np

SERIES, SCALAR, OPTIONAL_SCALAR = "series", "scalar", "scalar?"
LIST_FIX = "return numbers only (a list of floats, or a 1-D tensor)"


class OutputError(Exception):
    """The run returned outputs that do not match OUTPUTS."""


def _what(name: str | None) -> str:
    return f"output {name!r}" if name else "an output"


def _shown(x) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def to_numpy(value, name: str | None = None) -> np.ndarray:
    """A returned value as a float64 array (tensors via numpy, lists of numbers as they are), or an
    OutputError naming the output and the fix. Refused: strings, bools in a list (a bool alone is
    a scalar), complex numbers, None, dicts, ragged lists and arrays of anything but numbers."""
    what = _what(name)
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        if not _plain_numbers(value):
            value = [x.detach().cpu().numpy() if hasattr(x, "detach") else x for x in value]
            _check_list(value, what)
        try:
            return np.asarray(value, dtype=np.float64)
        except ValueError:  # every element is a number: only the nesting can be wrong
            raise OutputError(f"{what} is a ragged list (nested lists of different lengths); "
                              "return a flat list of numbers, one per step") from None
        except OverflowError:
            raise OutputError(f"{what} holds an int too large for a float; return numbers within the float64 "
                              "range") from None
    if isinstance(value, (bool, np.bool_)):
        return np.asarray(float(value))
    if isinstance(value, int):  # also beyond int64
        try:
            return np.asarray(float(value))
        except OverflowError:
            raise OutputError(f"{what} is an int too large for a float ({_shown(value)}); "
                              "return a number within the float64 range") from None
    problem = _not_a_number(value)
    if problem:
        raise OutputError(f"{what} is {problem}; {_fix_for(value)}")
    arr = np.asarray(value)
    if arr.dtype.kind == "b" and arr.ndim:
        raise OutputError(f"{what} is an array of bools; a series holds numbers: return floats "
                          "(e.g. x.float()), or a count or fraction as a scalar")
    if arr.dtype.kind not in "iufb":
        raise OutputError(f"{what} is an array of {arr.dtype}; {LIST_FIX}")
    return arr.astype(np.float64)


def _not_a_number(x) -> str:
    """'' for a real number (or an array of them), else what it is, for the message."""
    if isinstance(x, (str, bytes)):
        return f"a string ({_shown(x)})"
    if isinstance(x, (complex, np.complexfloating)):
        return f"complex ({_shown(x)})"
    if x is None:
        return "None"
    if isinstance(x, dict):
        return "a dict"
    if isinstance(x, (int, float, np.integer, np.floating, np.bool_)):
        return ""
    try:  # an array, or anything numpy reads as one (a pandas series, a JAX array)
        kind = np.asarray(x).dtype.kind
    except Exception:
        kind = "O"
    if kind in "iufb":
        return ""
    if isinstance(x, np.ndarray):
        names = {"c": "complex numbers", "U": "strings", "S": "bytes", "O": "Python objects"}
        return f"an array of {names.get(kind, x.dtype)}"
    return f"a value of type {type(x).__name__}"


def _fix_for(x) -> str:
    if isinstance(x, (str, bytes)):
        return "return a number (convert with float(...)), not its text"
    if isinstance(x, (complex, np.complexfloating)) or (isinstance(x, np.ndarray) and x.dtype.kind == "c"):
        return "return a real number: its .real, .imag or abs()"
    if isinstance(x, dict):
        return "return a number or a list of numbers; give each value its own output in OUTPUTS"
    return "return a number, or a list or 1-D tensor of numbers"


def _check_list(value, what: str) -> None:
    """Every element a real number, at any depth (a bool in a list is a mistake, unlike a bool
    scalar); else one OutputError naming the first offender of each kind."""
    found: dict = {}
    _offenders(value, "", found)
    if not found:
        return
    hints = {"bool": "; a bool in a series is a mistake (float(b) if it is meant)",
             "str": "; convert text with float(...)"}
    parts = list(found.values())[:3]
    raise OutputError(f"{what} is a list that holds {' and '.join(parts)}; {LIST_FIX}"
                      + "".join(hints.get(k, "") for k in found))


def _plain_numbers(value) -> bool:
    """A flat list of real numbers (no bool): the usual case, told from the few types it holds."""
    return all(t is not bool and issubclass(t, (int, float, np.integer, np.floating)) for t in set(map(type, value)))


def _offenders(value, where: str, found: dict) -> None:
    if _plain_numbers(value):
        return
    for i, x in enumerate(value):
        at = f"{where}[{i}]" if where else str(i)
        if isinstance(x, (list, tuple)):
            _offenders(x, at, found)
            continue
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        if isinstance(x, (bool, np.bool_)) or (isinstance(x, np.ndarray) and x.dtype.kind == "b"):
            found.setdefault("bool", f"the bool {_shown(x)} at index {at}")
        elif isinstance(x, (str, bytes)):
            found.setdefault("str", f"the string {_shown(x)} at index {at}")
        elif isinstance(x, (complex, np.complexfloating)):
            found.setdefault("complex", f"the complex number {_shown(x)} at index {at}")
        elif x is None:
            found.setdefault("None", f"None at index {at}")
        elif problem := _not_a_number(x):
            found.setdefault(type(x).__name__, f"{problem} at index {at}")


def convert_outputs(returned, declared: dict) -> tuple[dict, dict, list]:
    """Split a run's return value into scalars and series, checked against OUTPUTS (name -> kind:
    "series", "scalar" or "scalar?"). Returns (scalars, series, nonfinite): an unreached optional
    scalar is None in `scalars`; `nonfinite` names each output with NaN/inf (or, for a series, a
    value beyond float32, which the cache would store as inf: then with the reason)."""
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
        value = returned[name]
        if value is None:
            if kind == OPTIONAL_SCALAR:
                scalars[name] = None  # not reached within the run
                continue
            if kind == SCALAR:
                raise OutputError(f"output {name!r} is None; return a number, or, if a run may not reach it, "
                                  f'declare it optional in OUTPUTS: "{name}": "scalar?: ..." (None is then '
                                  "stored as not reached)")
            raise OutputError(f"output {name!r} is None; return the series (only scalars can be optional)")
        arr = to_numpy(value, name)
        if kind in (SCALAR, OPTIONAL_SCALAR):
            if arr.size != 1:
                raise OutputError(f"output {name!r} is declared 'scalar' but has shape {arr.shape}; return one "
                                  "number (e.g. x.item(), or a summary such as its mean), or declare it 'series'")
            v = arr.reshape(()).item()
            if isinstance(value, (bool, np.bool_)):
                v = bool(value)
            elif isinstance(value, (int, np.integer)):
                v = int(value)
            scalars[name] = v
            if not math.isfinite(float(v)):
                nonfinite.append(name)
        else:
            if arr.ndim != 1:
                raise OutputError(f"output {name!r} is declared 'series' but has shape {arr.shape}; return a 1-D "
                                  "list or tensor (one value per step; flatten it, or give each row its own output)")
            if arr.size == 0:
                raise OutputError(f"output {name!r} is an empty series; return at least one value "
                                  "(a run that logged no step has nothing to show)")
            series[name] = arr
            finite = np.isfinite(arr)
            if not finite.all():
                nonfinite.append(name)
                continue
            with np.errstate(over="ignore"):
                overflow = np.isinf(arr.astype(np.float32))
            if overflow.any():
                worst = float(arr[overflow][np.argmax(np.abs(arr[overflow]))])
                more = int(overflow.sum()) - 1
                nonfinite.append(f"{name} ({worst:.3g} exceeds float32{f', as do {more} more' if more else ''}; "
                                 "stored as inf)")
    return scalars, series, nonfinite
