"""Load stage: read an experiment script's result spec and validate it before anything runs.

An experiment is a plain torch script in `experiments/` with module-level data:

    PARAMS  = {...}            # fixed values; every parameter a run sees, with its default
    SWEEP   = {"axis": [...]}  # optional; a dict (cartesian product) or a list of such dicts
    SEEDS   = 10               # default number of seeds (1..SEEDS)
    OUTPUTS = {"loss": "series: ...", "drop_step": "scalar: ...", "hit": "scalar?: ... (None: not reached)"}
    CLAIMS  = [{"claim": "...", "check": lambda r: ..., "where": {...}, "per": "axis", "min_frac": 0.8}]
    def run(cfg, seed): ... return {output name: value}
    def run_batch(cfg, seeds): ... return [one output dict per seed]     # optional, vectorised

PARAMS, SWEEP, SEEDS, OUTPUTS and TIMEOUT are read without importing the script, so that planning
and a no-op build never import torch: literals, or Python over constants of the same file
(`[0.0] + FRACS`, `[10.0 ** -k for k in range(1, 6)]`), evaluated by runs/spec_eval.py to the
value an import gives (`load_full` checks that it does). CLAIMS and `run` are read by importing
the script (`load_full`).
Files whose name starts with `_` are helper modules, not experiments.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from expost.errors import SpecError
from expost.files import signature
from expost.runs.spec_eval import Module, NotStatic

KINDS = ("series", "scalar")
CLAIM_KEYS = {"claim", "check", "value", "expect", "where", "per", "min_frac", "metric", "xfail"}
EXPECT_KINDS = ("approx", "above", "below", "between")
SCALAR_TYPES = (bool, int, float, str)
FIELDS = ("PARAMS", "SWEEP", "SEEDS", "OUTPUTS", "TIMEOUT", "PROFILES", "LABELS")  # read without importing the script


@dataclass(frozen=True)
class Output:
    name: str
    kind: str  # "series" | "scalar"
    description: str
    optional: bool = False  # "scalar?": a run may return None (not reached), stored as such

    @property
    def declared(self) -> str:
        """The kind as declared, what validation checks against: "series", "scalar" or "scalar?"."""
        return self.kind + "?" if self.optional else self.kind

    @classmethod
    def of(cls, name: str, declared: str, description: str) -> "Output":
        return cls(name, declared.rstrip("?"), description, declared.endswith("?"))


@dataclass
class Claim:
    """A sentence plus a predicate over a ResultSet (one bool, or one bool per seed)."""

    text: str
    check: Callable[[Any], Any]
    where: dict = field(default_factory=dict)
    per: str | None = None
    min_frac: float = 1.0
    metric: str | None = None
    index: int = 0
    value: Callable[[Any], Any] | None = None  # a quantitative claim: per-seed numbers ...
    expect: dict | None = None  # ... and what each must be: approx (rel/abs), above, below, between
    xfail: str | dict | None = None  # expected not to hold, and why (per group: {value: why})


@dataclass
class Spec:
    name: str
    path: Path
    source_hash: str  # the code a run computes with (runs/reach.py): part of every run's cache key
    params: dict
    sweep: list[dict[str, list]]
    seeds: int
    outputs: dict[str, Output]
    claims: list[Claim] = field(default_factory=list)
    module: ModuleType | None = None
    batched: bool = False  # defines run_batch(cfg, seeds): many seeds in one vectorised call
    parts: dict = field(default_factory=dict)  # "module.name" -> digest of each part the key covers
    file_hash: str = ""  # every byte of the script and its local modules: what a post shows
    timeout: float | None = None  # TIMEOUT: seconds a run may take before it is stopped
    profiles: dict = field(default_factory=dict)  # PROFILES: name -> parameter values replacing defaults
    labels: dict = field(default_factory=dict)  # LABELS: parameter/output name -> (label, unit)

    def label_of(self, name: str) -> str:
        """What a reader sees for a parameter or output: its LABELS entry, else (an output) the first
        clause of its description, else the name with spaces for underscores."""
        if name in self.labels:
            return self.labels[name][0]
        if name in self.outputs:
            return first_clause(self.outputs[name].description) or name
        return name.replace("_", " ")

    def unit_of(self, name: str) -> str:
        return self.labels[name][1] if name in self.labels else ""

    def axis_label(self, name: str) -> str:
        """An axis label or a table header: 'plateau length (steps)'."""
        unit = self.unit_of(name)
        return f"{self.label_of(name)} ({unit})" if unit else self.label_of(name)

    @property
    def axes(self) -> list[str]:
        """Sweep axes in order of first appearance."""
        seen: list[str] = []
        for block in self.sweep:
            seen.extend(k for k in block if k not in seen)
        return seen

    def points(self) -> list[dict]:
        """Every sweep point (values of the axes), in declaration order, without duplicates."""
        return list(self.iter_points())

    def iter_points(self):
        """The sweep points one at a time (a plan's size is checked before they are all built)."""
        seen: set = set()
        for block in self.sweep or [{}]:
            keys = list(block)
            for values in itertools.product(*(block[k] for k in keys)):
                frozen = tuple((k, repr(v)) for k, v in zip(keys, values))
                if frozen not in seen:
                    seen.add(frozen)
                    yield dict(zip(keys, values))


_CLAUSE = re.compile(r";|,\s|\s\(|\s[-–—]\s|:\s")


def first_clause(description: str) -> str:
    """'training loss L at each step (before the update)' -> 'training loss L at each step'."""
    return _CLAUSE.split(description, 1)[0].strip()


def discover(experiments_dir: Path) -> list[Path]:
    """Experiment scripts: *.py in experiments/, not starting with '_'."""
    return sorted(p for p in experiments_dir.glob("*.py") if not p.name.startswith("_"))


def _fail(path: Path, field_: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"{path.name}: {field_}: {problem}. Fix: {fix}")


def _fields(path: Path, tree: ast.Module) -> dict[str, Any]:
    """The spec fields the script assigns at its top level, evaluated without importing it."""
    module = Module(tree)
    found: dict[str, Any] = {}
    for key in FIELDS:
        try:
            stmt = module.final(key)
            if stmt is not None:
                _no_duplicate_keys(path, stmt.value, key)
                found[key] = module.value(stmt)
        except NotStatic as e:
            raise _not_static(path, key, e) from None
        except RecursionError:
            raise _fail(path, key, "is nested too deeply to read", "write it flatter") from None
    return found


def _not_static(path: Path, key: str, e: NotStatic) -> SpecError:
    chain = e.via if len(e.via) <= 4 else [*e.via[:2], "...", e.via[-1]]
    via = f" (through {' -> '.join(chain)})" if chain else ""
    where = f"{path.name}:{e.line}" if e.line else path.name
    return SpecError(f"{where}: {key}{via}: {e.problem}. Fix: {e.fix}")


def _no_duplicate_keys(path: Path, node: ast.AST, name: str) -> None:
    """A dict literal that repeats a key silently keeps the last value: refuse it, naming the key."""
    for d in [node, *(node.elts if isinstance(node, ast.List) else ())]:
        if not isinstance(d, ast.Dict):
            continue
        seen: dict = {}
        for k in d.keys:
            if k is None:  # **unpacking: not a literal, reported by _literal
                continue
            try:
                key = ast.literal_eval(k)
                hash(key)
            except (ValueError, TypeError):  # not a literal / unhashable: reported by the checks that follow
                continue
            if key in seen:
                lines = f"line {k.lineno}" if seen[key] == k.lineno else f"lines {seen[key]} and {k.lineno}"
                raise _fail(path, f"{name}[{key!r}]",
                            f"duplicate key ({lines}); Python would silently keep the last value",
                            f"keep one {key!r} entry in {name}")
            seen[key] = k.lineno


@functools.lru_cache(maxsize=256)
def _parse(path: Path, sig: tuple) -> ast.Module:
    """ast of a file, parsed once per process for a given version (a build reads each many times)."""
    return ast.parse(path.read_text(), filename=str(path))


def parse(path: Path) -> ast.Module:
    return _parse(path, _version(path))


def _version(path: Path) -> tuple:
    """A file's stat signature, which changes with any edit (ctime too: an edit that restores size
    and mtime still shows). Raises FileNotFoundError for a missing file, as reading it would."""
    sig = signature(path)
    if sig is None:
        raise FileNotFoundError(path)
    return sig


def _imported(path: Path) -> tuple[str, ...]:
    return _imported_cached(path, _version(path))


@functools.lru_cache(maxsize=256)
def _imported_cached(path: Path, sig: tuple) -> tuple[str, ...]:
    """Top-level names of every absolute import in a file, in order (walked once per version)."""
    names: list[str] = []
    for node in ast.walk(_parse(path, sig)):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module.split(".")[0])
    return tuple(names)


