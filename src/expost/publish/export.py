"""Export stage: a rendered post folder -> forum post.md, gist/ bundle and manifest.json.

Reads what the render stage wrote (post.md with relative figure links, figures/, post.html)
plus the results it was rendered from; writes:
- gist/: flat files only (README.md, the experiment scripts and the local modules they import,
  per-seed results as CSV and JSON, the figures, requirements.txt, manifest.json);
- post.md: rewritten for the LessWrong / Alignment Forum markdown editor (absolute image URLs);
- manifest.json: versions, platform, git state of the inputs, command, seeds, configs, cache keys,
  per-run wall time, claim verdicts and the sha256 of every bundle file. Sorted and stable.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from expost import __version__
from expost.files import sha256_file
from expost import numerics
from expost.errors import PublishError
from expost.runs.results import series_digest
from expost.runs.spec import local_sources

MANIFEST_VERSION = 1
WARN_BYTES = 1_000_000
MAX_BYTES = 10_000_000
GISTFILE = re.compile(r"^gistfile\d+", re.IGNORECASE)
REPRODUCE = Path(__file__).parent / "standalone" / "reproduce.py"  # copied into every gist as is


@dataclass
class Exported:
    warnings: list[str] = field(default_factory=list)


def dist_version(name: str) -> str | None:
    """The installed version, or None: not installed, or a broken dist-info folder (no METADATA:
    importlib_metadata, once something imports it, raises MetadataNotFound there)."""
    try:
        return metadata.version(name)
    except Exception:
        return None


# The packages whose version decides a bundle's bytes (figures, markdown, HTML, maths, highlighted
# code), recorded in the manifest beside python and expost's version and code hash.
BUNDLE_PACKAGES = ("torch", "numpy", "matplotlib", "pillow", "jinja2", "markupsafe", "markdown-it-py",
                   "mdit-py-plugins", "pygments", "latex2mathml")


def versions() -> dict:
    from expost.freshness import code_hash

    return {"python": platform.python_version(), **{name: dist_version(name) for name in BUNDLE_PACKAGES},
            "expost": __version__, "expost_code_sha256": code_hash()}


def _csv(records, axes: list[str], scalars: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*axes, "seed", *scalars])
    for r in records:
        w.writerow([*(r.config[a] for a in axes), r.seed, *(repr(float(r.scalars[s])) if isinstance(r.scalars[s], float)
                                                          else r.scalars[s] for s in scalars)])
    return buf.getvalue()


def _by_config(records) -> list:
    """Runs in a stable order for the per-seed files: by config, then seed."""
    return sorted(records, key=lambda r: (json.dumps(r.point, sort_keys=True), r.seed))


def _results_json(rs, spec) -> str:
    runs = []
    for r in _by_config(rs.records):
        runs.append({"config": r.config, "seed": r.seed, "scalars": r.scalars, "key": r.key,
                     "nonfinite": list(r.nonfinite),
                     "series_sha256": {n: series_digest(r.load_series(n)) for n, o in spec.outputs.items() if o.kind == "series"}})
    return json.dumps({"experiment": spec.name, "outputs": {n: f"{o.kind}: {o.description}" for n, o in spec.outputs.items()},
                       "runs": runs}, sort_keys=True, indent=1) + "\n"


def distributions_of(module: str) -> list[str]:
    """The installed distributions that provide a top-level module. The distribution of the same
    name, when its top_level.txt or RECORD lists the module, answers at once (torch, numpy, jinja2);
    others (markdown_it from markdown-it-py, yaml from PyYAML) are looked up among all of them."""
    try:
        dist = metadata.distribution(module)
    except (metadata.PackageNotFoundError, ValueError):
        dist = None
    if dist is not None:
        top = dist.read_text("top_level.txt")
        if top is not None and module in top.split():
            return [dist.metadata["Name"]]
        record = dist.read_text("RECORD") or ""
        if re.search(rf"^{re.escape(module)}(/|\.py,|\.[^/,]*\.(so|pyd),)", record, re.M):
            return [dist.metadata["Name"]]
    return sorted(set(_all_distributions().get(module, ())))


@functools.lru_cache(maxsize=1)
def _all_distributions() -> dict:
    return metadata.packages_distributions()  # reads every distribution's RECORD: ~0.1 s


def _requirements(specs: dict) -> tuple[str, list[str]]:
    """requirements.txt: every distribution the experiments import (their files and the local
    modules they import, imports inside functions included), pinned to the installed version;
    plus warnings for imports that no installed distribution provides."""
    from expost.runs.spec import _imported

    local, modules = set(), set()
    for spec in specs.values():
        for src in local_sources(spec.path, spec.path.parent):
            local.add(src.parent.name if src.name == "__init__.py" else src.stem)
            modules.update(_imported(src))
    modules -= local | set(sys.stdlib_module_names) | {"__future__"}
    pins, missing = set(), []
    for module in sorted(modules):
        dists = [(d, dist_version(d)) for d in distributions_of(module)]
        if not any(v for _, v in dists):
            missing.append(module)
        pins.update(f"{d}=={v.split('+')[0]}" for d, v in dists if v)
    lines = ["# what the experiments import, at the versions that produced these results "
             f"(python {platform.python_version()})", *sorted(pins, key=str.lower)]
    lines += [f"# {m}: imported, but not installed where these results were made; install it by hand" for m in missing]
    warnings = [f"gist requirements.txt: no installed package provides `import {m}`; a reader must install it by hand"
                for m in missing]
    return "\n".join(lines) + "\n", warnings


def _run_it(specs: dict, plans: dict) -> str:
    """The gist README's last section: how to rerun it all from the gist alone."""
    seeds = sorted({len({r.seed for r in plans[name]}) for name in specs})
    total = sum(len(plans[name]) for name in specs)
    commands = [("pip install -r requirements.txt", "")]
    commands += [(f"python {name}.py", f"one run of {name}: its default configuration, seed 1") for name in specs]
    commands += [("python reproduce.py --seeds 2", "seeds 1-2 of every configuration, compared with results-*.json"),
                 ("python reproduce.py", f"all {total} runs ({' / '.join(map(str, seeds))} seeds each)")]
    width = max(len(c) for c, _ in commands) + 2
    block = [f"{c.ljust(width)}# {why}" if why else c for c, why in commands]
    files = " ".join(f"`results-{name}.csv` and `results-{name}.json` hold each run's config, seed and numbers."
                     for name in specs)
    return "\n".join(["## Run it", "", "Everything needed to rerun this post's experiments is in this gist, without "
                      "expost:", "", "```bash", *block, "```", "",
                      "`reproduce.py` seeds each run as expost did and reports it as identical, within tolerance "
                      f"(relative 1e-5) or drifted. {files} `manifest.json` records the versions, the commit and the "
                      "command that made them.", ""])


