"""What a script logs, read with `ast`, proposed as OUTPUTS: lists appended in run's body,
`wandb.log({...})` keys, tqdm `set_postfix` keys, and metrics in printed f-strings.

Lists are returned as they are. The rest goes through `logged` (a small recorder the adopted file
defines): wandb calls go to it instead of wandb, set_postfix(...) gets `logged.postfix(...)`, and a
print gets a `logged.keep(...)` line above it. Series come from the best source found (lists and
wandb first, then tqdm postfixes, then prints); printed values outside any loop become scalars."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field, replace

from expost.adopt.edits import Edits
from expost.adopt.params import SEED_NAMES
from expost.adopt.source import Source

SEEDERS = {"manual_seed", "manual_seed_all", "seed", "default_rng", "RandomState", "set_seed", "seed_everything"}
TEXT_LOGS = {"write", "set_description", "info"}  # tqdm.write, pbar.set_description, logging.info: like print
COUNTERS = {"step", "steps", "epoch", "epochs", "iter", "iters", "iteration", "it", "batch", "t", "i", "n"}
PURE_CALLS = {"float", "int", "abs", "round", "len", "min", "max", "sum", "bool"}
PURE_METHODS = {"item", "mean", "sum", "max", "min", "std", "norm", "cpu", "detach", "numpy", "tolist", "float",
                "abs", "sqrt", "exp", "log"}
WRITES = {"savefig", "save", "to_csv", "dump"}
_LABEL = re.compile(r"([A-Za-z][\w/.]*(?:[ \t]+[A-Za-z][\w/.]*){0,2})[^A-Za-z0-9]*$")


@dataclass
class Output:
    name: str
    kind: str  # "series" | "scalar"
    found: str  # where it was found, for its description: "train_losses.append(...), line 41"
    returns: str  # what run() returns for it
    line: int = 0
    label: str = ""  # a printed value's label, which `logged` keeps it under


@dataclass(frozen=True)
class Ctx:
    run: bool  # in run()'s body or a function defined in it
    loop: int = 0
    depth: int = 0  # functions, lambdas and classes around
    targets: frozenset = frozenset()  # loop variables around
    own_seed: bool = False  # a function around binds its own `seed`


@dataclass
class Scan:
    src: Source
    lists: dict  # name -> None until appended: the lists run() binds
    wandb: set  # names wandb.log is called on (the module, and what wandb.init returned)
    run_locals: set
    edits: Edits
    appended: dict = field(default_factory=dict)  # list name -> Output
    logged: list = field(default_factory=list)  # wandb keys as Outputs
    postfix: list = field(default_factory=list)  # (call, [Output])
    printed: list = field(default_factory=list)  # (statement, [(label, expr)], Ctx)
    changed: list = field(default_factory=list)
    undecided: list = field(default_factory=list)

    def visit(self, node: ast.AST, ctx: Ctx) -> None:
        self._check(node, ctx)
        inner = ctx
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            target = node.target if isinstance(node, (ast.For, ast.AsyncFor)) else ast.Tuple([])
            names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            inner = replace(ctx, loop=ctx.loop + 1, targets=ctx.targets | names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            inner = replace(ctx, depth=ctx.depth + 1, own_seed=ctx.own_seed or _binds_seed(node))
        for child in ast.iter_child_nodes(node):
            self.visit(child, inner)

    def _check(self, node: ast.AST, ctx: Ctx) -> None:
        where = lambda: self.src.where(node.lineno)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and _text_log(node.value) \
                and (ctx.run or ctx.depth):  # module-level prints run at import, before any run
            self.printed.append((node, _labelled(node.value, ctx), ctx))
        elif isinstance(node, ast.Call):
            self._call(node, ctx)
        elif isinstance(node, ast.Global) and ctx.run:
            self._global(node, ctx)
        elif isinstance(node, ast.Name) and node.id == "__file__" and ctx.run:
            self.undecided.append(f"{where()}: uses __file__, and the file now lives in experiments/: check the "
                                  "paths built from it")
        elif isinstance(node, (ast.For, ast.AsyncFor)) and ctx.run and isinstance(node.target, ast.Name) \
                and node.target.id.lower() in SEED_NAMES:
            self.undecided.append(f"{where()}: loops over seeds itself; expost runs each seed for you (`--seeds`): "
                                  "remove the loop and use `seed`")

    def _call(self, call: ast.Call, ctx: Ctx) -> None:
        func = call.func
        attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        if attr == "append" and owner is not None and len(call.args) == 1:
            self._append(owner, call, ctx)
        elif attr == "log" and owner in self.wandb:
            self._wandb(call)
        elif attr == "set_postfix":
            self._postfix(call)
        elif attr in SEEDERS and ctx.run and not ctx.own_seed and _int_literal(call):
            self.edits.replace(call.args[0], "seed")
            self.changed.append(f"{self.src.where(call.lineno)}: {self.src.segment(call)} now seeds with each run's "
                                f"seed (put {call.args[0].value} back if it fixes the data on purpose)")
        elif ctx.run and attr in WRITES | {"exit", "quit"}:
            self._side_effect(call, attr)

    def _append(self, name: str, call: ast.Call, ctx: Ctx) -> None:
        where = self.src.where(call.lineno)
        if name not in self.lists:
            if ctx.loop and not ctx.run:
                self.undecided.append(f"{where}: {name}.append(...) fills a list inside a function run() does not "
                                      f"hold; to make it an output, return {name} from there and add it to what run() "
                                      "returns")
            return
        if isinstance(call.args[0], (ast.Dict, ast.Tuple, ast.List, ast.Set)):
            self.lists[name] = False
            self.undecided.append(f"{where}: {name}.append({self.src.segment(call.args[0])}) appends several values "
                                  f"at once; an output is one number per step: keep one list per value")
        elif self.lists[name] is None:
            self.lists[name] = True
            self.appended[name] = Output(name, "series", f"{name}.append(...), {where}", name, call.lineno)

    def _wandb(self, call: ast.Call) -> None:
        metrics = call.args[0] if call.args else None
        keys = _keys(metrics)
        if keys is None:
            self.undecided.append(f"{self.src.where(call.lineno)}: {self.src.segment(call)}: its keys are not written "
                                  "out, so no output is proposed for it (it is still kept: add "
                                  "\"KEY\": logged.series(\"KEY\") to what run() returns)")
            return
        media = {k.value for k, v in zip(metrics.keys, metrics.values)
                 if isinstance(v, ast.Call) and _base(v.func) in self.wandb}  # wandb.Image(...), wandb.Histogram(...)
        for key in keys:
            if key in media or any(o.name == key for o in self.logged):  # the same metric logged in two places
                continue
            self.logged.append(Output(key, "series", f"wandb.log, {self.src.where(call.lineno)}",
                                      f"logged.series({json.dumps(key)})", call.lineno))

    def _postfix(self, call: ast.Call) -> None:
        where = self.src.where(call.lineno)
        metrics = [k.arg for k in call.keywords]
        if call.args:
            keys = _keys(call.args[0])
            metrics = None if keys is None or len(call.args) > 1 else keys + metrics
        if not metrics or None in metrics or "refresh" in metrics:
            self.undecided.append(f"{where}: {self.src.segment(call)}: no output proposed for it (only "
                                  "set_postfix(name=value, ...) or set_postfix({\"name\": value}) is read)")
            return
        seen = {o.name for _, found in self.postfix for o in found}
        found = [Output(k, "series", f"set_postfix, {where}", f"logged.series({json.dumps('postfix ' + k)})", call.lineno)
                 for k in metrics if k not in seen]
        self.postfix.append((call, found))

    def _global(self, node: ast.Global, ctx: Ctx) -> None:
        where = self.src.where(node.lineno)
        if ctx.depth and set(node.names) <= self.run_locals:
            self.edits.spans.append((node.lineno, node.col_offset, node.lineno, node.col_offset + len("global"),
                                     "nonlocal"))
            self.changed.append(f"{where}: `global {', '.join(node.names)}` is now `nonlocal`: those names live in "
                                "run() now")
        else:
            self.undecided.append(f"{where}: `global {', '.join(node.names)}` inside run() refers to module names "
                                  "that may not exist any more: check it")

    def _side_effect(self, call: ast.Call, attr: str) -> None:
        where = self.src.where(call.lineno)
        if attr in ("exit", "quit"):
            self.undecided.append(f"{where}: {self.src.segment(call)} ends the process; inside run() it fails the "
                                  "run: return instead")
        else:
            self.undecided.append(f"{where}: {self.src.segment(call)} writes a file: every seed writes the same path "
                                  "(give each run its own, or drop it)")

    # --- choosing what to propose ------------------------------------------------------------------

    def propose(self) -> list[Output]:
        """OUTPUTS, each name once; the edits that make logged values reach run()'s return."""
        lists = [o for name, o in self.appended.items() if self.lists.get(name)]
        best = lists + self.logged
        postfix = [o for _, found in self.postfix for o in found]
        printed = self._printed_outputs()
        series = [o for o in printed if o.kind == "series"]
        dropped = (postfix + series) if best else series if postfix else []
        if dropped:
            self.changed.append("not proposed, outputs were found in a better source (lists or wandb, then "
                                "tqdm postfixes, then prints): " + ", ".join(f"{o.name} ({o.found})" for o in dropped))
        chosen = [_printed_key(o) for o in _unique(best + [o for o in postfix + printed if o not in dropped])]
        for call, found in self.postfix:
            if any(o in chosen for o in found):
                first, last = _args_span(call)
                self.edits.insert(last[0], last[1], ")")
                self.edits.insert(first[0], first[1], "logged.postfix(")
        self._record_prints(chosen)
        return chosen

    def _printed_outputs(self) -> list[Output]:
        out = []
        for stmt, pairs, ctx in self.printed:
            kind = "series" if ctx.loop or ctx.depth else "scalar"
            where = self.src.where(stmt.lineno)
            line = self.src.lines[stmt.lineno - 1]
            if pairs and line[: len(line.encode()[: stmt.col_offset].decode())].strip():
                self.undecided.append(f"{where}: a printed metric shares its line with other code; put the print on "
                                      "its own line and adopt again to have it proposed")
                continue
            for label, expr in pairs:
                found = f"{_call_name(stmt.value)}, {where}"
                if kind == "scalar" and ctx.run and isinstance(expr, ast.Name) and expr.id in self.run_locals:
                    out.append(Output(label, kind, found, expr.id, stmt.lineno))  # still there when run() returns
                else:
                    out.append(Output(label, kind, found, "", stmt.lineno, label))
        return out

    def _record_prints(self, chosen: list[Output]) -> None:
        """A `logged.keep(...)` line above each print whose values were chosen (computed again: only
        names, attributes and cheap calls like .item())."""
        by_line: dict = {}
        for o in chosen:
            if o.label:
                by_line.setdefault(o.line, {})[o.label] = o.name
        for stmt, pairs, ctx in self.printed:
            names = by_line.get(stmt.lineno, {})
            kept = [(names[label], expr) for label, expr in pairs if label in names]
            if not kept:
                continue
            values = ", ".join(f'"{name}": {self.src.segment(expr)}' for name, expr in kept)
            self.edits.insert_before(stmt.lineno, f'logged.keep("print ", {{{values}}})  # expost: kept from the '
                                                  "line below")