def local_sources(path: Path, experiments_dir: Path, seen: set | None = None,
                  checked: list | None = None) -> list[Path]:
    """The script plus the workspace-local modules it imports (recursively), for the cache key.
    `checked` collects every path looked at (present or not, package folders too): what decides
    the answer, for a caller that remembers it."""
    seen = set() if seen is None else seen
    if path in seen:
        return []
    seen.add(path)
    out = [path]
    try:
        imported = _imported(path)
    except SyntaxError:
        return out
    for name in imported:
        for cand in (experiments_dir / f"{name}.py", experiments_dir / name / "__init__.py"):
            if checked is not None:
                checked.append(cand)
            if cand.exists():
                if cand.name == "__init__.py":
                    if checked is not None:
                        checked += [cand.parent, *(d for d in sorted(cand.parent.rglob("*")) if d.is_dir())]
                    for sub in sorted(cand.parent.rglob("*.py")):
                        out += local_sources(sub, experiments_dir, seen, checked)
                else:
                    out += local_sources(cand, experiments_dir, seen, checked)
    return out


def static_inputs(path: Path) -> list[Path]:
    """Every path whose presence or contents decide load_static(path)."""
    checked: list[Path] = []
    sources = local_sources(path, path.parent, checked=checked)
    return list(dict.fromkeys([*sources, *checked]))


