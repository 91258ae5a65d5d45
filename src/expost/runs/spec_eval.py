"""The values of an experiment's spec, read without importing the script: a small, safe
evaluator over the `ast` (runs/spec.py calls it; runs/reach.py asks it which module-level
assignments only compute a plain value).

A spec field may be written as Python reads it, and its value is the one Python gives when the
script is imported:
- literals; module-level constants (`NAME = <such an expression>` at the top level of the same
  file, assigned before use; a later `NAME = ...` rebinds it from there on, as in Python);
- + - * / // % ** | and unary - + not; comparisons (not `is`), and/or, `a if c else b`;
  indexing and slicing; f-strings; `[*xs, 1.0]` and `{**BASE, "lr": 0.1}`;
- list and dict comprehensions (and a generator as the one argument of list/tuple/dict/sorted/
  min/max/sum);
- calls of range, list, tuple, dict, sorted, min, max, sum, len, round, abs, float, int, str,
  when the file does not bind that name itself.
Anything else is refused with the line and the fix (`NotStatic`): another call, an attribute
(`np.linspace`), a dunder name, a lambda, a name that is imported, defined by def/class,
assigned in a block or a function (`global`), unpacked, changed in place at module level
(`X.append`, `X[k] = v`, `X += ...`, also through an alias), or used before it is assigned, and
every name after a `from m import *`.
Bounded: a container or string of more than MAX_ITEMS items, an int of more than MAX_INT_BITS
bits, an f-string width or precision above MAX_FORMAT_WIDTH and more than MAX_WORK steps in all
are refused before they are built, so `range(10**12)`, `"x" * 10**9`, `2 ** 10**9` or nested
comprehensions fail within about a tenth of a second.
"""

from __future__ import annotations

import ast
import operator
import re

MAX_ITEMS = 100_000  # items a value holds in all (Module.weight: a string's characters too)
MAX_INT_BITS = 4_096
MAX_FORMAT_WIDTH = 1_000
MAX_WORK = 200_000  # nodes evaluated plus items built, for the whole spec (~0.1 s)

CALLS = {f.__name__: f for f in (range, list, tuple, dict, sorted, min, max, sum, len, round, abs, float, int, str)}
TAKE_GENERATOR = {"list", "tuple", "dict", "sorted", "min", "max", "sum"}  # same value as a list comprehension
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.BitOr: operator.or_}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
# What a spec expression may be made of (also what `pure` accepts).
SHAPES = (ast.Constant, ast.Name, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Starred, ast.BinOp, ast.UnaryOp,
          ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Call, ast.keyword, ast.ListComp,
          ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue, ast.Load,
          ast.Store, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)
MUTATORS = {"append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "update", "setdefault",
            "popitem", "add", "discard", "difference_update", "intersection_update", "symmetric_difference_update"}
BINDERS = {ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.AugAssign,
           ast.NamedExpr, ast.Name, ast.ExceptHandler, ast.MatchAs, ast.MatchStar, ast.MatchMapping, ast.Subscript,
           ast.Attribute, ast.Call}  # the nodes _bindings looks at
SCALARS = {int, float, bool, type(None), complex}  # weigh 1
SIZED = (str, bytes, list, tuple, dict, set, frozenset, range)

FIX = ("write it as a literal, or compute it from constants assigned above it in this file with + - * / // % **, "
       "list/dict comprehensions and range, list, tuple, dict, sorted, min, max, sum, len, round, abs, float, int, "
       "str (expost reads the spec without importing the script)")
TOO_BIG = "write fewer values: a spec this large could not be planned or run anyway"


class NotStatic(Exception):
    """An expression the evaluator refuses (or that raises, as importing the script would)."""

    def __init__(self, node: ast.AST | None, problem: str, fix: str = FIX):
        super().__init__(problem)
        self.line = getattr(node, "lineno", None)
        self.problem = problem
        self.fix = fix
        self.via: list[str] = []  # the constants the field reached this through, outermost first