def _unique(outputs: list[Output]) -> list[Output]:
    seen: set = set()
    out = []
    for o in outputs:
        name = _identifier(o.name)
        base, n = name, 2
        while name in seen:
            name, n = f"{base}_{n}", n + 1
        seen.add(name)
        out.append(replace(o, name=name))
    return out


def _printed_key(o: Output) -> Output:
    """A printed value is kept under its output's (unique) name."""
    if not o.label:
        return o
    return replace(o, returns=f"logged.{'series' if o.kind == 'series' else 'last'}(\"print {o.name}\")")


def _identifier(text: str) -> str:
    name = re.sub(r"\W+", "_", text.strip()).strip("_") or "value"
    return f"m_{name}" if name[0].isdigit() else name


def _keys(node: ast.AST | None) -> list[str] | None:
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys):
        return [k.value for k in node.keys]
    return None


def _int_literal(call: ast.Call) -> bool:
    return len(call.args) == 1 and isinstance(call.args[0], ast.Constant) and type(call.args[0].value) is int


def _binds_seed(node: ast.AST) -> bool:
    args = getattr(node, "args", None)
    names = {a.arg for a in (args.args + args.kwonlyargs)} if isinstance(args, ast.arguments) else set()
    return "seed" in names or any(isinstance(n, ast.Name) and n.id == "seed" and isinstance(n.ctx, ast.Store)
                                  for n in ast.walk(node))


