"""Specs that read like Python: PARAMS, SWEEP, SEEDS, OUTPUTS and TIMEOUT may use module-level
constants, arithmetic, range, comprehensions and a few builtins, still read without importing the
script (runs/spec_eval.py). The value is the one an import gives; anything else is refused with
file:line, the field and the fix; abuse is refused fast."""

import ast
import signal
import tracemalloc

import pytest
from click.testing import CliRunner

import expost
from expost.cli import cli
from expost.errors import SpecError
from expost.runs.reach import reached_parts
from expost.runs.spec import import_script, load_full, load_static
from expost.runs.spec_eval import Module

PRELUDE = '''
FRACS = [0.25, 0.5]
N = 4
BASE = {"lr": 1e-3, "steps": 100}
NAMES = ("a", "bc")
'''

# Each is evaluated statically and by importing a file that assigns it: the two must agree exactly.
EXPRESSIONS = [
    "[0.0] + FRACS", "list(range(100))", "[10.0 ** -k for k in range(1, 6)]", "[i / 4 for i in range(5)]",
    '{**BASE, "lr": 0.1}', 'BASE | {"steps": 5}', "dict(BASE, steps=N * 25)", "dict(rate=0.5, steps=5)",
    "tuple(FRACS) + (1.0,)", "[*FRACS, 1.0]", "sorted(FRACS + [0.1], reverse=True)",
    "(min(FRACS), max(FRACS), sum(FRACS), len(FRACS), min(3, N), max([], default=7))",
    '(round(2.5), round(0.125, 2), round(1234, -2), abs(-N), float("1e-3"), float("nan"), int("12"), int(3.9), '
    "int(1e20), str(0.1), str(N))",
    "(7 / 2, 7 // 2, -7 // 2, 7 % 3, -7 % 3, 7.5 % 2, 2 ** -1, 2 ** 10, 10 ** 20, 2 ** 0.5, -2 ** 0.5, -N, +N)",
    "(0.1 + 0.2, 0.1 * 3, 1e-3 * 3, 1e308 * 10, 3 - 0.1, (-8) ** (1 / 3), True + 1)",
    "f\"lr{BASE['lr']:.0e}-{N:03d}-{NAMES[0]!r}-{FRACS}-{N / 3:.3f}\"",
    "{name: len(name) for name in NAMES}", "{k: v * 2 for k, v in [('a', 1), ('b', 2)]}",
    "[(a, b) for a in range(4) for b in range(a) if (a + b) % 2]",
    "[x for x in FRACS + [0.0] if x > 0.3 and x < 1 or not x]",
    '(FRACS[::-1], FRACS[0], NAMES[-1], "abcdef"[1:4:2], BASE["steps"], list(range(10))[2:5])',
    '"cuda" if N > 8 else "cpu"', "(1 < N <= 4, N in range(10), 3 not in FRACS, FRACS == [0.25, 0.5])",
    '(list("abc"), (1, 2) * 2, "ab" * 3, 2 * [0.0], [] * 5, N * "-")',
    "(max(x * x for x in range(5)), sum(k for k in range(10)), sorted(-k for k in range(3)), "
    "tuple(k for k in NAMES), list(x for x in range(3) if x), dict((k, 1) for k in NAMES))",
    "({1, 2} | {3}, {1, 2}, (), [], {})", "[N for N in range(2)] + [N]", "[[k] * k for k in range(4)]",
    "[0.0] * 3 + [1.0]", "1 if [] else 2", "0 or [] or 'last'", "1 and 2 and 3",
    "(None, True, False, ..., b'x', 2j, 1_000_000, 0x10, 1e-7)",
]


def _static_and_imported(tmp_path, source: str, name: str = "VALUE"):
    path = tmp_path / "consts_mod.py"
    path.write_text(source)
    module = Module(ast.parse(source))
    static = module.value(module.final(name))
    imported = getattr(import_script(path, "expost_test_consts_mod"), name)
    return static, imported


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_values_equal_what_an_import_gives(tmp_path, expression):
    static, imported = _static_and_imported(tmp_path, f"{PRELUDE}\nVALUE = {expression}\n")
    assert type(static) is type(imported)
    assert repr(static) == repr(imported), expression


