"""Where a script's parameters are: top-level constants, argparse defaults, or a config dataclass's
fields; and, for the last two, the statement that makes the config object (`args =
parser.parse_args()`, `cfg = Config()`), which run(cfg, seed) replaces by one made from cfg."""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field

from expost.adopt.source import MARKER, Source, comments
from expost.runs.spec_eval import is_main_guard  # noqa: F401  (adopt/ reads as the spec loader does)

SEED_NAMES = {"seed", "random_seed", "rng_seed"}  # a constant or argument with this name becomes each run's seed
MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "update", "add",
            "setdefault", "popitem", "discard"}
SCALARS = (bool, int, float, str)
CONFIG_NAMES = re.compile(r"(?i)config|cfg|args|param|setting|hparam|hyper|option|opts")  # a dataclass that is a config
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


@dataclass
class Param:
    name: str
    value: object
    text: str  # as PARAMS shows it: the literal as written, or the computed value
    comment: str = ""
    above: tuple[str, ...] = ()  # full-line comments written above it
    bind: bool = False  # a constant: run() binds its name from cfg (argparse and dataclass values go in the object)


@dataclass
class Maker:
    """The statement that makes the config object, and what run(cfg, seed) makes instead."""

    stmt: ast.stmt
    kind: str  # "argparse" | "dataclass"
    binding: str  # the statement run() starts with, from cfg and seed
    to_cfg: str  # the config object as a dict, for the original entry point to call run() with
    seed: str  # the seed the original entry point passes to run()
    owner: ast.AST | None  # the function or `if __name__ == "__main__":` block holding stmt; None: module level


@dataclass
class Found:
    params: list[Param] = field(default_factory=list)
    seed_names: list[str] = field(default_factory=list)  # constants that now hold each run's seed
    maker: Maker | None = None
    taken: dict = field(default_factory=dict)  # top-level statements that became PARAMS -> their comment lines
    changed: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)


