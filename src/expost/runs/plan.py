"""Plan stage: find the experiments, expand sweeps into configs, apply --set / --where / --seeds,
and key every run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from expost.errors import ConfigError, SpecError
from expost.freshness import StaticSpecs, canonical, digest, env_fingerprint, run_key
from expost.layout import Layout
from expost.runs.spec import Spec, discover, type_fits

# A sweep larger than this needs --yes: a typo in a sweep should not start a week of runs.
MAX_RUNS_WITHOUT_CONFIRM = 5000
# Plans are held in memory (about 1 KB a run): larger ones are refused, --yes or not.
MAX_RUNS = 200_000


@dataclass(frozen=True)
class PlannedRun:
    """One (experiment, resolved config, seed) and its cache key."""

    experiment: str
    point: tuple  # sweep-axis values as sorted (key, value) pairs: the run's identity within a sweep
    config: tuple  # resolved config as sorted (key, value) pairs
    seed: int
    key: str
    source_hash: str
    config_hash: str
    env_hash: str

    @property
    def cfg(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config}

    @property
    def point_dict(self) -> dict:
        return dict(self.point)

    @property
    def label(self) -> str:
        return config_label(self.point_dict)

    @property
    def title(self) -> str:
        """The run as messages name it: `scurves [rank=1] seed 3`."""
        return f"{self.experiment} [{self.label}] seed {self.seed}"

    @property
    def slot(self) -> str:
        """Identity that survives edits: experiment, sweep point and seed (used by --explain)."""
        return f"{canonical(self.point_dict)}|{self.seed}"


def with_seed(run: PlannedRun, seed: int) -> PlannedRun:
    """The same experiment and config with another seed (its own key)."""
    return PlannedRun(run.experiment, run.point, run.config, seed,
                      run_key(run.experiment, run.source_hash, run.config_hash, seed, run.env_hash),
                      run.source_hash, run.config_hash, run.env_hash)


def config_label(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()) or "default"


def parse_assignments(pairs: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} lr=0.01")
        out[key.strip()] = value.strip()
    return out


def coerce(spec: Spec, key: str, text: str, flag: str):
    """Parse a command-line value to the type of the parameter's default."""
    if key not in spec.params:
        raise ConfigError(f"{flag} {key}=...: {spec.name} has no parameter {key!r}. "
                          f"Allowed: {', '.join(sorted(spec.params))}")
    default = spec.params[key]
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value = low in ("true", "1", "yes")
        elif isinstance(default, int):
            value = int(text)
        elif isinstance(default, float):
            value = float(text)
        elif isinstance(default, list):
            value = json.loads(text)
            if not isinstance(value, list):
                raise ValueError
        else:
            value = text
    except ValueError:
        raise ConfigError(f"{flag} {key}={text}: {key} is a {type(default).__name__} "
                          f"(default {default!r}) in {spec.name}; give a value of that type") from None
    if not type_fits(default, value):
        raise ConfigError(f"{flag} {key}={text}: expected a {type(default).__name__} like {default!r}")
    return value


def count_at_least(spec: Spec, seeds: int | None, overrides: dict, where: dict, limit: int) -> int:
    """The number of runs of a plan, counted without building it; once it passes `limit` the
    count stops there (a sweep of 10**20 points answers at once, in constant memory)."""
    n = spec.seeds if seeds is None else seeds
    fixed = {**spec.params, **overrides}
    if any(k not in spec.axes and fixed.get(k) != v for k, v in where.items()):
        return 0  # --where on a fixed parameter that does not match: no config
    biggest = 0
    for block in spec.sweep or [{}]:
        size = 1
        for axis, values in block.items():
            size *= sum(1 for v in values if axis not in where or v == where[axis]) if axis not in overrides else 1
        biggest = max(biggest, size)
    if biggest * n > limit:  # duplicates across blocks cannot bring it below its largest block
        return biggest * n
    count = 0
    for _ in _iter_configs(spec, overrides, where):
        count += n
        if count > limit:
            break
    return count


def configs(spec: Spec, overrides: dict | None = None, where: dict | None = None) -> list[tuple[dict, dict]]:
    """(point, resolved config) for every sweep point, after overrides and selection."""
    return list(_iter_configs(spec, overrides or {}, where or {}))


def _iter_configs(spec: Spec, overrides: dict, where: dict):
    axes = spec.axes
    seen: set = set()
    for point in spec.iter_points():
        cfg = {**spec.params, **point, **overrides}
        # A run's identity is its value on every axis (defaults filled in), so that overlapping
        # sweep blocks such as {"rank": [1, 2]} and {"lr": [...]} share their common config.
        point = {a: cfg[a] for a in axes}
        if any(cfg[k] != v for k, v in where.items()):
            continue
        frozen = repr(sorted(cfg.items()))
        if frozen not in seen:
            seen.add(frozen)
            yield point, cfg


