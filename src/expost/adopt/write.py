"""The adopted file's text, from a Plan (what the analysis decided), and a starter post for it.

Two shapes:
- cells (a cell script, a notebook, or any script doing its work at module level): imports stay
  at the top, constants become PARAMS, and every other statement moves, in order and with its
  "# %%" markers, into run(cfg, seed), whose first cell binds the constants from cfg and seeds
  every generator. VS Code runs an indented cell whose marker is indented like its code, so the
  file still steps cell by cell (a guard at the top sets cfg and seed for that).
- function (argparse or a config dataclass made inside main() or the main guard): the file stays
  as it was; what followed the making of the config object moves into run(cfg, seed), and the
  original entry point calls run() with the config it made, so `python FILE --lr 0.1` still works.
"""

from __future__ import annotations

import ast
import json

from expost.adopt.params import is_main_guard
from expost.adopt.source import MARKER, string_lines

SEEDS = 5


def first_line(stmt: ast.stmt) -> int:
    return min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])


class Text:
    """The original lines after the edits, with the lines inserted before them, by original number."""

    def __init__(self, plan):
        self.plan = plan
        self.original = plan.src.text.splitlines()
        self.edited = plan.edits.apply(plan.src.text)
        self.strings = string_lines(plan.src.tree)
        self.indent = "\t" if any(line.startswith("\t") for line in self.original) else "    "

    def region(self, start: int, end: int, skip: set = frozenset()) -> list[tuple[str, bool]]:
        """(text, inside a multi-line string) for original lines start..end."""
        out: list[tuple[str, bool]] = []
        for i in range(start, end + 1):
            if i in skip or i > len(self.original):
                continue
            out += [(t, False) for t in self.plan.edits.lines_before(i, self.original[i - 1])]
            out.append((self.edited[i - 1], i in self.strings))
        return out


def shift(lines: list[tuple[str, bool]], old: str, new: str) -> list[str]:
    """Re-indent from `old` to `new`, leaving the inside of multi-line strings as it is."""
    out = []
    for text, in_string in lines:
        if in_string:
            out.append(text)
        elif not text.strip():
            out.append("")
        elif text.startswith(old):
            out.append(new + text[len(old):])
        else:
            out.append(new + text.lstrip())
    return out


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


# --- the parts every adopted file has ---------------------------------------------------------------


def spec_block(plan, cells: bool) -> list[str]:
    out = ["# %% expost: the result spec, read without running this file (edit PARAMS, confirm OUTPUTS, "
           "write CLAIMS)"] if cells else []
    out += ["PARAMS = {" if plan.params else "PARAMS = {}  # expost: no parameters found"]
    for p in plan.params:
        out += [f"    {c}" for c in p.above]
        out.append(f"    {json.dumps(p.name)}: {p.text},".ljust(28) + (f"  # {p.comment}" if p.comment else ""))
        out[-1] = out[-1].rstrip()
    if plan.params:
        out.append("}")
    out += [f"SEEDS = {SEEDS}  # default seeds 1..{SEEDS}; a claim needs 3 or more to be decided",
            "# expost: confirm these outputs. Each was proposed from what the code logs, and says where it was",
            "# found: keep, rename or delete each, and replace its description by what it measures.",
            "OUTPUTS = {"]
    # the description's first clause is the output's label in figures and tables: its name, until the author writes one
    out += [f"    {json.dumps(o.name)}: {json.dumps(f'{o.kind}: {o.name.replace(chr(95), chr(32))}, guessed from {o.found}')},"
            for o in plan.outputs]
    out += ["}", "CLAIMS = [  # expost: write what the runs should show, for example:", f"    # {_example(plan)}", "]"]
    return out


def _example(plan) -> str:
    series = [o.name for o in plan.outputs if o.kind == "series"]
    if series:
        s = series[0]
        return (f'{{"claim": "{s} ends lower than it starts.", '
                f'"check": lambda r: r.series("{s}")[:, -1] < r.series("{s}")[:, 0]}},')
    s = plan.outputs[0].name
    return f'{{"claim": "{s} is positive.", "check": lambda r: r.scalar("{s}") > 0}},'


