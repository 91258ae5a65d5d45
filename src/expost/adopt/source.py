"""Read what `expost adopt` is given: a script (.py, with or without "# %%" cells) or a notebook
(.ipynb, read with nbformat and written out as the same percent-format cells Jupytext writes).

Everything after this reads one text; `where(line)` names a place in the file the user knows
("line 12", or for a notebook "cell 4, line 2")."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from expost.errors import AdoptError

MARKER = re.compile(r"^\s*#\s*%%")  # a percent-format cell marker, as VS Code, Jupytext and Spyder write it
MAGIC = re.compile(r"^\s*(%|!)")  # an IPython magic or shell line: not Python


@dataclass
class Source:
    path: Path
    text: str
    tree: ast.Module
    cells: bool  # written as cells ("# %%" markers, or a notebook)
    notebook_lines: dict = field(default_factory=dict)  # line of `text` -> (cell number, line in cell)
    magics: list = field(default_factory=list)  # IPython lines kept as comments, as places ("cell 2, line 1")

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def where(self, line: int) -> str:
        if line in self.notebook_lines:
            cell, n = self.notebook_lines[line]
            return f"cell {cell}, line {n}"
        return f"line {line}"

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ast.unparse(node)


def read(path: Path) -> Source:
    """The script or notebook at `path`, parsed; AdoptError naming the file and the fix otherwise."""
    path = Path(path)
    if path.suffix == ".ipynb":
        text, lines, magics = _notebook_text(path)
    elif path.suffix == ".py":
        try:
            text, lines, magics = path.read_text(encoding="utf-8-sig"), {}, []
        except UnicodeDecodeError as e:
            raise AdoptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 and adopt it "
                             "again") from None
    else:
        raise AdoptError(f"{path}: expost adopt reads a Python script (.py) or a notebook (.ipynb); "
                         f"save it as one of those and adopt it again")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        at = Source(path, text, ast.Module([], []), False, lines).where(e.lineno or 0)
        raise AdoptError(f"{path.name}, {at}: syntax error: {e.msg}. Fix it (running the file shows the same "
                         "error) and adopt it again") from None
    cells = bool(lines) or any(MARKER.match(line) for line in text.splitlines())
    return Source(path, text, tree, cells, lines, magics)


def _notebook_text(path: Path) -> tuple[str, dict, list]:
    """A notebook as percent-format cells: code as it is (IPython lines as comments), markdown as
    comments under "# %% [markdown]"; and where each line came from."""
    import nbformat  # only notebooks need it

    try:
        nb = nbformat.read(path, as_version=4)
    except (nbformat.reader.NotJSONError, nbformat.ValidationError, ValueError, KeyError) as e:
        raise AdoptError(f"{path}: not a notebook nbformat can read ({type(e).__name__}: {str(e)[:200]}); "
                         "open and save it in Jupyter, or export it as a .py script, and adopt it again") from None
    out: list[str] = []
    origin: dict = {}
    magics: list = []
    for number, cell in enumerate(nb.cells, start=1):
        source = str(cell.get("source", "")).splitlines()
        if cell.get("cell_type") == "code":
            out.append("# %%")
            for n, line in enumerate(source, start=1):
                if MAGIC.match(line):
                    magics.append(f"cell {number}, line {n}: {line.strip()}")
                    line = f"# {line}  # expost: IPython only, kept as a comment"
                out.append(line)
                origin[len(out)] = (number, n)
        else:
            out.append(f"# %% [{cell.get('cell_type', 'markdown')}]")
            out += [f"# {line}".rstrip() for line in source]
        out.append("")
    return "\n".join(out), origin, magics


def comments(text: str) -> dict[int, str]:
    """line -> the comment at the end of that line (without '#'), from the tokens (never inside strings)."""
    found: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


def string_lines(tree: ast.AST) -> set[int]:
    """Lines that continue a multi-line string: re-indenting them would change the string."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and getattr(node, "end_lineno", None) \
                and node.end_lineno > node.lineno and (isinstance(node, ast.JoinedStr) or isinstance(node.value, str)):
            inside.update(range(node.lineno + 1, node.end_lineno + 1))
    return inside