def static_record(spec: Spec) -> tuple:
    """load_static's result as plain values (marshal-able), for remembering it across processes."""
    return (spec.name, spec.source_hash, spec.file_hash, spec.parts, spec.params, spec.sweep, spec.seeds,
            [(o.name, o.declared, o.description) for o in spec.outputs.values()], spec.batched, spec.timeout,
            spec.profiles, {n: list(v) for n, v in spec.labels.items()})


def from_static_record(path: Path, record: tuple) -> Spec:
    """A Spec from static_record: every field load_static sets (a field left out here would be lost
    whenever the remembered spec is used, e.g. PROFILES)."""
    name, source, files, parts, params, sweep, seeds, outputs, batched, timeout, profiles, labels = record
    return Spec(name=name, path=Path(path), source_hash=source, file_hash=files, parts=parts, params=params,
                sweep=sweep, seeds=seeds, outputs={n: Output.of(n, k, d) for n, k, d in outputs}, batched=batched,
                timeout=timeout, profiles=profiles, labels={n: tuple(v) for n, v in labels.items()})


def file_hash(path: Path, experiments_dir: Path) -> str:
    """Hash of every byte of the script and the workspace modules it imports (claims, figures
    and comments included): what a post shows of the experiment."""
    h = hashlib.sha256()
    for p in sorted(set(local_sources(path, experiments_dir))):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def code_key(path: Path, outputs: dict[str, Output]) -> tuple[str, dict[str, str]]:
    """(hash, parts) of the code a run computes with (runs/reach.py) and the declared output kinds:
    a run's identity in the cache. Claims, figures, comments and docstrings are not part of it."""
    from expost.runs.reach import reached_parts

    parts = reached_parts(path)
    key = {"code": parts, "outputs": {n: o.declared for n, o in outputs.items()}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest(), parts


def load_static(path: Path) -> Spec:
    """Read the spec's fields (FIELDS) without executing the script."""
    path = Path(path)
    try:
        tree = parse(path)
    except SyntaxError as e:
        raise SpecError(
            f"{path.name}:{e.lineno}: syntax error: {e.msg}. Fix the script (python {path.name} shows the same error)."
        ) from None
    found = _fields(path, tree)
    has_run = has_batch = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "run":
            has_run = True
        elif isinstance(node, ast.FunctionDef) and node.name == "run_batch":
            has_batch = True
    if not has_run:
        raise _fail(path, "run", "no module-level function `run(cfg, seed)`",
                    "define `def run(cfg, seed):` returning a dict of the declared OUTPUTS")
    for key in ("PARAMS", "OUTPUTS"):
        if key not in found:
            raise _fail(path, key, "missing", f"add a module-level {key} = {{...}} dict")
    params = _check_params(path, found["PARAMS"])
    sweep = _check_sweep(path, found.get("SWEEP", {}), params)
    seeds = found.get("SEEDS", 10)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise _fail(path, "SEEDS", f"{seeds!r} is not a positive integer", "set SEEDS = 10 (or any integer >= 1)")
    outputs = _check_outputs(path, found["OUTPUTS"])
    timeout = found.get("TIMEOUT")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0):
        raise _fail(path, "TIMEOUT", f"{timeout!r} is not a positive number of seconds",
                    "set TIMEOUT = 600 (seconds a run may take before it is stopped), or remove it")
    profiles = _check_profiles(path, found.get("PROFILES", {}), params)
    labels = _check_labels(path, found.get("LABELS", {}), params, outputs)
    code, parts = code_key(path, outputs)
    return Spec(
        name=path.stem, path=path, source_hash=code, file_hash=file_hash(path, path.parent), parts=parts,
        params=params, sweep=sweep, seeds=seeds, outputs=outputs, batched=has_batch,
        timeout=float(timeout) if timeout is not None else None, profiles=profiles, labels=labels,
    )


