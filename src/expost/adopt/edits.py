"""Changes to the original text by position. Every line keeps its number until the new file is
assembled, so the analysis can speak in the original's lines throughout."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass
class Edits:
    spans: list = field(default_factory=list)  # (line, col, end line, end col, text); cols in UTF-8 bytes, as ast
    before: dict = field(default_factory=dict)  # line -> lines put before it, at its indentation

    def replace(self, node: ast.AST, text: str) -> None:
        """Replace a node's text; a statement over several lines leaves blank lines so numbers hold."""
        pad = "\n" * (node.end_lineno - node.lineno)
        self.spans.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, text + pad))

    def insert(self, line: int, col: int, text: str) -> None:
        self.spans.append((line, col, line, col, text))

    def insert_before(self, line: int, text: str) -> None:
        self.before.setdefault(line, []).append(text)

    def apply(self, text: str) -> list[str]:
        """The edited lines, as many as the original's, plus `before` lines folded into each."""
        lines = text.splitlines(keepends=True)
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line))
        at = lambda line, col: starts[line - 1] + len(lines[line - 1].encode()[:col].decode())
        for line, col, end_line, end_col, new in sorted(self.spans, key=lambda s: (s[0], s[1]), reverse=True):
            a, b = at(line, col), at(end_line, end_col)
            text = text[:a] + new + text[b:]
        edited = text.splitlines()
        return [edited[i] if i < len(edited) else "" for i in range(len(lines))]

    def lines_before(self, line: int, original: str) -> list[str]:
        indent = original[: len(original) - len(original.lstrip())]
        return [indent + t for t in self.before.get(line, [])]