RECORDER = '''\
class Logged:
    """expost: what the code logged, one list of numbers per key; run() returns them as outputs."""

    def __init__(self):
        self.values = {}

    def keep(self, source, metrics):
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):  # an image, a histogram, a word: not a number
                continue
            self.values.setdefault(source + key, []).append(number)
        return metrics

    def postfix(self, metrics=None, **more):  # tqdm's set_postfix(...) shows them and keeps them here
        return self.keep("postfix ", {**(metrics or {}), **more})

    def series(self, key):
        return self.values.get(key, [])

    def last(self, key):
        return self.values[key][-1] if self.values.get(key) else None

    def clear(self):
        self.values.clear()
'''
WANDB = '''
    # It stands in for wandb, so this file runs without it: wandb.log(...) is kept, the rest does nothing.
    def log(self, metrics=None, step=None, commit=None, **more):
        return self.keep("", {**(metrics or {}), **more})

    def __getattr__(self, name):  # wandb.init(), wandb.finish(), wandb.config, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __setitem__(self, key, value):
        pass
'''


def recorder(plan) -> list[str]:
    if not plan.recorder:
        return []
    text = RECORDER + (WANDB if plan.wandb else "")
    lines = ["", ""] + text.splitlines() + ["", "", "logged = Logged()"]
    if plan.wandb:
        lines.append(f"{plan.wandb} = logged  # expost: instead of wandb (see Logged)")
    return lines


def seeding(plan, ind: str) -> list[str]:
    out = []
    if plan.aliases.get("random"):
        out.append(f"{ind}{plan.aliases['random']}.seed(seed)")
    if plan.aliases.get("numpy"):
        out.append(f"{ind}{plan.aliases['numpy']}.random.seed(seed)")
    if plan.aliases.get("torch"):
        out.append(f"{ind}{plan.aliases['torch']}.manual_seed(seed)")
    if plan.recorder:
        out.append(f"{ind}logged.clear()")
    return out


def returns(plan, ind: str) -> list[str]:
    return [f"{ind}return {{"] + [f"{ind}    {json.dumps(o.name)}: {o.returns}," for o in plan.outputs] + [f"{ind}}}"]


# --- cells -------------------------------------------------------------------------------------------


def cells_file(plan) -> str:
    text = Text(plan)
    ind = text.indent
    head, body = _split_cells(plan, text)
    doc = plan.docstring or [f'"""{plan.title}.', "", f"    python experiments/{plan.name}.py    # the defaults "
                             "(PARAMS) with seed 1; prints each output", '"""']
    guide = [
        f"# expost: adopted from {plan.src.path.name} by `expost adopt`. Its cells now run inside run(cfg, seed),",
        "# with the parameters from cfg and every random generator seeded from `seed`. Step through them by",
        "# hand as before, from the top (VS Code runs an indented cell whose marker is indented like its code).",
        "",
    ]
    run = [
        "",
        "",
        'if __name__ == "__main__":  # stepping through the cells by hand: the defaults and seed 1',
        f"{ind}cfg, seed = dict(PARAMS), 1",
        "",
        "",
        "def run(cfg, seed):",
        f'{ind}"""The cells of {plan.src.path.name} for one config and seed (expost calls this for each run)."""',
        f"{ind}# %% expost: the parameters come from cfg; every random generator is seeded from seed",
        *[f'{ind}{p.name} = cfg[{json.dumps(p.name)}]' for p in plan.params if p.bind],
        *[f"{ind}{n} = seed" for n in plan.seed_names if n != "seed"],
        *seeding(plan, ind),
        "",
        *body,
        "",
        f"{ind}# %% expost: what run returns, one entry per output (stepping by hand: stop before this cell)",
        *returns(plan, ind),
        "",
        "",
        f"# %% expost: `python experiments/{plan.name}.py` runs the defaults with seed 1 and shows each output",
        'if __name__ == "__main__":',
        f"{ind}for name, value in run(dict(PARAMS), seed=1).items():",
        f'{ind}{ind}print(name, f"{{len(value)}} values, last {{float(value[-1]):.4g}}" '
        'if hasattr(value, "__len__") and len(value) else value)',
    ]
    spec = spec_block(plan, cells=True)
    return "\n".join([*doc, *guide, *head, *plan.imports, "", "", *spec, *recorder(plan), *run]) + "\n"