def _check_labels(path: Path, labels, params: dict, outputs: dict) -> dict[str, tuple[str, str]]:
    """LABELS = {"init_scale": "init scale s", "plateau_steps": ("plateau length", "steps")}: what
    figures, tables and generated sentences call a parameter or output (and its unit)."""
    example = 'write LABELS = {"lr": "learning rate", "drop_step": ("drop step", "steps")}'
    if not isinstance(labels, dict):
        raise _fail(path, "LABELS", "must be a dict of parameter or output name -> label or (label, unit)", example)
    out = {}
    for name, value in labels.items():
        if name not in params and name not in outputs:
            raise _fail(path, f"LABELS[{name!r}]", "is neither a parameter nor an output",
                        f"use a name of PARAMS or OUTPUTS ({', '.join([*params, *outputs])})")
        pair = (value, "") if isinstance(value, str) else value
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(x, str) for x in pair) \
                or not pair[0].strip():
            raise _fail(path, f"LABELS[{name!r}]", f"{value!r} is not a label or a (label, unit) pair of strings",
                        example)
        out[name] = (" ".join(pair[0].split()), pair[1].strip())
    return out


def _check_profiles(path: Path, profiles, params: dict) -> dict:
    """PROFILES = {"cpu": {"n": 31, "steps": 1500}}: named sets of parameter values that replace
    the defaults (a shrunk setting beside the paper's), each value of its default's type."""
    if not isinstance(profiles, dict):
        raise _fail(path, "PROFILES", "must be a dict of profile name -> {parameter: value}",
                    'write PROFILES = {"cpu": {"steps": 500}}')
    for name, values in profiles.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise _fail(path, f"PROFILES[{name!r}]", "profile names must be identifiers", 'use a name like "cpu"')
        if not isinstance(values, dict) or not values:
            raise _fail(path, f"PROFILES[{name!r}]", "must be a non-empty dict of parameter -> value",
                        f'write PROFILES = {{"{name}": {{"steps": 500}}}}')
        for key, value in values.items():
            if key not in params:
                raise _fail(path, f"PROFILES[{name!r}][{key!r}]", "is not a parameter",
                            f"add {key!r} with its default to PARAMS (known: {', '.join(params)})")
            if not type_fits(params[key], value):
                raise _fail(path, f"PROFILES[{name!r}][{key!r}]", f"{value!r} is a {type(value).__name__}, but the "
                            f"default {params[key]!r} is a {type(params[key]).__name__}", "give a value of that type")
    return profiles


