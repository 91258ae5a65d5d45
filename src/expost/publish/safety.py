"""The secret scan: run before every export and publish. Refuses, with file and line, anything
that looks like a credential or an absolute path into someone's home folder."""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

from expost.errors import PublishError

PATTERNS = [
    ("GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("AWS secret access key", re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*\S{20,}")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    ("token assignment", re.compile(r"\b[A-Z][A-Z0-9_]*_(?:TOKEN|SECRET|API_KEY|PASSWORD)\s*=\s*['\"]?[^\s'\"]{8,}")),
    ("slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("password in a URL", re.compile(r"\b[a-zA-Z][\w+.-]*://[^/\s:@'\"<>]+:[^/\s@'\"<>]+@[\w.-]")),
    ("home path", re.compile(r"(?:/home/[A-Za-z0-9._-]+/|/Users/[A-Za-z0-9._-]+/|/root/|[A-Za-z]:\\\\?Users\\\\)")),
]
ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark's backslash escapes of ASCII punctuation
DATA_URI = re.compile(r"data:[a-z]+/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=]+")
TEXT_SUFFIXES = {".md", ".py", ".json", ".csv", ".txt", ".html", ".svg", ".j2", ".toml", ".cfg", ".ini", ".yaml", ".yml"}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: looks like a {self.kind}"


def scan_text(text: str, name: str, extra: list[str] = ()) -> list[Finding]:
    found = []
    home = os.path.expanduser("~")
    literal = [s for s in (home if home not in ("/", "") else None, *extra) if s]
    for i, line in enumerate(text.splitlines(), start=1):
        line = DATA_URI.sub("data:", line)
        seen = set()
        for shown in dict.fromkeys((line, as_read(line))):  # as written, and as a reader's renderer shows it
            for kind, pattern in PATTERNS:
                if kind not in seen and pattern.search(shown):
                    seen.add(kind)
                    found.append(Finding(name, i, kind))
            for s in literal:
                if "literal" not in seen and s in shown:
                    seen.add("literal")
                    found.append(Finding(name, i, "secret or home path"))
    return found


def as_read(line: str) -> str:
    """A line as markdown-it (the forum's renderer) and browsers show it: character references
    (`&#95;`, `&lowbar;`, `&#x5f;`) decoded and backslash escapes (`\\_`) dropped, so a token spelled
    `ghp&#95;...` or `ghp\\_...` is seen."""
    decoded = line
    for _ in range(3):  # `&amp;#95;` decodes twice on its way through a forum and a browser
        decoded = html.unescape(decoded)
    return ESCAPE.sub(r"\1", decoded)


def scan(folder: Path, extra: list[str] = ()) -> list[Finding]:
    """Scan every text file under `folder`. `extra`: literal strings that must not appear (a token)."""
    out = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            out += scan_text(text, path.relative_to(folder).as_posix(), list(extra))
    return out


def refuse_secrets(folder: Path, what: str, extra: list[str] = ()) -> None:
    findings = scan(folder, extra)
    if findings:
        shown = "\n".join(f"  {f}" for f in findings[:20])
        raise PublishError(f"{what} refused: the bundle holds something that looks like a secret or a home path:\n"
                           f"{shown}\nRemove it from the experiment or template and rebuild "
                           "(or pass --allow-secrets if you are sure it is safe).")