def _split_cells(plan, text: Text) -> tuple[list[str], list[str]]:
    """(module-level lines: imports and what sets them up; run()'s body, indented)."""
    ind = text.indent
    head: list[str] = []
    body: list[str] = []
    prev = plan.docstring_end
    for stmt in plan.src.tree.body:
        start, end = first_line(stmt), stmt.end_lineno
        lead = text.region(prev + 1, start - 1)
        place = plan.place.get(stmt, "run")
        if place == "head":
            head += [t for t, _ in lead + text.region(start, end)]
        elif place == "taken":
            above = set(range(start - len(plan.taken[stmt]), start))
            body += shift(text.region(prev + 1, start - 1, skip=above), "", ind)
        elif place == "guard":
            inner = _indent_of(text.original[stmt.body[0].lineno - 1])
            body += shift(lead, "", ind) + shift(text.region(start + 1, stmt.body[-1].end_lineno), inner, ind)
        elif place == "run":
            body += shift(lead + text.region(start, end), "", ind)
        prev = max(prev, end)
    body += shift(text.region(prev + 1, len(text.original)), "", ind)
    return _tidy(head), _tidy(_drop_empty_cells(body))


def _drop_empty_cells(lines: list[str]) -> list[str]:
    """Markers whose cell lost all its code (its constants went to PARAMS) go; so do blank lines
    right after a marker (VS Code runs an indented cell when its marker is indented like its code)."""
    out: list[str] = []
    for i, line in enumerate(lines):
        if MARKER.match(line):
            rest = next((later for later in lines[i + 1:] if later.strip()), None)
            if rest is None or MARKER.match(rest):
                continue
        elif not line.strip() and out and MARKER.match(out[-1]):
            continue
        out.append(line)
    return out


def _tidy(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


# --- function ----------------------------------------------------------------------------------------


def function_file(plan) -> str:
    text = Text(plan)
    ind = text.indent
    maker, owner = plan.maker, plan.maker.owner
    block_indent = _indent_of(text.original[maker.stmt.lineno - 1])
    moved_end = plan.moved[-1].end_lineno if plan.moved else maker.stmt.end_lineno
    skip = set(range(maker.stmt.end_lineno + 1, moved_end + 1))
    what = f"{owner.name}()" if isinstance(owner, ast.FunctionDef) else "the main block"
    call = (f"{block_indent}{'return ' if isinstance(owner, ast.FunctionDef) else ''}run({maker.to_cfg}, {maker.seed})"
            f"  # expost: the rest of {what} is run(cfg, seed), below")
    run = [
        "def run(cfg, seed):",
        f'{ind}"""What {what} did after making its config, for one config and seed (expost calls this for each'
        f' run)."""',
        f"{ind}{maker.binding}",
        *seeding(plan, ind),
        *shift(text.region(maker.stmt.end_lineno + 1, moved_end), block_indent, ind),
        *returns(plan, ind),
    ]
    guide = [
        f"# expost: adopted from {plan.src.path.name} by `expost adopt`: {what} makes its config as before and calls",
        "# run(cfg, seed) below, which holds the rest; expost calls run() with each config and seed.",
    ]
    header = [*plan.imports, "", "", *guide, *spec_block(plan, cells=False), *recorder(plan)]
    pre: dict = {}
    post = {maker.stmt.end_lineno: [call], plan.header_after: header}
    if is_main_guard(owner):
        pre[first_line(owner)] = [*run, "", ""]
    else:
        post.setdefault(owner.end_lineno, []).extend(["", "", *run])
    out = list(post.pop(0, []))
    for i in range(1, len(text.original) + 1):
        out += pre.get(i, [])
        if i not in skip:
            out += [t for t, _ in text.region(i, i)]
        out += post.get(i, [])
    return "\n".join(out) + "\n"


# --- a starter post ----------------------------------------------------------------------------------

POST = """\
---
title: {title}
summary: {summary}
experiments: [{name}]
---
{{# expost adopt wrote this starter post: it shows every output of {name}. Write the story around it. #}}
{{% set r = results("{name}") %}}
## Setup

One run, exactly as it ran (`python experiments/{name}.py` runs it alone):

{{{{ code("{name}", "run") }}}}

## Results
{{% for output, kind in r.outputs.items() if kind == "series" %}}

{{{{ figure(r, "curves", output, caption=output) }}}}
{{% endfor %}}
{{% set scalars = r.outputs.items() | rejectattr(1, "equalto", "series") | map(attribute=0) | list %}}
{{% if scalars %}}

{{{{ seed_table(r, scalars) }}}}
{{% endif %}}
"""


def post_template(plan) -> str:
    summary = f"{plan.name}, adopted from {plan.src.path.name}, across seeds."
    return POST.format(title=plan.title, summary=summary, name=plan.name)