def _check_params(path: Path, params) -> dict:
    if not isinstance(params, dict):
        raise _fail(path, "PARAMS", "must be a dict of name -> default value", 'write PARAMS = {"lr": 1e-3, ...}')
    for k, v in params.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise _fail(path, f"PARAMS[{k!r}]", "parameter names must be identifiers", "rename the key")
        if not _is_value(v):
            raise _fail(path, f"PARAMS[{k!r}]", f"{v!r} is not a number, string, bool or list of them",
                        "use plain values; put varying values in SWEEP")
    return params


def _is_value(v) -> bool:
    if isinstance(v, SCALAR_TYPES):
        return True
    return isinstance(v, list) and all(isinstance(x, SCALAR_TYPES) for x in v)


def type_fits(default, value) -> bool:
    """Does `value` have the type of `default`? ints are accepted where floats are expected."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(value) is type(default)


def _check_sweep(path: Path, sweep, params: dict) -> list[dict]:
    blocks = sweep if isinstance(sweep, list) else [sweep]
    if not all(isinstance(b, dict) for b in blocks):
        raise _fail(path, "SWEEP", "must be a dict of axis -> list of values, or a list of such dicts",
                    'write SWEEP = {"lr": [1e-3, 1e-2]}')
    for block in blocks:
        for axis, values in block.items():
            if axis not in params:
                raise _fail(path, f"SWEEP[{axis!r}]", "is not a parameter",
                            f"add {axis!r} with its default to PARAMS (known: {', '.join(params)})")
            if not isinstance(values, list) or not values:
                raise _fail(path, f"SWEEP[{axis!r}]", f"must be a non-empty list of values, got {values!r}",
                            f'write SWEEP = {{"{axis}": [{params[axis]!r}, ...]}}')
            for v in values:
                if not type_fits(params[axis], v):
                    raise _fail(path, f"SWEEP[{axis!r}]", f"value {v!r} is a {type(v).__name__}, "
                                f"the default {params[axis]!r} is a {type(params[axis]).__name__}",
                                "use values of the same type as the default in PARAMS")
    return [b for b in blocks if b]


def _check_outputs(path: Path, outputs) -> dict[str, Output]:
    if not isinstance(outputs, dict) or not outputs:
        raise _fail(path, "OUTPUTS", "must be a non-empty dict of name -> 'series: description' or 'scalar: description'",
                    'write OUTPUTS = {"loss": "series: training loss per step"}')
    out = {}
    for name, decl in outputs.items():
        kind, _, desc = str(decl).partition(":")
        kind = kind.strip()
        if not isinstance(name, str) or not name.isidentifier():
            raise _fail(path, f"OUTPUTS[{name!r}]", "output names must be identifiers", "rename the output")
        if kind == "series?":
            raise _fail(path, f"OUTPUTS[{name!r}]", "only scalars can be optional ('scalar?: ...')",
                        f'declare "{name}": "series: ..." and return every step, or add an optional scalar '
                        "(e.g. the step where it ends) beside it")
        if kind not in (*KINDS, "scalar?") or not desc.strip():
            raise _fail(path, f"OUTPUTS[{name!r}]", f"{decl!r} is not 'series: ...', 'scalar: ...' or 'scalar?: ...'",
                        f'write "{name}": "scalar: one line saying what it measures" ("scalar?:" when a run '
                        "may not reach it and returns None)")
        out[name] = Output.of(name, kind, desc.strip())
    return out


_FOLDERS: list[Path] = []  # experiment folders import_script has put on sys.path in this process


def import_script(path: Path, module_name: str | None = None) -> ModuleType:
    """Import an experiment script by path, with its folder importable (as `python script.py` does).

    Modules imported from an experiment folder before (an earlier version of a helper in a
    long-lived process, or another workspace's module of the same name) are imported anew, and
    other workspaces' folders leave sys.path: a helper is never served stale or shadowed."""
    path = Path(path).resolve()
    folder = path.parent
    for old in _FOLDERS:
        if old != folder and str(old) in sys.path:
            sys.path.remove(str(old))
    if folder not in _FOLDERS:
        _FOLDERS.append(folder)
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))
    prefixes = tuple(f"{f}{os.sep}" for f in _FOLDERS)  # modules load by these (resolved) sys.path entries
    for mod_name, mod in list(sys.modules.items()):
        origin = getattr(mod, "__file__", None)
        if isinstance(origin, str) and origin.startswith(prefixes):
            del sys.modules[mod_name]
    name = module_name or f"expost_experiment_{path.stem}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    mod_spec.loader.exec_module(module)
    return module


