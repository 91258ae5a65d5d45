"""Claim verdicts remembered by their inputs, so that a render whose claims, experiment files and
results did not change imports no experiment (nor torch, nor anything else the script imports).

The key (freshness.verdicts_key) covers every byte of the experiment's files (CLAIMS included),
the selection, the planned seeds, the exact cache records evaluated (their sha256), expost's code,
the python and the installed packages. An entry holds the verdicts and what a post shows of each
claim (claims.ClaimText), behind its sha256 (files.write_sealed): a damaged entry is evaluated anew.

Only an evaluation in which every claim gave a verdict is remembered. A claim that raised (ERROR)
may have failed for a reason outside the key (memory, a file, the machine), so the next render
evaluates it again and reports it again if it still fails. `expost check` never reads these.
"""

from __future__ import annotations

import contextlib
import json
from typing import Callable

from expost.files import read_sealed, write_sealed
from expost.freshness import verdicts_key
from expost.layout import CacheLayout
from expost.runs.claims import ERROR, ClaimText, Verdict, claim_texts, evaluate, validate
from expost.runs.results import ResultSet, identity
from expost.runs.spec import Spec


class Imported:
    """A post's experiments, each imported and validated (claims.validate) the first time
    something needs its module (a verdict or a figure function the caches lack), once per render."""

    def __init__(self, specs: dict[str, Spec], sel):
        self.specs, self.sel, self.done = specs, sel, {}

    def __call__(self, name: str) -> Spec:
        if name not in self.done:
            self.done[name] = validate(self.specs[name], self.sel)
        return self.done[name]


def judge(paths: CacheLayout, spec: Spec, sel, planned_seeds: int, rs: ResultSet,
          imported: Callable[[str], Spec], fresh: bool = False) -> tuple[list[Verdict], list[ClaimText]]:
    """The verdicts of an experiment's claims on `rs`, and the claims' texts: the remembered ones
    when every input is the same (not when `fresh`), else evaluated on the imported experiment."""
    key = _key(spec, sel, planned_seeds, rs)
    if key is not None and not fresh:
        found = _read(paths.verdicts(key))
        if found is not None:
            return found
    full = imported(spec.name)
    verdicts, texts = evaluate(full, rs, planned_seeds), claim_texts(full)
    key = _key(full, sel, planned_seeds, rs)  # by the files evaluated, should they have changed since planning
    if key is not None and not any(v.verdict == ERROR for v in verdicts):
        with contextlib.suppress(OSError):  # a read-only or full cache only evaluates again next time
            write_sealed(paths.verdicts(key), _dumps(verdicts, texts))
    return verdicts, texts


def _key(spec: Spec, sel, planned_seeds: int, rs: ResultSet) -> str | None:
    records = identity(rs)
    if records is None:  # results not read from the cache: nothing vouches for them
        return None
    selection = {"seeds": sel.seeds, "set": sel.set, "where": sel.where, "device": sel.device}
    return verdicts_key(spec.name, spec.file_hash, selection, planned_seeds, records)


def _dumps(verdicts: list[Verdict], texts: list[ClaimText]) -> bytes:
    return json.dumps({"verdicts": [v.as_dict() for v in verdicts],
                       "claims": [[c.index, c.text, c.quantitative] for c in texts]}, sort_keys=True).encode()


def _read(path) -> tuple[list[Verdict], list[ClaimText]] | None:
    data = read_sealed(path)
    if data is None:
        return None
    try:
        found = json.loads(data)
        return [Verdict(**v) for v in found["verdicts"]], [ClaimText(*c) for c in found["claims"]]
    except (ValueError, KeyError, TypeError):  # sealed but not what this version writes
        return None
