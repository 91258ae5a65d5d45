"""`expost adopt FILE`: turn existing research code into an experiment in experiments/.

A stage of its own: it reads a user's script (cells, argparse, a config dataclass) or notebook,
decides with `ast` what its parameters are and what it logs, and writes experiments/NAME.py
(and a starter post, templates/NAME.md.j2). It never overwrites a file, and proves what it wrote
is a valid experiment with the static spec loader; it runs nothing.

    adopted = adopt(workspace_root, "grokking.py")
    adopted.written, adopted.changed, adopted.undecided
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from expost.adopt import write
from expost.adopt.edits import Edits
from expost.adopt.outputs import Ctx, Output, Scan, list_bindings, wandb_names
from expost.adopt.params import Found, Maker, Param, find, is_main_guard, module_names
from expost.adopt.source import Source, read
from expost.errors import AdoptError, SpecError, WorkspaceError

RESERVED = ("PARAMS", "SWEEP", "SEEDS", "OUTPUTS", "CLAIMS", "run", "run_batch", "Logged", "logged")
HEADING = re.compile(r"^#\s*#+\s+(\S.*)$")  # a markdown heading in a commented markdown cell
SETUP_CALLS = ("sys.path", "os.environ", "matplotlib.use", "warnings.", "torch.set_default")


@dataclass
class Adopted:
    """What `adopt` wrote and what the user should look at."""

    experiment: Path
    post: Path | None
    params: list[str]
    outputs: list[str]
    changed: list[str] = field(default_factory=list)  # what it decided and changed in the code
    undecided: list[str] = field(default_factory=list)  # what it could not decide: the user's to check

    @property
    def written(self) -> list[Path]:
        return [p for p in (self.experiment, self.post) if p is not None]


@dataclass
class Plan:
    src: Source
    name: str
    found: Found
    outputs: list[Output]
    edits: Edits
    place: dict  # cells: top-level statement -> "head" | "taken" | "guard" | "run" | "doc"
    moved: list[ast.stmt]  # the statements whose code becomes run()'s body
    aliases: dict  # "torch" / "numpy" / "random" -> the name it is imported as
    wandb: str | None
    docstring: list[str]
    docstring_end: int
    header_after: int  # function shape: the line after which PARAMS and the rest go
    changed: list[str]
    undecided: list[str]
    imports: list[str] = field(default_factory=list)  # imports the adopted code needs and the script lacked

    @property
    def params(self) -> list[Param]:
        return self.found.params

    @property
    def maker(self) -> Maker | None:
        return self.found.maker

    @property
    def seed_names(self) -> list[str]:
        return self.found.seed_names

    @property
    def taken(self) -> dict:
        return self.found.taken

    @property
    def title(self) -> str:
        """The docstring's first line, or the first markdown heading, or the name."""
        doc = (ast.get_docstring(self.src.tree) or "").strip().split("\n")[0]
        heading = next((m.group(1) for m in map(HEADING.match, self.src.lines) if m), "")
        return (doc or heading).rstrip(".").strip() or self.name.replace("_", " ").capitalize()

    @property
    def cells(self) -> bool:
        return self.maker is None or self.maker.owner is None

    @property
    def recorder(self) -> bool:
        return bool(self.wandb) or any(o.returns.startswith("logged.") for o in self.outputs)


def adopt(root: Path, file: Path, name: str | None = None, post: bool = True) -> Adopted:
    """Write experiments/NAME.py (and templates/NAME.md.j2) from a script or notebook."""
    src = read(Path(file))
    name = _name(name, src.path)
    target = Path(root) / "experiments" / f"{name}.py"
    template = Path(root) / "templates" / f"{name}.md.j2" if post else None
    for path in (target, template):
        if path is not None and path.exists():
            raise WorkspaceError(f"{path} already exists; expost adopt never overwrites a file: pick another name "
                                 f"(--name NAME) or delete it first")
    plan = analyse(src, name)
    text = write.cells_file(plan) if plan.cells else write.function_file(plan)
    _compile(text, src.path)
    written = _write_new(target, text)
    try:
        _validate(target, src.path)
        if template is not None:
            _write_new(template, write.post_template(plan))
    except BaseException:
        written.unlink()
        raise
    if src.magics:
        plan.changed.append("IPython-only lines kept as comments: " + "; ".join(src.magics))
    return Adopted(target, template, [p.name for p in plan.params], [o.name for o in plan.outputs],
                   plan.changed, plan.undecided)