def test_constants_follow_python_order_and_rebinding(tmp_path):
    source = "N = 1\nA = [N]\nN = N + 1\nB = [N, *A]\nN = 10\nVALUE = (A, B, N)\n"
    static, imported = _static_and_imported(tmp_path, source)
    assert static == imported == ([1], [2, 1], 10)


def test_main_guard_and_function_locals_do_not_count(tmp_path):
    source = ('N = 3\nVALUE = [N] * 2\n\ndef f():\n    N = 99\n    return N\n\n'
              'if __name__ == "__main__":\n    N = 5\n    VALUE = None\n')
    static, imported = _static_and_imported(tmp_path, source)
    assert static == imported == [3, 3]


RUN = '''
OUTPUTS = {"y": "scalar: the value"}


def run(cfg, seed):
    return {"y": 1.0}
'''


def _spec(tmp_path, source: str):
    path = tmp_path / "exp.py"
    path.write_text(source + RUN)
    return load_static(path)


def test_spec_fields_accept_python_over_constants(tmp_path):
    spec = _spec(tmp_path, '''
FRACS = [0.25, 0.5]
LRS = [10.0 ** -k for k in range(1, 6)]
BASE = {"lr": LRS[2], "steps": 100}
PARAMS = {**BASE, "frac": 0.0, "n": len(FRACS) * 2, "tag": f"n{len(LRS)}"}
SWEEP = [{"frac": [0.0] + FRACS}, {"lr": sorted(LRS)[:2]}, {"n": list(range(1, 4))}]
SEEDS = max(3, 2 * len(FRACS))
TIMEOUT = 60 * 10
''')
    assert spec.params == {"lr": 1e-3, "steps": 100, "frac": 0.0, "n": 4, "tag": "n5"}
    assert spec.sweep == [{"frac": [0.0, 0.25, 0.5]}, {"lr": [1e-5, 1e-4]}, {"n": [1, 2, 3]}]
    assert spec.seeds == 4 and spec.timeout == 600.0


