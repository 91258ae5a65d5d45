"""Claims across seeds: evaluate each declared claim and give a verdict with k of n seeds."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from expost.errors import NoRunsError, ResultError, SpecError
from expost.runs.results import Record, ResultSet
from expost.files import atomic_write_text
from expost.runs.spec import Claim, Spec, load_full

HOLDS, FAILS, INCONCLUSIVE, ERROR = "holds", "fails", "inconclusive", "error"
MIN_SEEDS = 3  # fewer seeds than this cannot support or refute a claim


@dataclass(frozen=True)
class Verdict:
    experiment: str
    claim: str
    index: int
    group: str  # "" or "axis=value" when the claim is evaluated per config group
    verdict: str
    k: int
    n: int
    min_frac: float
    per_seed: bool
    missing: int = 0
    n_seeds: int = 0
    numbers: str = ""
    detail: str = ""
    xfail: str = ""  # the claim is expected not to hold, and why

    @property
    def expected(self) -> bool | None:
        """Is this the verdict the experiment expects (holds, or fails for an xfail claim)? None
        when it cannot tell (inconclusive); an error is never expected."""
        if self.verdict == INCONCLUSIVE:
            return None
        if self.verdict == ERROR:
            return False
        return self.verdict == (FAILS if self.xfail else HOLDS)

    @property
    def k_of_n(self) -> str:
        return f"{self.k}/{self.n}" if self.per_seed else ("yes" if self.k else "no")

    def as_dict(self) -> dict:
        return {"experiment": self.experiment, "claim": self.claim, "index": self.index, "group": self.group,
                "verdict": self.verdict, "k": self.k, "n": self.n, "min_frac": self.min_frac,
                "per_seed": self.per_seed, "missing": self.missing, "n_seeds": self.n_seeds, "numbers": self.numbers,
                "detail": self.detail, "xfail": self.xfail}


@dataclass(frozen=True)
class ClaimText:
    """What a post shows of a declared claim besides its verdicts: remembered with the verdicts
    (runs/verdicts.py), so a render that reuses them needs no import of the experiment."""

    index: int
    text: str
    quantitative: bool  # a `value` claim: its numbers are shown with its verdict


def claim_texts(spec: Spec) -> list[ClaimText]:
    return [ClaimText(c.index, c.text, c.value is not None) for c in spec.claims]


def value_label(value) -> str:
    """A config value as shown in labels: floats with sensible figures (1e-5, not 1e-05)."""
    from expost.fmt import num

    return num(value) if isinstance(value, float) else str(value)


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _described(value) -> str:
    arr = _array(value) if not isinstance(value, (str, bytes, dict)) else None
    kind = type(value).__name__
    if arr is None or arr.dtype == object:
        return f"a {kind}"
    return f"a {kind} of {arr.dtype}" if arr.ndim else f"a {kind} ({arr.dtype})"


def interpret(value, n_seeds: int) -> tuple[int, int, bool] | None:
    """(k, n, per_seed) from a predicate's return value: a bool, or one bool per seed (Python,
    numpy or torch); None means "cannot tell" (inconclusive, never a pass). Anything else raises
    TypeError: a number, NaN or a string must never pass for true."""
    fix = "return a bool or one bool per seed: a comparison such as r.scalar('x') < 1"
    if value is None:
        return None
    arr = None if isinstance(value, (str, bytes, dict)) else _array(value)
    if arr is None or arr.dtype != np.bool_:
        raise TypeError(f"returned {_described(value)}, not booleans; {fix}")
    if arr.ndim == 0:
        return int(bool(arr)), 1, False
    arr = arr.ravel()
    if len(arr) != n_seeds:
        raise TypeError(f"returned {len(arr)} values for {n_seeds} seeds; return one bool per seed")
    return int(np.count_nonzero(arr)), len(arr), True


def numbers_of(value, n_seeds: int) -> np.ndarray:
    """A quantitative claim's values: one finite-or-NaN float per seed (or one number)."""
    arr = None if isinstance(value, (str, bytes, dict)) or value is None else _array(value)
    if arr is None or arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise TypeError(f"'value' returned {_described(value) if value is not None else 'None'}; "
                        "return one number per seed (or one number)")
    arr = arr.astype(np.float64).ravel()
    if arr.size not in (1, n_seeds):
        raise TypeError(f"'value' returned {arr.size} numbers for {n_seeds} seeds; return one per seed")
    return arr


def meets(values: np.ndarray, expect: dict) -> np.ndarray:
    """Which values meet the expectation (NaN never does)."""
    with np.errstate(invalid="ignore"):
        if "approx" in expect:
            target = float(expect["approx"])
            tol = abs(target) * float(expect["rel"]) if "rel" in expect else float(expect["abs"])
            return np.abs(values - target) <= tol
        if "above" in expect:
            return values > float(expect["above"])
        if "below" in expect:
            return values < float(expect["below"])
        lo, hi = expect["between"]
        return (values >= float(lo)) & (values <= float(hi))