def load_full(path: Path) -> Spec:
    """The static spec plus the imported module: `run` and validated CLAIMS."""
    spec = load_static(path)
    try:
        module = import_script(spec.path)
    except Exception as e:  # the user's script failed at import: report where, not a bare traceback
        raise SpecError(f"{spec.path.name}: importing the script failed: {type(e).__name__}: {e}. "
                        f"Run `python experiments/{spec.path.name}` to see the full traceback.") from None
    if not callable(getattr(module, "run", None)):
        raise _fail(spec.path, "run", "is not callable", "define `def run(cfg, seed):`")
    spec.module = module
    _same_as_imported(spec.path, module)
    spec.claims = _check_claims(spec, getattr(module, "CLAIMS", []))
    return spec


def _same_as_imported(path: Path, module: ModuleType) -> None:
    """The fields read without importing are what the import gives: a value changed by code the static
    read cannot follow (a function called at module level that changes it) would plan other runs."""
    for key, value in _fields(path, parse(path)).items():
        imported = getattr(module, key, None)
        if not _same(value, imported):
            raise _fail(path, key, f"importing the script gives {_short(imported)}, but expost reads it without "
                        f"importing as {_short(value)}",
                        f"assign {key} at the top level and do not change it afterwards (expost plans the runs "
                        "from the value it reads without importing the script)")