def _text_log(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Name) and f.id == "print") or (isinstance(f, ast.Attribute) and f.attr in TEXT_LOGS)


def _call_name(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else call.func.attr


def _labelled(call: ast.Call, ctx: Ctx) -> list[tuple[str, ast.expr]]:
    """(label, value) for each metric in a printed line: f"loss {loss:.3f}" -> ("loss", loss);
    print("loss", loss) too. Loop counters and values that would have to be computed again by
    anything but a cheap call are left out."""
    pairs: list = []
    text = ""
    parts = [p for a in call.args for p in (a.values if isinstance(a, ast.JoinedStr) else [a])]
    for part in parts:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            text = part.value
            continue
        value = part.value if isinstance(part, ast.FormattedValue) else part
        label = _label(text) or _base(value)
        text = ""
        if not label or label in COUNTERS or (isinstance(value, ast.Name) and value.id in ctx.targets):
            continue
        if _pure(value):
            pairs.append((label, value))
    return pairs


def _label(text: str) -> str:
    m = _LABEL.search(text)
    return _identifier(m.group(1).lower()) if m else ""


def _base(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return node.value.id
    return node.id if isinstance(node, ast.Name) else ""


def _pure(node: ast.AST) -> bool:
    """Cheap to compute again and without side effects: names, attributes, indexing, arithmetic,
    and calls like float(x) or x.item()."""
    if isinstance(node, (ast.Name, ast.Constant)):
        return True
    if isinstance(node, ast.Attribute):
        return _pure(node.value)
    if isinstance(node, ast.Subscript):
        return _pure(node.value) and _pure(node.slice)
    if isinstance(node, (ast.UnaryOp, ast.BinOp, ast.Tuple, ast.Slice)):
        return all(_pure(c) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr))
    if isinstance(node, ast.Call):
        f = node.func
        ok = (isinstance(f, ast.Name) and f.id in PURE_CALLS) or \
            (isinstance(f, ast.Attribute) and f.attr in PURE_METHODS and _pure(f.value))
        return ok and all(_pure(a) for a in node.args) and all(_pure(k.value) for k in node.keywords)
    return False


def _args_span(call: ast.Call) -> tuple[tuple, tuple]:
    """(line, col) where the call's arguments start and end."""
    nodes = [*call.args, *call.keywords]
    first = min(nodes, key=lambda n: (n.lineno, n.col_offset))
    last = max(nodes, key=lambda n: (n.end_lineno, n.end_col_offset))
    return (first.lineno, first.col_offset), (last.end_lineno, last.end_col_offset)


def list_bindings(stmts: list[ast.stmt]) -> dict:
    """Lists run() itself binds empty (`losses = []`, `a, b = [], []`, `x = list()`): name -> None."""
    found: dict = {}
    todo = list(stmts)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                for name, value in _pairs(target, node.value):
                    if _empty_list(value):
                        found[name] = None
        todo.extend(ast.iter_child_nodes(node))
    return found


def _pairs(target: ast.AST, value: ast.AST):
    if isinstance(target, ast.Name):
        yield target.id, value
    elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
        for t, v in zip(target.elts, value.elts):
            yield from _pairs(t, v)


def _empty_list(node: ast.AST) -> bool:
    return (isinstance(node, ast.List) and not node.elts) or \
        (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list" and not node.args)


def wandb_names(tree: ast.Module) -> tuple[str | None, set]:
    """The name wandb is imported as (None: not used), and every name its log is called on."""
    alias = None
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            alias = next((a.asname or a.name for a in stmt.names if a.name == "wandb"), alias)
    if alias is None:
        return None, set()
    names = {alias}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute) \
                and node.value.func.attr == "init" and isinstance(node.value.func.value, ast.Name) \
                and node.value.func.value.id == alias:
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return alias, names
