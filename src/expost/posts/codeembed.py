"""The code helper's engine: the exact source of a function, class or marked region of a script.

A region is marked in the experiment file with comment lines:
    # region: training-step
    ...
    # endregion
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from expost.errors import TemplateError

REGION_START = re.compile(r"^\s*#\s*region:\s*(?P<name>[\w.-]+)\s*$")
REGION_END = re.compile(r"^\s*#\s*endregion\b")


def symbols(source: str) -> dict[str, tuple[int, int]]:
    """Top-level functions and classes (and methods as Class.method) -> (first line, last line), 1-based."""
    tree = ast.parse(source)
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out[node.name] = (start, node.end_lineno)
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        s = min([sub.lineno] + [d.lineno for d in sub.decorator_list])
                        out[f"{node.name}.{sub.name}"] = (s, sub.end_lineno)
    return out


def regions(source: str) -> dict[str, tuple[int, int]]:
    """Marked regions -> (first line, last line) of their content, 1-based."""
    out, open_ = {}, None
    for i, line in enumerate(source.splitlines(), start=1):
        m = REGION_START.match(line)
        if m:
            open_ = (m.group("name"), i + 1)
        elif REGION_END.match(line) and open_:
            out[open_[0]] = (open_[1], i - 1)
            open_ = None
    return out


def extract(path: Path, name: str | None = None, region: str | None = None) -> str:
    """The exact source lines (dedented for methods and regions keep their own indentation)."""
    source = Path(path).read_text()
    lines = source.splitlines()
    if region is not None:
        found = regions(source)
        if region not in found:
            raise TemplateError(f"code: no region {region!r} in {Path(path).name}; "
                                f"regions: {', '.join(found) or '(none: mark one with # region: NAME / # endregion)'}")
        a, b = found[region]
    else:
        found = symbols(source)
        if name not in found:
            raise TemplateError(f"code: no function or class {name!r} in {Path(path).name}; "
                                f"defined: {', '.join(found) or '(none)'}")
        a, b = found[name]
    chunk = lines[a - 1:b]
    indent = min((len(l) - len(l.lstrip()) for l in chunk if l.strip()), default=0)
    return "\n".join(l[indent:] for l in chunk)