def parents(tree: ast.AST) -> dict:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def literal(node: ast.AST):
    """(True, value) for a literal or constant arithmetic (`2 ** 9`, `1 / 3`); (False, None) otherwise."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return True, _arith(node)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return False, None


def _arith(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _arith(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        left, right = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        value = _ARITH[type(node.op)](left, right)
        if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError("not a finite real number")
        return value
    raise ValueError("not constant arithmetic")


def is_value(v) -> bool:
    """What PARAMS may hold: a number, string or bool, or a list of them."""
    return isinstance(v, SCALARS) or (isinstance(v, list) and all(isinstance(x, SCALARS) for x in v))


def shown(src: Source, node: ast.AST, value) -> str:
    """The literal as the user wrote it when it fits on one line and is a literal; else its value."""
    text = src.segment(node)
    if "\n" not in text and _plain(node):
        return text
    return repr(value)


def _plain(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError):
        return False


def find(src: Source) -> Found:
    """The parameters and, if there is one, the statement that makes the config object."""
    found = Found()
    up = parents(src.tree)
    found.maker = _argparse(src, up, found) or _dataclass(src, up, found)
    if found.maker is None or found.maker.owner is None:
        _constants(src, found)
    return found


# --- top-level constants -----------------------------------------------------------------------------


def _constants(src: Source, found: Found) -> None:
    stores, mutated = _stores(src.tree)
    notes = comments(src.text)
    known = {p.name for p in found.params}
    for stmt in src.tree.body:
        target, value = _single_assignment(stmt)
        if target is None or target in known:
            continue
        where = src.where(stmt.lineno)
        if target == "cfg":
            found.undecided.append(f"{where}: cfg = ... is left in the code and is not a parameter: run(cfg, seed) "
                                   "uses that name for its config; rename it to make it one")
            continue
        if target.lower() in SEED_NAMES:
            found.seed_names.append(target)
            found.taken[stmt] = ()
            found.changed.append(f"{where}: {target} = {src.segment(value)} now holds each run's seed (1, 2, ...)")
            continue
        ok, v = literal(value)
        constant_like = target.isupper()
        if not ok:
            if constant_like:
                found.undecided.append(f"{where}: {target} = {src.segment(value)} is not a literal, so it is not "
                                       "a parameter (left in the code; to sweep it, give it a literal value)")
            continue
        if not is_value(v) or v in ([], ""):
            if constant_like and v not in ([], ""):
                found.undecided.append(f"{where}: {target} = {src.segment(value)}: PARAMS holds numbers, strings, "
                                       "bools and lists of them, so it stays in the code")
            continue
        if stores.get(target, 0) > 1 or target in mutated:
            if constant_like:
                found.undecided.append(f"{where}: {target} is changed later, so it is not a parameter "
                                       "(left in the code)")
            continue
        above = _comments_above(src, stmt.lineno)
        found.params.append(Param(target, v, shown(src, value, v), notes.get(stmt.lineno, ""), above, bind=True))
        found.taken[stmt] = above


def _single_assignment(stmt: ast.stmt):
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def _stores(tree: ast.AST) -> tuple[dict, set]:
    """How often each name is bound anywhere, and the names changed in place (x.append, x[i] = ...)."""
    stores: dict = {}
    mutated: set = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            stores[node.id] = stores.get(node.id, 0) + 1
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name):
            mutated.add(node.value.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.attr in MUTATORS:
            mutated.add(node.func.value.id)
    return stores, mutated


def _comments_above(src: Source, line: int) -> tuple[str, ...]:
    """The full-line comments directly above `line` (not cell markers): they describe the constant."""
    lines = src.lines
    out: list[str] = []
    i = line - 2
    while i >= 0 and lines[i].lstrip().startswith("#") and not MARKER.match(lines[i]):
        out.insert(0, lines[i].strip())
        i -= 1
    return tuple(out)


# --- argparse ----------------------------------------------------------------------------------------


def _argparse(src: Source, up: dict, found: Found) -> Maker | None:
    calls = [n for n in ast.walk(src.tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in ("parse_args", "parse_known_args")]
    if not calls:
        return None
    stmt = _statement(calls[0], up)
    if isinstance(stmt, ast.Return):  # def get_args(): ...; return parser.parse_args()
        stmt = _caller(src.tree, up, stmt)
    target = _target(stmt) if stmt is not None else None
    if target is None:
        found.undecided.append(f"{src.where(calls[0].lineno)}: the parsed arguments are not assigned to a name "
                               "(`args = parser.parse_args()`), so their defaults are not parameters and the "
                               "parsing stays in run(); assign them and adopt again")
        return None
    extra = _arguments(src, found)
    seed = next((p for p in extra if p.lower() in SEED_NAMES), None)
    fields = [f'"{k}": {v}' for k, v in extra.items() if k != seed] + ["**cfg"] + ([f'"{seed}": seed'] if seed else [])
    made = "argparse.Namespace(**cfg)" if fields == ["**cfg"] else f"argparse.Namespace(**{{{', '.join(fields)}}})"
    tail = ", []" if isinstance(stmt.targets[0], ast.Tuple) else ""
    owner = _owner(stmt, up)
    if owner is None:
        found.changed.append(f"{src.where(stmt.lineno)}: `{src.segment(stmt)}` now makes {target} from cfg, so the "
                             "command line is not read any more: use `expost run NAME --set KEY=VALUE`")
    return Maker(stmt, "argparse", f"{src.segment(stmt.targets[0])} = {made}{tail}", f"vars({target})",
                 f"{target}.{seed}" if seed else "1", owner)


def _arguments(src: Source, found: Found) -> dict:
    """Parameters from add_argument(..., default=...); returns the other arguments: dest -> default text."""
    extra: dict = {}
    kept_out: list[str] = []
    constants = {t: v for t, v in map(_single_assignment, src.tree.body) if t is not None and literal(v)[0]}
    for call in ast.walk(src.tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"):
            continue
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        if isinstance(kw.get("default"), ast.Name) and kw["default"].id in constants:
            kw["default"] = constants[kw["default"].id]  # default=LR, with LR = 1e-3 at the top
        dest = _dest(call, kw)
        if dest is None:
            continue
        ok, value, text = _default(src, kw)
        if dest.lower() in SEED_NAMES:
            extra[dest] = text
            found.changed.append(f"{src.where(call.lineno)}: --{dest} is now each run's seed (1, 2, ...)")
        elif ok and is_value(value):
            found.params.append(Param(dest, value, text, _help(kw)))
        else:
            extra[dest] = text
            kept_out.append(f"--{dest.replace('_', '-')} (default {text})")
    if kept_out:
        found.undecided.append("arguments without a literal default are not parameters; run() gives them their "
                               "defaults: " + ", ".join(kept_out))
    return extra


def _dest(call: ast.Call, kw: dict) -> str | None:
    if isinstance(kw.get("dest"), ast.Constant):
        return kw["dest"].value
    names = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if not names:
        return None
    best = next((n for n in names if n.startswith("--")), names[0])
    return best.lstrip("-").replace("-", "_") or None


def _default(src: Source, kw: dict) -> tuple[bool, object, str]:
    action = kw.get("action")
    if "default" not in kw:
        if isinstance(action, ast.Constant) and action.value in ("store_true", "store_false"):
            value = action.value == "store_true"
            return True, not value, repr(not value)
        return False, None, "None"
    ok, value = literal(kw["default"])
    kind = kw.get("type")
    if ok and isinstance(value, str) and isinstance(kind, ast.Name) and kind.id in ("int", "float"):
        try:  # argparse converts a string default with `type`
            value = {"int": int, "float": float}[kind.id](value)
            return True, value, repr(value)
        except ValueError:
            return False, None, src.segment(kw["default"])
    return ok, value, shown(src, kw["default"], value) if ok else src.segment(kw["default"])


def _help(kw: dict) -> str:
    parts = []
    if isinstance(kw.get("help"), ast.Constant):
        parts.append(str(kw["help"].value))
    if isinstance(kw.get("choices"), (ast.List, ast.Tuple)):
        parts.append("one of " + ", ".join(ast.unparse(e) for e in kw["choices"].elts))
    return "; ".join(parts)


# --- a config dataclass ------------------------------------------------------------------------------


def _dataclass(src: Source, up: dict, found: Found) -> Maker | None:
    classes = {c.name: c for c in src.tree.body if isinstance(c, ast.ClassDef) and _is_dataclass(c)
               and CONFIG_NAMES.search(c.name)}
    if not classes:
        return None
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Call):
            name = _made(node.value, classes)
            if name and _fields(src, classes[name], node.value, found):
                target = node.targets[0].id
                seed = next((p for p in _field_names(classes[name]) if p.lower() in SEED_NAMES), None)
                cfg = f'**{{**cfg, "{seed}": seed}}' if seed else "**cfg"
                return Maker(node, "dataclass", f"{target} = {name}({cfg})", f"vars({target})",
                             f"{target}.{seed}" if seed else "1", _owner(node, up))
    return None


def _is_dataclass(cls: ast.ClassDef) -> bool:
    for d in cls.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        if (isinstance(d, ast.Name) and d.id == "dataclass") or (isinstance(d, ast.Attribute) and d.attr == "dataclass"):
            return True
    return False


def _made(call: ast.Call, classes: dict) -> str | None:
    """The dataclass this call makes: Config(...), or a parser handed the class (tyro.cli(Config))."""
    if isinstance(call.func, ast.Name) and call.func.id in classes:
        return call.func.id
    return next((a.id for a in call.args if isinstance(a, ast.Name) and a.id in classes), None)


def _field_names(cls: ast.ClassDef) -> list[str]:
    return [s.target.id for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]


def _fields(src: Source, cls: ast.ClassDef, call: ast.Call, found: Found) -> bool:
    """Parameters from the fields' defaults (or the values the config is made with)."""
    notes = comments(src.text)
    given = {k.arg: k.value for k in call.keywords if k.arg} if isinstance(call.func, ast.Name) else {}
    kept_out: list[str] = []
    params: list[Param] = []
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        if "ClassVar" in ast.unparse(stmt.annotation):
            continue
        node = given.get(name, _field_default(stmt.value))
        ok, value = literal(node) if node is not None else (False, None)
        if name.lower() in SEED_NAMES:
            found.changed.append(f"{src.where(stmt.lineno)}: {cls.name}.{name} is now each run's seed (1, 2, ...)")
        elif ok and is_value(value):
            if name in given:
                found.changed.append(f"{src.where(call.lineno)}: PARAMS[{name!r}] is {src.segment(node)}, the value "
                                     f"{cls.name} is made with (its field default is ignored)")
            params.append(Param(name, value, shown(src, node, value), notes.get(stmt.lineno, "")))
        else:
            kept_out.append(name)
    if kept_out:
        found.undecided.append(f"{cls.name} fields without a literal default are not parameters (run() leaves them "
                               "at their defaults): " + ", ".join(kept_out))
    found.params += params
    return bool(params)