def source(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- who binds what at module level ---------------------------------------------------------------

def is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`, whose body does not run on import."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _module_level(node: ast.AST):
    """The nodes of a module-level statement that bind in the module's scope when it runs on import:
    not the bodies of functions, lambdas or classes, nor the targets of comprehensions."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo += [*n.decorator_list, *n.args.defaults, *(d for d in n.args.kw_defaults if d)]
        elif isinstance(n, ast.ClassDef):  # its body binds class attributes, not module names
            todo += [*n.decorator_list, *n.bases, *n.keywords]
        elif isinstance(n, ast.Lambda):
            todo += [*n.args.defaults, *(d for d in n.args.kw_defaults if d)]
        elif isinstance(n, ast.comprehension):
            todo += [n.iter, *n.ifs]
        else:
            todo += ast.iter_child_nodes(n)


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Subscript, ast.Attribute, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _bindings(stmt: ast.AST):
    """(name, node, how, in_place) for each name a module-level statement (or the value of a
    `NAME = value`) binds other than by `NAME = value`, or may change in place."""
    block = {ast.If: "assigned inside an if", ast.For: "assigned by a for loop", ast.While: "assigned inside a "
             "while loop", ast.With: "assigned inside a with block", ast.Try: "assigned inside a try block",
             ast.Delete: "deleted", ast.Assign: "unpacked from a sequence"}.get(type(stmt), "assigned by a statement")
    for n in _module_level(stmt):
        if type(n) not in BINDERS:
            continue
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield n.name, n, "defined by def/class", False
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            yield from ((a.asname or a.name.split(".")[0], n, "imported", False) for a in n.names if a.name != "*")
        elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            yield n.target.id, n, "changed with an augmented assignment (`+=` ...)", True
        elif isinstance(n, ast.NamedExpr):
            yield n.target.id, n, "assigned with :=", False
        elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            yield n.id, n, block, False
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
            yield n.name, n, block, False
        elif isinstance(n, ast.MatchMapping) and n.rest:
            yield n.rest, n, block, False
        elif isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.ctx, (ast.Store, ast.Del)) and _root(n):
            yield _root(n), n, f"changed in place (`{source(n)} = ...`)", True
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and _root(n.func.value) and (
                n.func.attr in MUTATORS or n.func.attr.startswith("__")):
            yield _root(n.func.value), n, f"changed in place (`{source(n)}`)", True


def _statements(tree: ast.AST):
    """Every statement, at any depth (expressions are not walked: a `global` is a statement)."""
    todo = [tree]
    while todo:
        n = todo.pop()
        yield n
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo += [c for c in getattr(n, name, ()) if isinstance(c, ast.AST)]


def _simple_targets(stmt: ast.stmt) -> list[str]:
    """The names `NAME = value` (or `A = B = value`, `NAME: T = value`) binds; [] for other statements."""
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        return [t.id for t in stmt.targets]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return [stmt.target.id]
    return []


class _At:
    """A stand-in node that carries only a line number."""

    def __init__(self, line: int):
        self.lineno = line


class Module:
    """The top level of a parsed script: its `NAME = value` statements, every other way it binds or
    changes a name, and the values of those statements, evaluated within one budget."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.body = tree.body
        self.simple: dict[str, list[int]] = {}  # name -> indexes in body of its `NAME = value` statements
        self.other: dict[str, tuple[int, str]] = {}  # name -> (line, how) of its first other binding or change
        self.star: int | None = None  # line of a `from m import *`
        self.work = 0  # steps taken by every evaluation so far (MAX_WORK in all)
        self._index = {id(stmt): i for i, stmt in enumerate(self.body)}
        self._values: dict[int, object] = {}
        self._weights: dict[int, tuple[object, int]] = {}  # id -> (value kept alive, weight)
        self._pure: dict[int, bool] = {}
        self._scan()

    def _scan(self) -> None:
        changed: list[str] = []
        for i, stmt in enumerate(self.body):
            if is_main_guard(stmt) or (isinstance(stmt, ast.AnnAssign) and stmt.value is None):
                continue  # does not run on import / binds nothing
            targets = _simple_targets(stmt)
            for name in targets:
                self.simple.setdefault(name, []).append(i)
            if isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names):
                self.star = self.star or stmt.lineno
            for name, node, how, in_place in _bindings(stmt.value if targets else stmt):
                self._note(name, getattr(node, "lineno", stmt.lineno), how)
                changed += [name] if in_place else []
        for node in _statements(self.tree):
            if isinstance(node, ast.Global):
                for name in node.names:
                    self._note(name, node.lineno, "assigned inside a function (`global`)")
        self._spread(changed)

    def _note(self, name: str, line: int, how: str) -> None:
        """Remember the first line that binds or changes `name` other than by `NAME = value`."""
        if name not in self.other or line < self.other[name][0]:
            self.other[name] = (line, how)

    def _spread(self, changed: list[str]) -> None:
        """A value changed in place changes every name that may share it: the names its assignments
        read and those assigned with it (`A = B = [...]`), and theirs in turn."""
        todo = list(dict.fromkeys(changed))
        while todo:
            name = todo.pop()
            line, how = self.other[name]
            for i in self.simple.get(name, []):
                stmt = self.body[i]
                shared = {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)} | set(_simple_targets(stmt))
                for other in sorted(shared - set(self.other)):
                    self.other[other] = (line, f"shared with {name}, which is {how}")
                    todo.append(other)

    # --- values ----------------------------------------------------------------------------------

    def final(self, name: str) -> ast.stmt | None:
        """The `NAME = value` statement whose value `name` holds after import (None: none)."""
        if name in self.other:
            line, how = self.other[name]
            raise NotStatic(_At(line), f"{name} is {how} (line {line})",
                            f"assign {name} once at the top level (`{name} = ...`) and do not change it afterwards: "
                            "expost reads it without running the script")
        indexes = self.simple.get(name)
        return self.body[indexes[-1]] if indexes else None

    def value(self, stmt: ast.stmt):
        """The value a top-level `NAME = expression` gives its name(s)."""
        key = id(stmt)
        if key not in self._values:
            self._values[key] = _Evaluator(self, self._index[key]).eval(stmt.value, {})
        return self._values[key]

    def constant(self, name: str, node: ast.Name, before: int):
        """The value `name` holds when the statement at index `before` runs."""
        if self.star is not None:
            raise NotStatic(node, f"`{name}` may come from the `from ... import *` on line {self.star}",
                            "import the names you use one by one, or write the value as a literal")
        if name in self.other:
            line, how = self.other[name]
            raise NotStatic(node, f"{name} is {how} (line {line})",
                            f"assign {name} once at the top level (`{name} = ...`), above its use, and do not change "
                            "it afterwards; or write the value as a literal")
        earlier = [i for i in self.simple.get(name, []) if i < before]
        if not earlier:
            raise NotStatic(node, *self._undefined(name, node))
        try:
            return self.value(self.body[earlier[-1]])
        except NotStatic as e:
            e.via.insert(0, name)
            raise

    def _undefined(self, name: str, node: ast.Name) -> tuple[str, str]:
        if name in self.simple:
            line = self.body[self.simple[name][0]].lineno
            return f"{name} is used before it is assigned (line {line})", f"move `{name} = ...` above line {node.lineno}"
        if name in CALLS:
            return f"`{name}` is a function; only calls of it are allowed", FIX
        inner = [n.lineno for n in ast.walk(self.tree) if isinstance(n, ast.Name) and n.id == name
                 and isinstance(n.ctx, ast.Store)]
        where = f" (it is assigned only inside a function or block, line {inner[0]})" if inner else ""
        return (f"{name} is not defined at the top level of the script{where}",
                f"assign `{name} = ...` at the top level, above line {node.lineno}, or write the value as a literal")

    def builtin(self, name: str) -> bool:
        """Is `name` one of CALLS, not rebound by this file?"""
        return name in CALLS and name not in self.simple and name not in self.other and self.star is None

    def weight(self, value) -> int:
        """How many items a value holds in all (a string: its characters; a dict: its keys and values),
        nested ones counted every time they appear (`[[0] * 1000] * 1000` weighs a million, held in
        two lists): what printing, comparing, hashing or storing it costs."""
        if isinstance(value, (str, bytes)):
            return max(len(value), 1)
        if isinstance(value, range):
            return max(len(value), 1)
        if not isinstance(value, (list, tuple, dict, set, frozenset)):
            return 1
        known = self._weights.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        total = max(1, sum(self.weight(x) for x in items))
        self._weights[id(value)] = (value, total)
        return total

    # --- what reach.py asks ------------------------------------------------------------------------

    def pure(self, stmt: ast.stmt) -> bool:
        """Does running this top-level assignment only compute a plain value (shapes the evaluator
        accepts, over constants that do too): no user code, no import, no side effect?"""
        key = id(stmt)
        if key not in self._pure:
            self._pure[key] = False  # names resolve to earlier statements: no cycle reaches back here
            try:
                self._pure[key] = key in self._index and self._pure_node(stmt.value, self._index[key], frozenset())
            except RecursionError:
                pass
        return self._pure[key]

    def _pure_node(self, node: ast.AST, before: int, local: frozenset) -> bool:
        if not isinstance(node, SHAPES):
            return False
        if isinstance(node, (ast.ListComp, ast.DictComp, ast.GeneratorExp)):
            gens = node.generators  # the first iterable is read in the enclosing scope, the rest inside
            inner = local | {n.id for g in gens for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            rest = [*(g.target for g in gens), *(g.iter for g in gens[1:]), *(c for g in gens for c in g.ifs),
                    *((node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,))]
            return self._pure_node(gens[0].iter, before, local) and all(
                self._pure_node(n, before, inner) for n in rest)
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and self.builtin(node.func.id)):
            return False
        if isinstance(node, ast.Name) and node.id not in local and not self.builtin(node.id):
            earlier = [i for i in self.simple.get(node.id, []) if i < before]
            if node.id in self.other or self.star is not None or not earlier or not self.pure(self.body[earlier[-1]]):
                return False
        return all(self._pure_node(child, before, local) for child in ast.iter_child_nodes(node))


class _Evaluator:
    """Evaluates one top-level statement's expression (and the constants it reads) with a work budget."""

    def __init__(self, module: Module, before: int):
        self.module = module
        self.before = before  # index of the statement: constants assigned before it are visible

    def eval(self, node: ast.AST, scope: dict):
        self.tick(node, 1)
        handler = _HANDLERS.get(type(node))
        if handler is None:
            raise NotStatic(node, f"`{source(node)}` {_refusal(node)}")
        return handler(self, node, scope)

    def tick(self, node: ast.AST, steps: int) -> None:
        self.module.work += steps
        if self.module.work > MAX_WORK:
            raise NotStatic(node, f"evaluating the spec takes more than {MAX_WORK:,} steps", TOO_BIG)

    def _checked(self, node: ast.AST, value):
        """A value built by the script, within the bounds (and counted as work)."""
        if isinstance(value, SIZED):
            _bounded(node, self.module.weight(value))
            self.tick(node, len(value))
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise NotStatic(node, f"`{source(node)}` is an integer of more than {MAX_INT_BITS} bits", TOO_BIG)
        return value

    def _apply(self, node: ast.AST, fn, *args, **kwargs):
        """fn(*args), raising as importing the script would, and bounded."""
        try:
            return self._checked(node, fn(*args, **kwargs))
        except (ArithmeticError, TypeError, ValueError, LookupError) as e:
            raise NotStatic(node, f"`{source(node)}` raises {type(e).__name__}: {e}",
                            "fix the expression (`python` raises the same error when it imports the script)") from None

    # --- leaves ----------------------------------------------------------------------------------

    def _Constant(self, node: ast.Constant, scope: dict):
        return self._checked(node, node.value)

    def _Name(self, node: ast.Name, scope: dict):
        if node.id in scope:  # a comprehension's variable (never a dunder: _bind refuses those)
            return scope[node.id]
        if node.id.startswith("__") and node.id.endswith("__"):
            raise NotStatic(node, f"`{node.id}`: dunder names are not allowed")
        return self.module.constant(node.id, node, self.before)

    # --- displays ---------------------------------------------------------------------------------

    def _items(self, elts: list, scope: dict) -> list:
        out: list = []
        for elt in elts:
            if isinstance(elt, ast.Starred):
                out += self._iterable(elt.value, scope)
            else:
                out.append(self.eval(elt, scope))
            _bounded(elt, len(out))
        return out

    def _List(self, node, scope):
        return self._checked(node, self._items(node.elts, scope))

    def _Tuple(self, node, scope):
        return self._checked(node, tuple(self._items(node.elts, scope)))

    def _Set(self, node, scope):
        return self._apply(node, set, self._items(node.elts, scope))

    def _Dict(self, node: ast.Dict, scope: dict):
        out: dict = {}
        lines: dict = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                more = self.eval(v, scope)
                if not isinstance(more, dict):
                    raise NotStatic(v, f"`**{source(v)}` is not a dict")
                out.update(more)
            else:
                key = self.eval(k, scope)
                self.tick(k, self.module.weight(key))
                self._apply(k, hash, key)
                if key in lines:
                    raise NotStatic(k, f"duplicate key {key!r} (lines {lines[key]} and {k.lineno}); Python would "
                                       "silently keep the last value", f"keep one {key!r} entry")
                lines[key] = k.lineno
                out[key] = self.eval(v, scope)
            _bounded(node, len(out))
        return self._checked(node, out)

    def _JoinedStr(self, node: ast.JoinedStr, scope: dict):
        text = "".join(str(self.eval(v, scope)) for v in node.values)
        return self._checked(node, text)

    def _FormattedValue(self, node: ast.FormattedValue, scope: dict):
        value = self.eval(node.value, scope)
        if node.conversion != -1:
            value = self._apply(node, {115: str, 114: repr, 97: ascii}[node.conversion], value)
        spec = self.eval(node.format_spec, scope) if node.format_spec else ""
        if any(int(d) > MAX_FORMAT_WIDTH for d in re.findall(r"\d+", spec)):
            raise NotStatic(node, f"the format `{spec}` asks for more than {MAX_FORMAT_WIDTH} characters or digits",
                            TOO_BIG)
        return self._apply(node, format, value, spec)

    # --- operators ---------------------------------------------------------------------------------

    def _BinOp(self, node: ast.BinOp, scope: dict):
        op = type(node.op)
        if op not in BINARY:
            raise NotStatic(node, f"`{source(node)}`: the operator {type(node.op).__name__} is not allowed")
        a, b = self.eval(node.left, scope), self.eval(node.right, scope)
        _guard(node, op, a, b, self.module.weight)
        return self._apply(node, BINARY[op], a, b)

    def _UnaryOp(self, node: ast.UnaryOp, scope: dict):
        if type(node.op) not in UNARY:
            raise NotStatic(node, f"`{source(node)}`: the operator {type(node.op).__name__} is not allowed")
        return self._apply(node, UNARY[type(node.op)], self.eval(node.operand, scope))

    def _BoolOp(self, node: ast.BoolOp, scope: dict):
        value = None
        for operand in node.values:  # short-circuits as Python does
            value = self.eval(operand, scope)
            if bool(value) == isinstance(node.op, ast.Or):
                return value
        return value

    def _Compare(self, node: ast.Compare, scope: dict):
        left = self.eval(node.left, scope)
        for op, right_node in zip(node.ops, node.comparators):
            if type(op) not in COMPARE:
                raise NotStatic(node, f"`{source(node)}`: `is` compares identity; only == != < <= > >= in are allowed")
            right = self.eval(right_node, scope)
            self.tick(node, self.module.weight(left) + self.module.weight(right))
            if not self._apply(node, COMPARE[type(op)], left, right):
                return False
            left = right
        return True

    def _IfExp(self, node: ast.IfExp, scope: dict):
        return self.eval(node.body if self.eval(node.test, scope) else node.orelse, scope)

    def _Subscript(self, node: ast.Subscript, scope: dict):
        value = self.eval(node.value, scope)
        index = self.eval(node.slice, scope)
        return self._apply(node, operator.getitem, value, index)

    def _Slice(self, node: ast.Slice, scope: dict):
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if p is None else self.eval(p, scope) for p in parts))

    # --- calls ---------------------------------------------------------------------------------------

    def _Call(self, node: ast.Call, scope: dict):
        func = node.func
        if not isinstance(func, ast.Name) or func.id in scope or not self.module.builtin(func.id):
            raise NotStatic(node, f"`{source(node)}` {_refusal(node, self.module)}")
        name = func.id
        if len(node.args) == 1 and isinstance(node.args[0], ast.GeneratorExp) and name in TAKE_GENERATOR:
            args = [self._comprehension(node.args[0], scope, list)]
        else:
            args = self._items(node.args, scope)
        kwargs: dict = {}
        for kw in node.keywords:
            value = self.eval(kw.value, scope)
            if kw.arg is None and not isinstance(value, dict):
                raise NotStatic(kw.value, f"`**{source(kw.value)}` is not a dict")
            kwargs.update(value if kw.arg is None else {kw.arg: value})
        _guard_call(node, name, args, kwargs)
        self.tick(node, sum(map(self.module.weight, [*args, *kwargs.values()])))
        return self._apply(node, CALLS[name], *args, **kwargs)

    def _iterable(self, node: ast.AST, scope: dict):
        value = self.eval(node, scope)
        if not isinstance(value, SIZED):
            raise NotStatic(node, f"`{source(node)}` is a {type(value).__name__}, not something to iterate over",
                            "iterate over a list, tuple, dict, range or string")
        return value

    # --- comprehensions -------------------------------------------------------------------------

    def _ListComp(self, node, scope):
        return self._comprehension(node, scope, list)

    def _DictComp(self, node, scope):
        return self._comprehension(node, scope, dict)

    def _comprehension(self, node, scope: dict, kind):
        out: list = []
        self._loop(node, node.generators, dict(scope), out, [0])
        return self._checked(node, dict(out) if kind is dict else out)

    def _loop(self, node, generators: list, scope: dict, out: list, weight: list) -> None:
        gen, rest = generators[0], generators[1:]
        if gen.is_async:
            raise NotStatic(node, "async comprehensions are not allowed")
        for item in self._iterable(gen.iter, scope):  # (each turn evaluates a node: a tick)
            _bind(gen.target, item, scope)
            if not self._all(gen.ifs, scope):
                continue
            if rest:
                self._loop(node, rest, dict(scope), out, weight)
                continue
            if isinstance(node, ast.DictComp):
                value = (self.eval(node.key, scope), self.eval(node.value, scope))
            else:
                value = self.eval(node.elt, scope)
            out.append(value)
            weight[0] += 1 if type(value) in SCALARS else self.module.weight(value)
            _bounded(node, weight[0])

    def _all(self, conditions: list, scope: dict) -> bool:
        for condition in conditions:  # in order, stopping at the first false one, as Python does
            if not self.eval(condition, scope):
                return False
        return True


_HANDLERS = {getattr(ast, name[1:]): fn for name, fn in vars(_Evaluator).items()
             if name[:1] == "_" and name[1:2].isupper() and isinstance(getattr(ast, name[1:], None), type)}


def _bind(target: ast.AST, item, scope: dict) -> None:
    if type(target) is ast.Name and target.id in scope:  # (its name was checked on the first turn)
        scope[target.id] = item
        return
    if isinstance(target, ast.Name):
        if target.id.startswith("__") and target.id.endswith("__"):
            raise NotStatic(target, f"`{target.id}`: dunder names are not allowed")
        scope[target.id] = item
        return
    if not isinstance(target, (ast.Tuple, ast.List)) or any(isinstance(e, ast.Starred) for e in target.elts):
        raise NotStatic(target, f"`for {source(target)} in ...`: unpack into plain names (`for a, b in ...`)")
    try:
        items = list(item)
    except TypeError as e:
        raise NotStatic(target, f"cannot unpack {type(item).__name__}: {e}") from None
    if len(items) != len(target.elts):
        raise NotStatic(target, f"cannot unpack {len(items)} values into `{source(target)}`",
                        "fix the expression (`python` raises the same error when it imports the script)")
    for elt, value in zip(target.elts, items):
        _bind(elt, value, scope)


def _bounded(node: ast.AST, n: int) -> None:
    if n > MAX_ITEMS:
        raise NotStatic(node, f"`{source(node)}` would hold more than {MAX_ITEMS:,} items", TOO_BIG)


def _guard(node: ast.BinOp, op: type, a, b, weight) -> None:
    """Refuse an operation whose result would be too large before Python builds it."""
    if op is ast.Mult:
        for seq, n in ((a, b), (b, a)):
            if isinstance(seq, SIZED) and isinstance(n, int):
                _bounded(node, weight(seq) * max(n, 0))
        if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise NotStatic(node, f"`{source(node)}` is an integer of more than {MAX_INT_BITS} bits", TOO_BIG)
    elif op is ast.Pow and isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 \
            and a.bit_length() * b > MAX_INT_BITS:
        raise NotStatic(node, f"`{source(node)}` is an integer of more than {MAX_INT_BITS} bits", TOO_BIG)
    elif op is ast.Mod and isinstance(a, (str, bytes)):
        raise NotStatic(node, f"`{source(node)}`: %-formatting is not allowed", "use an f-string: f\"{x:.3g}\"")


def _guard_call(node: ast.Call, name: str, args: list, kwargs: dict) -> None:
    if name == "range":
        try:
            n = len(range(*args, **kwargs))
        except (TypeError, ValueError):
            return  # raised again, as Python raises it, by the call itself
        except OverflowError:
            n = MAX_ITEMS + 1
        _bounded(node, n)
    elif name == "round" and len(args) == 2 and isinstance(args[1], int) and abs(args[1]) > MAX_FORMAT_WIDTH:
        raise NotStatic(node, f"`{source(node)}` rounds to more than {MAX_FORMAT_WIDTH} digits", TOO_BIG)
    elif name == "sum" and args and isinstance(args[0], SIZED) and not all(
            isinstance(x, (int, float)) for x in [*args[0], *args[1:], *kwargs.values()]):
        raise NotStatic(node, f"`{source(node)}`: sum() here adds numbers only", "concatenate lists with +")


def _refusal(node: ast.AST, module: Module | None = None) -> str:
    """Why an expression is not allowed (what follows its source in the message)."""
    if isinstance(node, ast.Attribute):
        return "reads an attribute, which is not allowed"
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute):
            return "calls an attribute (a module's function or a method), which is not allowed"
        if isinstance(func, ast.Name) and func.id in CALLS and module is not None:
            if module.star is not None:
                return f"may call something else: `from ... import *` on line {module.star} may rebind {func.id}"
            line, how = module.other.get(func.id, (None, "assigned"))
            if line is None:
                line = module.body[module.simple[func.id][0]].lineno
            return f"calls {func.id}, which this file rebinds ({how}, line {line})"
        return f"calls `{source(func, 30)}`, which expost cannot run without importing the script"
    if isinstance(node, ast.Lambda):
        return "is a function, not a value"
    if isinstance(node, (ast.SetComp, ast.GeneratorExp)):
        return "is not allowed here (use a list comprehension)"
    if isinstance(node, ast.NamedExpr):
        return "assigns with :=, which is not allowed"
    return f"is not allowed ({type(node).__name__})"