def plan(spec: Spec, seeds: int | None = None, overrides: dict | None = None, where: dict | None = None,
         device: str = "cpu", seed_list: list[int] | None = None) -> list[PlannedRun]:
    """Every run of one experiment, keyed. Seeds are 1..N."""
    n = spec.seeds if seeds is None else seeds
    if n < 1:
        raise ConfigError(f"--seeds {n}: must be at least 1")
    if "device" in spec.params:
        overrides = {**(overrides or {}), "device": device}
    env = env_fingerprint(device)
    env_hash = digest(env)
    runs = []
    for point, cfg in configs(spec, overrides, where):
        config_hash = digest(cfg)
        for seed in (seed_list or range(1, n + 1)):
            runs.append(PlannedRun(spec.name, _freeze(point, sort=False), _freeze(cfg), seed,
                                   run_key(spec.name, spec.source_hash, config_hash, seed, env_hash),
                                   spec.source_hash, config_hash, env_hash))
    return runs


def _freeze(d: dict, sort: bool = True) -> tuple:
    items = [(k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()]
    return tuple(sorted(items) if sort else items)


@dataclass
class Selection:
    """What the user asked for on the command line."""

    names: tuple = ()
    seeds: int | None = None
    set: dict = field(default_factory=dict)  # raw strings, coerced per experiment
    where: dict = field(default_factory=dict)
    device: str = "cpu"
    profile: str | None = None  # --profile or a post's front matter: every experiment must define it
    default_profile: str | None = None  # expost.toml's profile: used by the experiments that define it


def load_specs(ws: Layout, names=()) -> list[Spec]:
    """The named experiments' static specs (all of them when no names are given)."""
    names = tuple(dict.fromkeys(names))  # `expost run toy toy` means toy once
    paths = discover(ws.experiments_dir)
    by_name = {p.stem: p for p in paths}
    for n in names:
        if n not in by_name:
            raise SpecError(f"no experiment {n!r} in {ws.rel(ws.experiments_dir)}/. "
                            f"Available: {', '.join(by_name) or '(none)'}")
    chosen = [by_name[n] for n in names] if names else paths
    specs = StaticSpecs(ws).load(chosen)
    seen = {}
    for s in specs:
        if s.name in seen:
            raise SpecError(f"{s.path.name}: duplicate experiment name {s.name!r}. Rename one of the files.")
        seen[s.name] = s
    return specs


def profile_of(spec: Spec, sel: Selection) -> str | None:
    """The profile an experiment runs under: the one asked for (it must exist), else expost.toml's
    default where the experiment defines it, else none."""
    if sel.profile is not None:
        if sel.profile not in spec.profiles:
            have = ", ".join(spec.profiles) or "none"
            raise ConfigError(f"profile {sel.profile!r}: {spec.name} has no such profile (its PROFILES: {have}). "
                              f"Add it to PROFILES in {spec.path.name}, or leave {spec.name} out of this command")
        return sel.profile
    return sel.default_profile if sel.default_profile in spec.profiles else None


def with_settings(sel: Selection, settings: dict) -> Selection:
    """expost.toml's `profile` as the default profile (used where an experiment defines it)."""
    default = settings.get("profile")
    return replace(sel, default_profile=default) if default and sel.default_profile is None else sel


def profiled(spec: Spec, sel: Selection) -> Spec:
    """The spec as its profile sets it: the profile's values replace the defaults in PARAMS (the
    sweep still varies its axes; --set still wins)."""
    name = profile_of(spec, sel)
    return replace(spec, params={**spec.params, **spec.profiles[name]}) if name else spec


def overrides(spec: Spec, sel: Selection) -> tuple[dict, dict]:
    over = {k: coerce(spec, k, v, "--set") for k, v in sel.set.items()}
    where = {k: coerce(spec, k, v, "--where") for k, v in sel.where.items()}
    return over, where


def plan_runs(specs: list[Spec], sel: Selection, confirm_large: bool = True) -> dict[str, list[PlannedRun]]:
    """Every planned run, keyed. The plan's size is counted first, without building it: over
    MAX_RUNS_WITHOUT_CONFIRM runs needs confirmation (--yes), over MAX_RUNS is refused."""
    limit = MAX_RUNS_WITHOUT_CONFIRM if confirm_large else MAX_RUNS
    specs = [profiled(spec, sel) for spec in specs]
    sizes = {}
    for spec in specs:
        over, where = overrides(spec, sel)
        sizes[spec.name] = count_at_least(spec, sel.seeds, over, where, limit - sum(sizes.values()))
        if sum(sizes.values()) > limit:
            break
    total = sum(sizes.values())
    if total > MAX_RUNS:
        raise ConfigError(f"this plan has more than {MAX_RUNS} runs ({', '.join(f'{n}: {c}+' for n, c in sizes.items())}); "
                          "expost holds a plan in memory, so split it: narrow it with --where/--seeds, or "
                          "shrink SWEEP/SEEDS")
    if confirm_large and total > MAX_RUNS_WITHOUT_CONFIRM:
        shown = ", ".join(f"{n}: {c}" for n, c in sizes.items())
        raise ConfigError(f"this plan has more than {MAX_RUNS_WITHOUT_CONFIRM} runs ({shown}, counted so far). "
                          "Narrow it with --where/--seeds, or pass --yes to run them all.")
    plans = {}
    for spec in specs:
        over, where = overrides(spec, sel)
        runs = plan(spec, sel.seeds, over, where, sel.device)
        if not runs and where:
            raise ConfigError(f"--where {', '.join(f'{k}={v}' for k, v in sel.where.items())}: no config of "
                              f"{spec.name} matches. Sweep points: "
                              + "; ".join(str(p) for p in spec.points()))
        plans[spec.name] = runs
    return plans