def _name(name: str | None, path: Path) -> str:
    if name is None:
        name = re.sub(r"\W+", "_", path.stem).strip("_").lower() or "adopted"
        return f"exp_{name}" if name[0].isdigit() else name
    if not name.isidentifier() or name.startswith("_"):
        raise AdoptError(f"--name {name!r}: an experiment name is a Python identifier that does not start with _ "
                         "(letters, digits and _), e.g. --name grokking")
    return name


def analyse(src: Source, name: str) -> Plan:
    """Decide what becomes PARAMS, run()'s body and OUTPUTS, and the edits to the code."""
    _refuse_reserved(src)
    found = find(src)
    alias, wandb_calls = wandb_names(src.tree)
    cells = found.maker is None or found.maker.owner is None
    place = _places(src, found) if cells else {}
    plan = Plan(src, name, found, [], Edits(), place, _moved(src, found, place), _aliases(src.tree), alias,
                *_docstring(src), _header_after(src), list(found.changed), list(found.undecided))
    if found.maker is not None and found.maker.kind == "argparse" and "argparse" not in module_names(src.tree):
        plan.imports.append("import argparse")
        plan.changed.append("`import argparse` added: run() makes its arguments with argparse.Namespace")
    if found.maker is not None and cells:
        plan.edits.replace(found.maker.stmt, found.maker.binding)
    if not cells:
        _function_checks(plan)
    _propose_outputs(plan, wandb_calls)
    if alias:
        _replace_wandb_import(plan)
    if not plan.outputs:
        raise AdoptError(f"{src.path.name}: found nothing it logs: no list filled with .append(...) in the code that "
                         "becomes run(), no wandb.log({...}), no tqdm set_postfix(...), no printed f-string with a "
                         "value. Collect a metric (e.g. `losses.append(loss.item())` in the training loop) and adopt "
                         "it again")
    return plan


def _propose_outputs(plan: Plan, wandb_calls: set) -> None:
    """Scan run()'s code (and, in the function shape, the module's other code) for what it logs."""
    scan = Scan(plan.src, list_bindings(plan.moved), wandb_calls, _run_locals(plan), plan.edits)
    if plan.cells:
        for stmt in plan.src.tree.body:
            if plan.place.get(stmt) in ("run", "guard"):
                scan.visit(stmt, Ctx(run=True))
    else:
        for stmt in plan.src.tree.body:
            if stmt is not plan.maker.owner:
                scan.visit(stmt, Ctx(run=False))
        for stmt in plan.moved:
            scan.visit(stmt, Ctx(run=True))
    plan.outputs = scan.propose()
    plan.changed += scan.changed
    plan.undecided += scan.undecided


def _refuse_reserved(src: Source) -> None:
    defined = {t.id for s in src.tree.body if isinstance(s, (ast.Assign, ast.AnnAssign))
               for t in (s.targets if isinstance(s, ast.Assign) else [s.target]) if isinstance(t, ast.Name)}
    defined |= {s.name for s in src.tree.body if isinstance(s, (ast.FunctionDef, ast.ClassDef))}
    imported = {a.asname or a.name.split(".")[0] for s in src.tree.body if isinstance(s, (ast.Import, ast.ImportFrom))
                for a in s.names}
    if imported & {"cfg", "seed"}:
        raise AdoptError(f"{src.path.name} imports a name cfg or seed, which run(cfg, seed) uses for itself; import it "
                         "under another name (e.g. `from random import seed as set_seed`) and adopt it again")
    if {"PARAMS", "OUTPUTS", "run"} <= defined:
        raise AdoptError(f"{src.path.name} is an expost experiment already (PARAMS, OUTPUTS and run); copy it into "
                         "experiments/ instead")
    clash = [n for n in RESERVED if n in defined]
    if clash:
        raise AdoptError(f"{src.path.name} defines {', '.join(clash)} at module level, which an experiment uses for "
                         "itself; rename yours (e.g. run -> train) and adopt it again")


def _places(src: Source, found: Found) -> dict:
    """Cells: where each top-level statement goes."""
    place: dict = {}
    body = src.tree.body
    last_import = max((i for i, s in enumerate(body) if isinstance(s, (ast.Import, ast.ImportFrom))), default=-1)
    for i, stmt in enumerate(body):
        if i == 0 and _is_docstring(stmt):
            place[stmt] = "doc"
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)) or (i < last_import and _is_setup(stmt)):
            place[stmt] = "head"
        elif stmt in found.taken:
            place[stmt] = "taken"
        elif is_main_guard(stmt):
            place[stmt] = "guard"
        else:
            place[stmt] = "run"
    return place


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _is_setup(stmt: ast.stmt) -> bool:
    """Code that must run before the imports below it: sys.path, os.environ, matplotlib.use(...)."""
    target = stmt.value.func if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) else \
        stmt.targets[0] if isinstance(stmt, ast.Assign) else None
    return target is not None and ast.unparse(target).startswith(SETUP_CALLS)