def expectation(expect: dict) -> str:
    """The expectation in words: '≈ 2.3 ± 15%', '> 0', 'in [0, 1]'."""
    from expost.fmt import num

    if "approx" in expect:
        tol = f"{expect['rel']:.0%}" if "rel" in expect else num(expect["abs"])
        return f"≈ {num(expect['approx'])} ± {tol}"
    if "above" in expect:
        return f"> {num(expect['above'])}"
    if "below" in expect:
        return f"< {num(expect['below'])}"
    lo, hi = expect["between"]
    return f"in [{num(lo)}, {num(hi)}]"


def _value_numbers(values: np.ndarray, expect: dict) -> str:
    from expost.fmt import num

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return f"value: no finite number; expected {expectation(expect)}"
    spread = f" [{num(float(finite.min()))}, {num(float(finite.max()))}]" if finite.size > 1 else ""
    return f"value median {num(float(np.median(finite)))}{spread}; expected {expectation(expect)}"


def decide(k: int, n: int, per_seed: bool, min_frac: float, missing: int, n_seeds: int) -> str:
    """holds / fails / inconclusive. Missing (failed) seeds make a verdict inconclusive if they could flip it."""
    if n_seeds < MIN_SEEDS:
        return INCONCLUSIVE
    if not per_seed:
        return INCONCLUSIVE if missing else (HOLDS if k else FAILS)
    total = n + missing
    worst, best = k / total, (k + missing) / total
    if worst >= min_frac:
        return HOLDS
    if best < min_frac:
        return FAILS
    return INCONCLUSIVE


def _numbers(rs: ResultSet, metric: str | None, spec: Spec) -> str:
    """The metric's median [min, max] over seeds; one per config, labelled by the parameters that
    differ, when the claim spans several."""
    if not metric:
        return ""
    from expost.fmt import num

    configs = rs.configs
    varying = [k for k in (configs[0] if configs else {}) if len({repr(c.get(k)) for c in configs}) > 1]
    parts = []
    for config in configs:
        sub = rs.where(**{k: config[k] for k in varying}) if varying else rs
        try:
            s = sub.stats(metric)
        except ResultError:
            return ""
        label = ", ".join(f"{k}={value_label(config[k])}" for k in varying)
        values = f"{num(s.median)} [{num(s.min)}, {num(s.max)}]" if s.n or not s.n_unreached else "no value"
        parts.append(f"{label + ': ' if label else ''}{values}{_unreached(s, bool(varying))}")
    return f"{spec.label_of(metric)} median {'; '.join(parts)}" if parts else ""


def not_reached(s) -> str:
    """For a Summary of an optional output: "not reached within the run in k of n seeds", or ""
    when every seed reached it. Never worded as a divergence (NaN/inf is that)."""
    if not s.n_unreached:
        return ""
    return f"not reached within the run in {s.n_unreached} of {s.total} seed{'s' if s.total != 1 else ''}"


def _unreached(s, several: bool) -> str:
    phrase = not_reached(s)
    return "" if not phrase else (f" ({phrase})" if several else f"; {phrase}")


def evaluate_claim(spec: Spec, claim: Claim, rs: ResultSet, planned_seeds: int | None = None) -> list[Verdict]:
    """One verdict per config group (one, unless the claim has `per`)."""
    selected = rs.where(**claim.where)
    groups = selected.group_by(claim.per) if claim.per else {None: selected}
    verdicts = []
    for value, group in groups.items():
        label = f"{claim.per}={value_label(value)}" if claim.per else ""
        n_seeds = len(group.seeds)
        missing = max(0, (planned_seeds or n_seeds) - n_seeds)
        base = dict(experiment=spec.name, claim=claim.text, index=claim.index, group=label,
                    min_frac=claim.min_frac, missing=missing, n_seeds=n_seeds)
        base["xfail"] = (claim.xfail.get(value, "") if isinstance(claim.xfail, dict) else claim.xfail) or ""
        try:
            if claim.value is not None:
                values = numbers_of(claim.value(group), n_seeds)
                met = meets(values, claim.expect)
                got = interpret(met.reshape(()) if values.size == 1 else met, n_seeds)  # one number: one verdict
                numbers = _value_numbers(values, claim.expect)
                if claim.metric and group.optional(claim.metric) and len(group.configs) == 1:
                    numbers += _unreached(group.stats(claim.metric), False)  # seeds without a value: why
            else:
                got = interpret(claim.check(group), n_seeds)
                numbers = _numbers(group, claim.metric, spec)
        except NoRunsError as e:
            verdicts.append(Verdict(**base, verdict=INCONCLUSIVE, k=0, n=n_seeds, per_seed=True,
                                    detail=f"missing runs: {e}"))
            continue
        except Exception as e:  # the predicate is user code; its failure is reported as a verdict
            verdicts.append(Verdict(**base, verdict=ERROR, k=0, n=n_seeds, per_seed=True,
                                    detail=f"{type(e).__name__}: {e}"))
            continue
        if got is None:
            verdicts.append(Verdict(**base, verdict=INCONCLUSIVE, k=0, n=n_seeds, per_seed=True, numbers=numbers,
                                    detail="the check returned None: it cannot tell (or a `return` is missing)"))
            continue
        k, n, per_seed = got
        verdicts.append(Verdict(**base, verdict=decide(k, n, per_seed, claim.min_frac, missing, n_seeds),
                                k=k, n=n, per_seed=per_seed, numbers=numbers))
    return verdicts


