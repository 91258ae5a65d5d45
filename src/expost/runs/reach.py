"""The code a run computes with: what `run` / `run_batch` reach, transitively, normalised.

A run's cache key hashes this code and nothing else of its file, so editing a claim, a figure
function, a comment, a docstring or the formatting reruns nothing, while editing a function that
`run` calls, or a constant it reads, reruns every run of the experiment.

Each top-level statement of the experiment and of the workspace modules it imports is a part,
named by what it defines ("train", "LR") or, for module-level code, by where it is. A part
counts when `run`/`run_batch` reach it by name (through other parts, across `from _mod import f`),
and also wherever reachability is unsure:
- module-level code with possible side effects (calls, loops, assignments to attributes or
  items, decorated definitions; not `if __name__ == "__main__":`), which runs on import; an
  assignment that only computes a plain value (`KS = list(range(1, 6))`: what runs/spec_eval.py
  accepts, over constants that are such values too) has none, and counts only when reached;
- a local module used as a value (`import _mod` then `_mod.f`), `from _mod import *`, or reached
  code that calls `globals`, `vars`, `eval`, `exec`, `getattr` or `__import__`: its whole module.
Normalised: each part is `ast.dump` without docstrings, so comments, docstrings and formatting do
not count.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from expost.files import signature
from expost.runs.spec_eval import Module as Values, is_main_guard

ROOTS = ("run", "run_batch")
DYNAMIC = {"globals", "vars", "eval", "exec", "getattr", "__import__", "locals"}


@dataclass
class Part:
    label: str  # what it defines, or "module-level code (line N)"
    digest: str
    defines: tuple[str, ...]
    uses: frozenset
    always: bool  # runs on import with possible side effects: counts even when not reached
    dynamic: bool  # uses globals()/eval/...: its whole module counts


@dataclass
class Module:
    path: Path
    parts: list[Part] = field(default_factory=list)
    local_imports: dict = field(default_factory=dict)  # alias -> (module stem, imported name or None for the module)
    star: list = field(default_factory=list)  # local modules imported with *


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _calls_outside_functions(node: ast.AST) -> bool:
    """Does evaluating this statement at import call anything (lambdas and defs are not run)?"""
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(n, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        todo.extend(ast.iter_child_nodes(n))
    return False


def _part(node: ast.stmt, local: set[str], module: Module, values: Values) -> Part | None:
    if is_main_guard(node) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        return None
    dump = ast.dump(node)
    defines: tuple[str, ...] = ()
    always = True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        defines, always = (node.name,), bool(node.decorator_list)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        always = False
        defines = _register_imports(node, local, module)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if all(isinstance(t, ast.Name) for t in targets):
            defines = tuple(t.id for t in targets)
            always = node.value is not None and _calls_outside_functions(node.value) and not values.pure(node)
    else:  # if/try/with/for at module level: runs on import; whatever it binds may be reached
        defines = _bound(node, local, module)
    label = ", ".join(defines) if defines else "module-level code"
    return Part(label, hashlib.sha256(dump.encode()).hexdigest(), defines, frozenset(_names_used(node)), always,
                bool(_names_used(node) & DYNAMIC))


def _register_imports(node, local: set[str], module: Module) -> tuple[str, ...]:
    """The names an import binds; local modules are remembered (alias -> module, name)."""
    names: tuple[str, ...] = ()
    for alias in node.names:
        if alias.name == "*":
            if isinstance(node, ast.ImportFrom) and node.module in local:
                module.star.append(node.module)
            continue
        name = alias.asname or alias.name.split(".")[0]
        names += (name,)
        if isinstance(node, ast.Import) and alias.name.split(".")[0] in local:
            module.local_imports[name] = (alias.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in local:
            module.local_imports[name] = (node.module, alias.name)
    return names


def _bound(node: ast.stmt, local: set[str], module: Module) -> tuple[str, ...]:
    """Every name a compound statement binds at module level (not inside functions it defines)."""
    names: list[str] = []
    todo = list(ast.iter_child_nodes(node))
    while todo:
        n = todo.pop(0)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(n.name)
            continue
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            names += _register_imports(n, local, module)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.append(n.id)
        todo.extend(ast.iter_child_nodes(n))
    return tuple(dict.fromkeys(names))


@functools.lru_cache(maxsize=256)
def _module(path: Path, sig: tuple, local: frozenset) -> Module:
    tree = _StripDocstrings().visit(ast.parse(path.read_text(), filename=str(path)))
    module = Module(path)
    values = Values(tree)
    seen: dict[str, int] = {}
    for node in tree.body:
        part = _part(node, set(local), module, values)
        if part is not None:
            seen[part.label] = seen.get(part.label, 0) + 1
            if seen[part.label] > 1:  # a name defined twice, or several module-level statements
                part.label = f"{part.label} #{seen[part.label]}"
            module.parts.append(part)
    return module


def _load(folder: Path, stem: str) -> Module | None:
    path = folder / f"{stem}.py"
    sig = signature(path)
    if sig is None:
        return None
    local = frozenset(p.stem for p in folder.glob("*.py"))
    return _module(path, sig, local)


def reached_parts(path: Path) -> dict[str, str]:
    """{"module.label": digest} of every part a run of the experiment at `path` computes with."""
    path = Path(path)
    folder = path.parent
    out: dict[str, str] = {}
    whole: set[str] = set()
    wanted: list[tuple[str, str]] = []  # (module stem, name)
    started: set[str] = set()

    def start(stem: str) -> Module | None:
        module = _load(folder, stem)
        if module is None or stem in started:
            return module
        started.add(stem)
        for part in module.parts:
            if part.always:
                take(stem, module, part)
        for target, _ in module.local_imports.values():  # importing it runs its module-level code
            start(target)
        for star in module.star:
            whole.add(star)
            start(star)
        return module

    def take(stem: str, module: Module, part: Part) -> None:
        key = f"{stem}.{part.label}"
        if key in out:
            return
        out[key] = part.digest
        if part.dynamic:
            take_whole(stem)
        for name in part.uses:
            wanted.append((stem, name))

    def take_whole(stem: str) -> None:
        if stem in whole:
            return
        whole.add(stem)
        module = start(stem)
        for part in module.parts if module else ():
            take(stem, module, part)

    start(path.stem)
    wanted += [(path.stem, root) for root in ROOTS]
    while wanted:
        stem, name = wanted.pop()
        module = start(stem)
        if module is None:
            continue
        hits = [p for p in module.parts if name in p.defines]
        for part in hits:
            take(stem, module, part)
        if name in module.local_imports:
            target, attr = module.local_imports[name]
            if start(target) is None:
                continue
            if attr is None:  # the module itself, used as a value: all of it
                take_whole(target)
            else:
                wanted.append((target, attr))
        elif not hits:
            for star in module.star:  # may come from a `from _mod import *`
                wanted.append((star, name))
    return dict(sorted(out.items()))