def _add(files: dict, name: str, origin: str) -> None:
    if GISTFILE.match(name):
        raise PublishError(f"gist file name {name!r} ({origin}) looks like GitHub's own gistfileN names; rename it")
    if name in files:
        raise PublishError(f"gist bundle: {files[name]} and {origin} would both be named {name!r} in the flat gist; "
                           "rename one of them")
    files[name] = origin


def export(ws, pp, specs: dict, rsets: dict, verdicts: dict, seeds: dict, command: str, stage: Path,
           image_url, device: str = "cpu", git: dict | None = None) -> Exported:
    """Write gist/, manifest.json and the forum post.md into the staged post folder."""
    from expost.publish.forum import as_details, to_forum_markdown

    out = Exported()
    gist = stage / "gist"
    gist.mkdir()
    names: dict[str, str] = {}
    relative_md = (stage / "post.md").read_text(encoding="utf-8")

    _add(names, "README.md", "the post")
    # The forum's text (its repairs, checks and published figure URLs); a figure not published yet
    # is linked by its name in the flat gist; GitHub shows `+++` sections as <details>.
    readme, _ = to_forum_markdown(relative_md, image_url, name="README.md", unpublished=lambda src: Path(src).name)
    readme = as_details(readme).rstrip("\n") + "\n\n" + _run_it(specs, pp.plans)
    (gist / "README.md").write_text(readme, encoding="utf-8")
    copied: set[Path] = set()  # experiments may share a helper module
    for name, spec in specs.items():
        for src in local_sources(spec.path, spec.path.parent):
            if src in copied:
                continue
            copied.add(src)
            _add(names, src.name, ws.rel(src))
            shutil.copyfile(src, gist / src.name)
        rs = rsets[name]
        axes = spec.axes
        scalars = [n for n, o in spec.outputs.items() if o.kind == "scalar"]
        records = _by_config(rs.records)
        for fname, text in ((f"results-{name}.csv", _csv(records, axes, scalars)),
                            (f"results-{name}.json", _results_json(rs, spec))):
            _add(names, fname, "per-seed results")
            (gist / fname).write_text(text, encoding="utf-8")
    figs = stage / "figures"
    for fig in sorted(figs.iterdir()) if figs.is_dir() else []:
        _add(names, fig.name, f"figures/{fig.name}")
        shutil.copyfile(fig, gist / fig.name)
    _add(names, "requirements.txt", "pinned versions")
    requirements, warnings = _requirements(specs)
    out.warnings += warnings
    (gist / "requirements.txt").write_text(requirements, encoding="utf-8")
    _add(names, "reproduce.py", "expost's standalone rerun script")
    shutil.copyfile(REPRODUCE, gist / "reproduce.py")
    _add(names, "manifest.json", "the manifest")

    forum, warnings = to_forum_markdown(relative_md, image_url)
    out.warnings += warnings
    title, forum = split_title(forum)
    (stage / "post.md").write_text(forum, encoding="utf-8")
    (stage / "title.txt").write_text(title + "\n", encoding="utf-8")

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "post": {"name": pp.post.name, "title": pp.post.title, "template": ws.rel(pp.post.path)},
        "command": command,
        "versions": versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(),
                     "python_implementation": sys.implementation.name, "device": device,
                     "cpu_numerics": numerics.describe()},
        "git": git,  # the git state of the post's inputs (spine computes it once per render)
        "experiments": {
            name: {"files": [ws.rel(p) for p in local_sources(spec.path, spec.path.parent)],
                   "source_hash": spec.source_hash, "seeds": seeds[name],
                   "configs": _configs(pp.plans[name]),
                   # per-run timings stay in the cache: a rebuild must not change a committed file
                   "runs": [{"config": r.label, "seed": r.seed, "key": r.key, **_artifacts(rsets[name], r.key)}
                            for r in pp.plans[name]],
                   **_profile(spec, pp.profiles.get(name))}
            for name, spec in specs.items()},
        "claims": [v.as_dict() for name in specs for v in verdicts[name]],
    }
    figure_files = sorted(figs.iterdir()) if figs.is_dir() else []
    manifest["files"] = {**{f"gist/{p.name}": sha256_file(p) for p in sorted(gist.iterdir())},
                         **{f"figures/{p.name}": sha256_file(p) for p in figure_files},
                         "post.html": sha256_file(stage / "post.html"), "title.txt": sha256_file(stage / "title.txt")}
    # The gist's copy leaves out post.md: its figure links are pinned to the gist's own commit, so
    # its hash inside the gist would change the gist, which would change the links, and so on.
    (gist / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    manifest["files"]["post.md"] = sha256_file(stage / "post.md")
    (stage / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    out.warnings += check_gist(gist)
    return out


def split_title(md: str) -> tuple[str, str]:
    """(title, body) of the forum post.md: LessWrong takes the title in a field of its own, so a
    leading `# Title` heading would show it twice; it goes to title.txt, to paste into that field."""
    first, _, rest = md.partition("\n")
    if not first.startswith("# "):
        return "", md
    return first[2:].strip(), rest.lstrip("\n")


def _profile(spec, name: str | None) -> dict:
    """The manifest's record of the PROFILES entry an experiment ran under (nothing without one)."""
    return {"profile": {"name": name, "values": spec.profiles[name]}} if name else {}


def _configs(runs) -> list[dict]:
    seen = []
    for r in runs:
        if r.cfg not in seen:
            seen.append(r.cfg)
    return seen


def _artifacts(rs, key: str) -> dict:
    """The manifest's list of the files a run wrote to EXPOST_ARTIFACTS (kept in the cache with it)."""
    found = next((r.artifacts for r in rs.records if r.key == key), None)
    return {"artifacts": found} if found else {}


def check_gist(gist: Path) -> list[str]:
    """Flat, no oversized files. Returns warnings; raises for what a gist cannot hold."""
    warnings = []
    for p in sorted(gist.iterdir()):
        if p.is_dir():
            raise PublishError(f"gist bundle {gist}: {p.name}/ is a folder; gists hold flat files only")
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise PublishError(f"gist bundle: {p.name} is {size / 1e6:.1f} MB, over the 10 MB limit; "
                               "shrink it (fewer seeds in the results, smaller figures)")
        if size > WARN_BYTES:
            warnings.append(f"gist bundle: {p.name} is {size / 1e6:.1f} MB (over 1 MB); the gist web view may truncate it")
    return warnings