def surprises(verdicts: list[Verdict]) -> tuple[list[Verdict], list[Verdict]]:
    """(unexpected, inconclusive): verdicts that differ from what the experiment expects (a claim
    that fails, an xfail claim that holds, a check that errs), and those that could not decide."""
    unexpected = [v for v in verdicts if v.expected is False]
    return unexpected, [v for v in verdicts if v.expected is None]


def evaluate(spec: Spec, rs: ResultSet, planned_seeds: int | None = None) -> list[Verdict]:
    out = []
    for claim in spec.claims:
        out += evaluate_claim(spec, claim, rs, planned_seeds)
    return out


def placeholder_results(spec: Spec, points_and_configs: list[tuple[dict, dict]], seeds: int = 4,
                        steps: int = 4096) -> ResultSet:
    """Synthetic results with the declared shapes, to dry-run claims before any real run."""
    rng = np.random.default_rng(0)
    records = []
    series_cache: dict = {}
    for point, cfg in points_and_configs:
        for seed in range(1, seeds + 1):
            scalars = {n: float(rng.uniform(1, 2)) for n, o in spec.outputs.items() if o.kind == "scalar"}
            if seed == 1:  # an optional output not reached: claims must cope with it before any run
                scalars.update({n: None for n, o in spec.outputs.items() if o.optional})

            def load(name, _seed=seed):
                if (name, _seed) not in series_cache:
                    series_cache[(name, _seed)] = np.linspace(2.0, 1.0, steps) + 0.01 * _seed
                return series_cache[(name, _seed)]

            records.append(Record(spec.name, point, cfg, seed, scalars, load))
    return ResultSet(records, {n: o.declared for n, o in spec.outputs.items()}, spec.name)


def dry_run(spec: Spec, points_and_configs: list[tuple[dict, dict]]) -> None:
    """Fail at load, before any run, when a claim names an unknown output/parameter or raises."""
    rs = placeholder_results(spec, points_and_configs)
    for claim in spec.claims:
        try:
            selected = rs.where(**claim.where)
            if not selected.records:
                raise SpecError(f"{spec.path.name}: CLAIMS[{claim.index}]['where']: {claim.where} matches no config "
                                f"of the sweep. Fix: use values from SWEEP/PARAMS")
            groups = selected.group_by(claim.per) if claim.per else {None: selected}
            for group in groups.values():
                if claim.value is not None:
                    meets(numbers_of(claim.value(group), len(group.seeds)), claim.expect)
                else:
                    interpret(claim.check(group), len(group.seeds))
        except SpecError:
            raise
        except ResultError as e:
            raise SpecError(f"{spec.path.name}: CLAIMS[{claim.index}] ({claim.text[:50]!r}): {e}") from None
        except Exception as e:
            raise SpecError(f"{spec.path.name}: CLAIMS[{claim.index}] ({claim.text[:50]!r}) raised "
                            f"{type(e).__name__}: {e} when checked against placeholder results with the declared "
                            f"outputs. Fix the check so it only uses declared outputs and parameters") from None


def validate(spec: Spec, sel) -> Spec:
    """Full load (import, CLAIMS) plus a dry run of every claim on placeholder results."""
    from expost.runs.plan import configs, overrides

    full = spec if spec.module is not None else load_full(spec.path)
    overrides(full, sel)  # type-check --set/--where against the parameters
    # Claims are a property of the file: dry-run them on the declared sweep, not the selection.
    dry_run(full, configs(full))
    return full


def check(ws, spec: Spec, runs: list, sel) -> list:
    """Evaluate the claims of one (fully loaded) experiment on its cached results; remember verdicts."""
    return checked(ws, spec, runs, sel)[2]


def checked(ws, spec: Spec, runs: list, sel) -> tuple[Spec, ResultSet, list[Verdict]]:
    """`check`, with the imported spec and the results it evaluated (for the seed budget)."""
    from expost.runs.cache import Cache
    from expost.runs.results import from_cache

    full = validate(spec, sel)
    rs = from_cache(Cache(ws.cache_dir), full, runs)
    n_planned = len({r.seed for r in runs})
    verdicts = evaluate(full, rs, n_planned)
    path = ws.cache.claims(spec.name)
    try:  # remembered for `expost list`; a read-only or full cache only forgets them
        atomic_write_text(path, json.dumps({"source": spec.file_hash, "seeds": n_planned,
                                            "verdicts": [v.as_dict() for v in verdicts]}, indent=1, sort_keys=True))
    except OSError:
        pass
    return full, rs, verdicts


def known_verdicts(ws, spec: Spec) -> list[dict] | None:
    """Verdicts from the last `check` of this exact source, if any."""
    path = ws.cache.claims(spec.name)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data["verdicts"] if data.get("source") == spec.file_hash else None