# (source before RUN, fragments of the one message: file:line, field, what, fix)
REFUSED = {
    "attribute": ('import numpy as np\nPARAMS = {"x": 0.0}\nSWEEP = {"x": list(np.linspace(0, 1, 5))}',
                  ["exp.py:3", "SWEEP", "`np.linspace(0, 1, 5)`", "attribute", "Fix: write it as a literal",
                   "comprehensions"]),
    "attribute via a constant": ('import numpy as np\nXS = np.linspace(0, 1, 5).tolist()\nPARAMS = {"x": 0.0}\n'
                                 'SWEEP = {"x": XS}', ["exp.py:2", "SWEEP (through XS)", "attribute", "literal"]),
    "another function": ('def grid():\n    return [1, 2]\nPARAMS = {"x": 1}\nSWEEP = {"x": grid()}',
                         ["exp.py:4", "SWEEP", "`grid()`", "calls `grid`", "literal"]),
    "imported name": ("from _consts import FRACS\nPARAMS = {'x': 0.0}\nSWEEP = {'x': FRACS}",
                      ["exp.py:3", "SWEEP", "FRACS is imported (line 1)", "assign FRACS once at the top level"]),
    "assigned in a function": ('def setup():\n    FRACS = [0.1]\n    return FRACS\nPARAMS = {"x": 0.0}\n'
                               'SWEEP = {"x": FRACS}',
                               ["exp.py:5", "FRACS is not defined at the top level",
                                "assigned only inside a function or block, line 2", "assign `FRACS = ...`"]),
    "global in a function": ('FRACS = [0.1]\ndef setup():\n    global FRACS\n    FRACS = [0.2]\n'
                             'PARAMS = {"x": 0.0}\nSWEEP = {"x": FRACS}',
                             ["exp.py:6", "FRACS is assigned inside a function (`global`) (line 3)"]),
    "conditional": ('import os\nif os.environ.get("BIG"):\n    N = 100\nelse:\n    N = 10\nPARAMS = {"n": N}',
                    ["exp.py:6", "PARAMS", "N is assigned inside an if (line 3)", "do not change it afterwards"]),
    "for loop": ('for N in range(3):\n    pass\nPARAMS = {"n": N}', ["exp.py:3", "N is assigned by a for loop"]),
    "unpacked": ('A, B = 1, 2\nPARAMS = {"n": A}', ["exp.py:2", "A is unpacked from a sequence (line 1)"]),
    "used before assigned": ('PARAMS = {"n": N}\nN = 3', ["exp.py:1", "N is used before it is assigned (line 2)",
                                                          "move `N = ...` above line 1"]),
    "undefined": ('PARAMS = {"n": M}', ["exp.py:1", "M is not defined at the top level"]),
    "changed in place": ('FRACS = [0.1]\nFRACS.append(0.2)\nPARAMS = {"x": 0.0}\nSWEEP = {"x": FRACS}',
                         ["exp.py:4", "FRACS is changed in place (`FRACS.append(0.2)`) (line 2)"]),
    "changed through an alias": ('FRACS = [0.1]\nMORE = FRACS\nMORE += [0.2]\nPARAMS = {"x": 0.0}\n'
                                 'SWEEP = {"x": FRACS}', ["exp.py:5", "FRACS is shared with MORE", "line 3"]),
    "params changed after": ('PARAMS = {"x": 1}\nPARAMS["x"] = 2', ["exp.py:2", "PARAMS is changed in place",
                                                                    "do not change it afterwards"]),
    "params in a block": ('try:\n    PARAMS = {"x": 1}\nexcept ImportError:\n    PARAMS = {"x": 2}',
                          ["exp.py:2", "PARAMS is assigned inside a try block"]),
    "dunder": ('PARAMS = {"x": __file__}', ["exp.py:1", "`__file__`: dunder names are not allowed"]),
    "dunder in a comprehension": ('PARAMS = {"x": [__k for __k__ in range(2)]}', ["exp.py:1", "dunder"]),
    "lambda": ('PARAMS = {"x": (lambda: 1)()}', ["exp.py:1", "calls `lambda: 1`"]),
    "star import": ('from math import *\nPARAMS = {"x": list(range(3))}', ["exp.py:2", "import *` on line 1"]),
    "rebound builtin": ('def range(n):\n    return [0]\nPARAMS = {"x": list(range(3))}',
                        ["exp.py:3", "calls range, which this file rebinds (defined by def/class, line 1)"]),
    "builtin as a value": ('PARAMS = {"x": 1}\nSWEEP = {"x": [float]}', ["exp.py:2", "`float` is a function"]),
    "raises": ('PARAMS = {"x": 1 / 0}', ["exp.py:1", "`1 / 0` raises ZeroDivisionError", "fix the expression"]),
    "type error": ('FRACS = [0.1]\nPARAMS = {"x": 0.0}\nSWEEP = {"x": FRACS + (0.2,)}',
                   ["exp.py:3", "raises TypeError: can only concatenate list"]),
    "identity": ('PARAMS = {"x": 1 is 1}', ["exp.py:1", "`is` compares identity"]),
    "percent formatting": ('PARAMS = {"x": "%d" % 3}', ["exp.py:1", "%-formatting", "f-string"]),
    "bare generator": ('XS = (k for k in range(3))\nPARAMS = {"x": 0}\nSWEEP = {"x": list(XS)}',
                       ["exp.py:1", "SWEEP (through XS)", "use a list comprehension"]),
    "walrus": ('PARAMS = {"x": (y := 3)}', ["exp.py:1", "PARAMS", "`(y := 3)` assigns with :="]),
    "method": ('PARAMS = {"x": "a,b".split(",")}', ["exp.py:1", "attribute"]),
    "duplicate key in a constant": ('BASE = {"x": 1, "x": 2}\nPARAMS = {**BASE}',
                                    ["exp.py:1", "PARAMS (through BASE)", "duplicate key 'x'", "keep one 'x'"]),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_forms_name_file_line_field_and_fix(tmp_path, name):
    source, fragments = REFUSED[name]
    with pytest.raises(SpecError) as e:
        _spec(tmp_path, source)
    message = str(e.value)
    assert message.count("Fix:") == 1, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


ABUSE = {
    "huge range": 'PARAMS = {"x": list(range(10**12))}',
    "huge range, lazily": 'R = range(10**30)\nPARAMS = {"x": len(R)}',
    "string repeat": 'PARAMS = {"x": "x" * 10**9}',
    "list repeat": 'PARAMS = {"x": [0.0] * 10**9}',
    "int power": 'PARAMS = {"x": 2 ** 10**9}',
    "int power tower": 'PARAMS = {"x": 10 ** 10 ** 10}',
    "int product": 'A = 2 ** 4000\nPARAMS = {"x": A * A}',
    "nested comprehension": 'PARAMS = {"x": [a * b for a in range(10**5) for b in range(10**5)]}',
    "shared rows": 'A = [0] * 1000\nB = [A] * 1000\nC = [B] * 1000\nPARAMS = {"x": 1}\nSWEEP = {"x": C}',
    "comprehension of shared rows": 'A = [0] * 50000\nPARAMS = {"x": [A for _ in range(10**5)]}',
    "printing shared rows": 'A = [[0] * 300] * 300\nPARAMS = {"x": str(A)}',
    "format width": 'PARAMS = {"x": f"{1:>1000000000}"}',
    "format precision": 'PARAMS = {"x": f"{1.0:.1000000000f}"}',
    "round to many digits": 'PARAMS = {"x": round(5, -10**9)}',
    "sum of lists": 'PARAMS = {"x": sum([[0] * 1000] * 1000, [])}',
    "int from a long string": 'PARAMS = {"x": int("9" * 5000)}',
    "many heavy constants": "C0 = 0\n" + "\n".join(f"C{i} = C{i - 1} + len([k for k in range(40000)])"
                                                    for i in range(1, 40)) + '\nPARAMS = {"x": C39}',
    "comparisons of big values": 'A = list(range(90000))\nPARAMS = {"x": [A == A for _ in range(1000)]}',
    "deep constant chain": "A0 = [0]\n" + "\n".join(f"A{i} = [A{i - 1}, A{i - 1}]" for i in range(1, 60))
                           + '\nPARAMS = {"x": 1}\nSWEEP = {"x": [A59]}',
}


@pytest.mark.parametrize("name", ABUSE)
def test_abuse_is_refused_by_the_budget_and_small(tmp_path, name):
    # Refused by the evaluator's item and step budgets, not by a clock (0.15 s at most when measured;
    # no timing threshold here): the alarm only turns a regression that would hang into a failure.
    def hung(signum, frame):
        raise AssertionError(f"{name}: still evaluating after 120 s: a budget is not enforced")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with pytest.raises(SpecError) as e:
            _spec(tmp_path, ABUSE[name])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "exp.py:" in str(e.value) and "Fix:" in str(e.value)
    if name != "many heavy constants":  # (the whole work budget: seconds under tracemalloc; small values)
        tracemalloc.start()
        try:
            with pytest.raises(SpecError):
                _spec(tmp_path, ABUSE[name])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20, (name, peak)


# --- freshness: the value decides the run keys, not the expression ----------------------------------

EXPERIMENT = '''"""Constants shared by the spec and the claims."""
FRACS = [0.25, 0.5]
WIDTHS = list(range(1, 3))
SCALE = 3.0
PARAMS = {"frac": 0.0, "width": 1}
SWEEP = {"frac": [0.0] + FRACS, "width": [2 ** k for k in WIDTHS]}
SEEDS = 3
OUTPUTS = {"y": "scalar: frac * width * SCALE + seed"}
CLAIMS = [{"claim": "y grows with frac.", "where": {"width": 2 ** WIDTHS[0]},
           "check": lambda r: r.where(frac=FRACS[-1]).scalar("y") > r.where(frac=0.0).scalar("y")},
          {"claim": "Each run saw the swept values.", "where": {"frac": FRACS[-1], "width": 2 ** WIDTHS[-1]},
           "check": lambda r: [float(y) for y in r.scalar("y")] == [FRACS[-1] * 4 * SCALE + s for s in (1, 2, 3)]}]


def run(cfg, seed):
    return {"y": cfg["frac"] * cfg["width"] * SCALE + seed}
'''


@pytest.fixture
def py_ws(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    (root / "experiments").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "experiments" / "fr.py").write_text(EXPERIMENT)
    monkeypatch.chdir(root)
    return root


def _cli(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _explain() -> dict[str, set]:
    """why -> the configs with that answer."""
    out: dict[str, set] = {}
    for line in _cli("run", "fr", "--explain").output.splitlines():
        _, config, _, why = line.split("\t")
        out.setdefault(why.split(":")[0], set()).add(config)
    return out


def _edit(root, old, new):
    path = root / "experiments" / "fr.py"
    assert old in path.read_text(), old
    path.write_text(path.read_text().replace(old, new))


def test_run_and_check_a_python_spec_end_to_end(py_ws):
    r = _cli("run", "-q", "-j", "1")
    assert r.exit_code == 0, r.output
    assert "18 planned run(s): 0 cached, 18 ran, 0 failed" in r.stderr
    configs = {f"frac={f},width={w}" for f in (0.0, 0.25, 0.5) for w in (2, 4)}
    assert _explain() == {"cached": configs}
    spec = load_full(py_ws / "experiments" / "fr.py")  # the import agrees with the static read
    assert spec.module.SWEEP == {"frac": [0.0, 0.25, 0.5], "width": [2, 4]} and spec.params == spec.module.PARAMS
    verdicts = expost.Workspace(py_ws).check("fr")  # the second claim compares each run's y with the values
    assert [v.verdict for v in verdicts] == ["holds", "holds"]


def test_a_changed_constant_reruns_only_the_configs_it_changes(py_ws):
    assert _cli("run", "-q", "-j", "1").exit_code == 0
    _edit(py_ws, "FRACS = [0.25, 0.5]", "FRACS = [0.25, 0.75]")
    assert _explain() == {"cached": {f"frac={f},width={w}" for f in (0.0, 0.25) for w in (2, 4)},
                          "new config": {"frac=0.75,width=2", "frac=0.75,width=4"}}


@pytest.mark.parametrize("old, new", [
    ("FRACS", "FRACTIONS"),                                            # a rename, same values
    ("[0.0] + FRACS", "[0.0, *FRACS]"),                                # another expression, same values
    ("WIDTHS = list(range(1, 3))", "WIDTHS = [1, 2]"),                 # a constant run does not reach
    ("[2 ** k for k in WIDTHS]", "[2, 4]"),
])
def test_same_values_written_otherwise_rerun_nothing(py_ws, old, new):
    assert _cli("run", "-q", "-j", "1").exit_code == 0
    _edit(py_ws, old, new)
    assert set(_explain()) == {"cached"}


def test_a_constant_run_reaches_reruns_everything(py_ws):
    assert _cli("run", "-q", "-j", "1").exit_code == 0
    _edit(py_ws, "SCALE = 3.0", "SCALE = 2.0")
    assert set(_explain()) == {"source changed"}


def test_pure_constants_count_only_when_run_reaches_them(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text('KS = list(range(3))\nHIDDEN = sorted([3, 1])\nSIDE = print("imported")\n'
                    'PARAMS = {"k": 0}\nOUTPUTS = {"y": "scalar: y"}\n\n'
                    'def run(cfg, seed):\n    return {"y": sum(KS)}\n')
    parts = set(reached_parts(path))
    assert {"exp.KS", "exp.SIDE", "exp.run"} <= parts and "exp.HIDDEN" not in parts


def test_an_import_that_disagrees_with_the_static_read_fails_before_any_run(py_ws):
    """A value changed by code the static read cannot follow (a function called at module level)."""
    _edit(py_ws, "SEEDS = 3\n", 'SEEDS = 3\n\ndef widen(p):\n    p["width"] = 3\n\nwiden(PARAMS)\n')
    r = _cli("run", "-q", "-j", "1")
    assert r.exit_code == 1
    assert "fr.py: PARAMS: importing the script gives {'frac': 0.0, 'width': 3}" in r.output, r.output
    assert "reads it without importing as {'frac': 0.0, 'width': 1}" in r.output
    assert "ran" not in r.stderr