def _field_default(value: ast.AST | None) -> ast.AST | None:
    """`x: int = 3` -> 3; `x: int = field(default=3)` -> 3; default_factory or no default -> None."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", None)) == "field":
        return next((k.value for k in value.keywords if k.arg == "default"), None)
    return value


# --- where the config is made ------------------------------------------------------------------------


def _statement(node: ast.AST, up: dict) -> ast.stmt:
    while not isinstance(node, ast.stmt):
        node = up[node]
    return node


def _caller(tree: ast.Module, up: dict, ret: ast.Return) -> ast.stmt | None:
    """For `def get_args(): ... return parser.parse_args()`: the statement `args = get_args()`."""
    func = ret
    while func in up and not isinstance(func, ast.FunctionDef):
        func = up[func]
    if not isinstance(func, ast.FunctionDef):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Name) and node.value.func.id == func.name:
            return node
    return None


def _target(stmt: ast.stmt) -> str | None:
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return None
    t = stmt.targets[0]
    if isinstance(t, ast.Tuple) and t.elts and isinstance(t.elts[0], ast.Name):  # args, rest = parse_known_args()
        return t.elts[0].id
    return t.id if isinstance(t, ast.Name) else None


def _owner(stmt: ast.stmt, up: dict) -> ast.AST | None:
    """The function or main guard whose body holds `stmt` directly; None at module level or deeper."""
    parent = up.get(stmt)
    if isinstance(parent, ast.FunctionDef) and stmt in parent.body:
        return parent
    if is_main_guard(parent) and stmt in parent.body:
        return parent
    return None


def module_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in stmt.names}
    return names