def _same(a, b) -> bool:
    """Equal values of equal types, all the way down (1 is not 1.0 nor True; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(_same(ka, kb) and _same(a[ka], b[kb]) for ka, kb in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_claims(spec: Spec, raw) -> list[Claim]:
    path = spec.path
    if not isinstance(raw, (list, tuple)):
        raise _fail(path, "CLAIMS", "must be a list of dicts", 'write CLAIMS = [{"claim": "...", "check": lambda r: ...}]')
    claims = []
    for i, c in enumerate(raw):
        where_ = f"CLAIMS[{i}]"
        if not isinstance(c, dict):
            raise _fail(path, where_, "must be a dict", 'write {"claim": "sentence", "check": lambda r: ...}')
        unknown = set(c) - CLAIM_KEYS
        if unknown:
            raise _fail(path, where_, f"unknown key(s) {sorted(unknown)}", f"use only {sorted(CLAIM_KEYS)}")
        if not isinstance(c.get("claim"), str) or not c["claim"].strip():
            raise _fail(path, f"{where_}['claim']", "missing sentence", "add \"claim\": \"what the runs show\"")
        quantitative = "value" in c or "expect" in c
        if quantitative:
            if "check" in c:
                raise _fail(path, where_, "has both 'check' and 'value'/'expect'",
                            "keep 'check' (a predicate) or 'value' with 'expect' (a number and its tolerance)")
            if not callable(c.get("value")):
                raise _fail(path, f"{where_}['value']", "missing or not callable",
                            "add \"value\": lambda r: ... returning one number per seed (or one number)")
            _check_expect(path, f"{where_}['expect']", c.get("expect"))
        elif not callable(c.get("check")):
            raise _fail(path, f"{where_}['check']", "missing or not callable",
                        "add \"check\": lambda r: ... returning a bool or one bool per seed")
        xfail = _check_xfail(spec, f"{where_}['xfail']", c.get("xfail"), c.get("per"))
        where = c.get("where", {})
        if not isinstance(where, dict):
            raise _fail(path, f"{where_}['where']", "must be a dict of parameter -> value", 'write "where": {"rank": 1}')
        for k in where:
            if k not in spec.params:
                raise _fail(path, f"{where_}['where']", f"{k!r} is not a parameter", f"use one of {', '.join(spec.params)}")
        per = c.get("per")
        if per is not None and per not in spec.axes:
            raise _fail(path, f"{where_}['per']", f"{per!r} is not a sweep axis",
                        f"use one of {', '.join(spec.axes) or '(no sweep axes declared)'}")
        min_frac = c.get("min_frac", 1.0)
        if not isinstance(min_frac, (int, float)) or not 0 < min_frac <= 1:
            raise _fail(path, f"{where_}['min_frac']", f"{min_frac!r} is not in (0, 1]", "use e.g. 0.8 for 8 of 10 seeds")
        metric = c.get("metric")
        if metric is not None and metric not in spec.outputs:
            raise _fail(path, f"{where_}['metric']", f"{metric!r} is not a declared output",
                        f"use one of {', '.join(spec.outputs)}")
        claims.append(Claim(c["claim"].strip(), c.get("check"), dict(where), per, float(min_frac), metric, i,
                            c.get("value"), dict(c["expect"]) if quantitative else None,
                            xfail))
    return claims


def _check_xfail(spec: Spec, where: str, xfail, per: str | None):
    """A reason (the claim is expected not to hold), or with `per`, {axis value: reason} for the
    groups expected not to hold."""
    fix = ('write "xfail": "why this claim is expected not to hold", or with "per", '
           '{value of the per axis: "why"} for the groups that are expected not to hold')
    if xfail is None:
        return None
    if isinstance(xfail, str):
        if not xfail.strip():
            raise _fail(spec.path, where, "an empty reason", fix)
        return xfail.strip()
    if not isinstance(xfail, dict) or per is None or not xfail:
        raise _fail(spec.path, where, f"{xfail!r} is not a reason" + ("" if per else " (a dict needs 'per')"), fix)
    values = {v for p in spec.points() for k, v in p.items() if k == per}
    for value, reason in xfail.items():
        if value not in values:
            raise _fail(spec.path, where, f"{value!r} is not a value of {per!r} in SWEEP", fix)
        if not isinstance(reason, str) or not reason.strip():
            raise _fail(spec.path, where, f"the reason for {value!r} is empty", fix)
    return {k: v.strip() for k, v in xfail.items()}


def _check_expect(path: Path, where: str, expect) -> None:
    """{"approx": x, "rel": r} or {"approx": x, "abs": a}, {"above": a}, {"below": b}, {"between": [a, b]}."""
    example = 'write "expect": {"approx": 2.3, "rel": 0.15} (or {"above": 0}, {"below": 1}, {"between": [0, 1]})'
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    if not isinstance(expect, dict):
        raise _fail(path, where, "missing or not a dict", example)
    kinds = [k for k in EXPECT_KINDS if k in expect]
    extra = set(expect) - set(EXPECT_KINDS) - {"rel", "abs"}
    if len(kinds) != 1 or extra:
        raise _fail(path, where, f"{expect!r} must have exactly one of {', '.join(EXPECT_KINDS)}", example)
    kind = kinds[0]
    if kind == "approx":
        tol = [k for k in ("rel", "abs") if k in expect]
        if not number(expect["approx"]) or len(tol) != 1 or not number(expect[tol[0]]) or expect[tol[0]] < 0:
            raise _fail(path, where, f"{expect!r}: approx needs a number and one of rel or abs (>= 0)", example)
    elif kind == "between":
        pair = expect["between"]
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(map(number, pair))
                or not pair[0] <= pair[1] or {"rel", "abs"} & set(expect)):
            raise _fail(path, where, f"{expect!r}: between needs [low, high], low first", example)
    elif not number(expect[kind]) or {"rel", "abs"} & set(expect):
        raise _fail(path, where, f"{expect!r}: {kind} needs one number", example)