def _moved(src: Source, found: Found, place: dict) -> list[ast.stmt]:
    if place:
        out: list[ast.stmt] = []
        for stmt in src.tree.body:
            out += stmt.body if place[stmt] == "guard" else [stmt] if place[stmt] == "run" else []
        return out
    block = found.maker.owner.body
    return block[block.index(found.maker.stmt) + 1:]


def _aliases(tree: ast.Module) -> dict:
    out: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.name in ("torch", "numpy", "random"):
                    out[a.name] = a.asname or a.name
    return out


def _docstring(src: Source) -> tuple[list[str], int]:
    first = src.tree.body[0] if src.tree.body else None
    if first is not None and _is_docstring(first):
        return src.lines[first.lineno - 1:first.end_lineno], first.end_lineno
    return [], 0


def _header_after(src: Source) -> int:
    """The line after which the function shape puts PARAMS: after the leading imports (or docstring)."""
    end = 0
    for i, stmt in enumerate(src.tree.body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or (i == 0 and _is_docstring(stmt)):
            end = stmt.end_lineno
        else:
            break
    return end


def _run_locals(plan: Plan) -> set[str]:
    """Names run() binds itself: what a nested function's `global` now means."""
    names = {p.name for p in plan.params if p.bind} | set(plan.seed_names) | {"cfg", "seed"}
    todo = list(plan.moved)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return names


def _function_checks(plan: Plan) -> None:
    """The function shape: the moved code ends in a return (dropped: run() returns outputs), or
    reads names set before the config was made (they do not reach run())."""
    maker, src = plan.maker, plan.src
    if plan.moved and isinstance(plan.moved[-1], ast.Return):
        last = plan.moved[-1]
        plan.edits.replace(last, "")
        plan.changed.append(f"{src.where(last.lineno)}: `{src.segment(last)}` dropped: run() returns the outputs")
    for node in plan.moved[:-1] if plan.moved and isinstance(plan.moved[-1], ast.Return) else plan.moved:
        for r in ast.walk(node):
            if isinstance(r, ast.Return) and r.value is not None:
                plan.undecided.append(f"{src.where(r.lineno)}: `{src.segment(r)}` returns from run() early; run() "
                                      "must return its outputs dict")
                break
    before = maker.owner.body[:maker.owner.body.index(maker.stmt)]
    bound = {n.id for s in before for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    if isinstance(maker.owner, ast.FunctionDef):
        bound |= {a.arg for a in maker.owner.args.args + maker.owner.args.kwonlyargs}
    used = {n.id for s in plan.moved for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    for name in sorted((bound & used) - {maker.stmt.targets[0].id if isinstance(maker.stmt.targets[0], ast.Name) else ""}):
        plan.undecided.append(f"run() uses {name}, which is set before the config is made "
                              f"({src.where(maker.stmt.lineno)}); move it below that line so run() has it")


def _replace_wandb_import(plan: Plan) -> None:
    for stmt in plan.src.tree.body:
        if isinstance(stmt, ast.Import) and any(a.name == "wandb" for a in stmt.names):
            if len(stmt.names) > 1:
                plan.undecided.append(f"{plan.src.where(stmt.lineno)}: wandb is imported with other modules on one "
                                      "line; it still needs wandb: import it on a line of its own and adopt again")
                continue
            plan.edits.replace(stmt, f"# {plan.src.segment(stmt)}  # expost: not needed; `logged` stands in for it")
            plan.changed.append(f"{plan.src.where(stmt.lineno)}: wandb is not needed any more: its calls go to "
                                "`logged`, which keeps what wandb.log(...) logs as outputs")


def _compile(text: str, origin: Path) -> None:
    try:
        compile(text, "adopted", "exec")
    except SyntaxError as e:
        raise AdoptError(f"{origin.name}: expost adopt wrote code that does not compile ({e.msg}, line {e.lineno} of "
                         "the result); nothing was written. This is a bug in expost adopt: please report it with "
                         "the file") from None


def _write_new(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise WorkspaceError(f"{path} already exists; expost adopt never overwrites a file: pick another name "
                             "(--name NAME) or delete it first") from None
    return path


def _validate(path: Path, origin: Path) -> None:
    """Load what was written with the static spec loader: the proof that it is a valid experiment."""
    from expost.runs.spec import load_static

    try:
        load_static(path)
    except SpecError as e:
        raise AdoptError(f"{origin.name}: the adopted file is not a valid experiment ({e}); nothing was written. "
                         "This is a bug in expost adopt: please report it with the file") from None
