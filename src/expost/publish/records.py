"""Where each post was published (gist id, commit, raw URLs): publish/published.json, and the
figure URLs that follow from it."""

from __future__ import annotations

import json
from pathlib import Path

from expost.errors import PublishError
from expost.files import atomic_write_text, sha256_file
from expost.layout import Layout


def published_records(ws: Layout) -> dict:
    """publish/published.json: post name -> where it was published."""
    try:
        return json.loads(ws.published_json.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise PublishError(f"publish/{ws.published_json.name} is not valid JSON ({e}); restore it from git") from None


def save_published(ws: Layout, name: str, record: dict) -> None:
    records = published_records(ws)
    records[name] = record
    atomic_write_text(ws.published_json, json.dumps(records, sort_keys=True, indent=1) + "\n")


def readable_records(ws: Layout) -> dict:
    """published.json for a build: a damaged file (or record) never blocks a build; it only loses
    the pinned figure links (`expost publish gist` still refuses it, with how to fix it)."""
    try:
        records = published_records(ws)
    except PublishError:
        return {}
    return {k: v for k, v in records.items() if isinstance(v, dict)} if isinstance(records, dict) else {}


def pinned(record: dict, name: str) -> tuple[str, str | None] | None:
    """(raw URL, sha256 it was published with) of a file a publish record holds: only an http(s)
    URL, whatever else a damaged or hand-edited record says; None when there is none. The URL
    still serves a file whose bytes have that sha256."""
    raw_urls = record.get("raw_urls") if isinstance(record.get("raw_urls"), dict) else {}
    files = record.get("files") if isinstance(record.get("files"), dict) else {}
    raw = raw_urls.get(name)
    return (raw, files.get(name)) if isinstance(raw, str) and raw.startswith(("https://", "http://")) else None


def image_urls(ws: Layout, post: str, out: Path):
    """figures/x.png -> absolute URL: the published gist's pinned raw URL while the figure is unchanged
    (an http(s) one: a record holding anything else is ignored), else image_base_url from expost.toml,
    else None (the link stays relative and export warns)."""
    record = readable_records(ws).get(post) or {}
    base = ws.settings.get("image_base_url")

    def url(src: str) -> str | None:
        hit = pinned(record, Path(src).name)
        if hit and (out / src).is_file() and hit[1] == sha256_file(out / src):
            return hit[0]
        if base:
            return f"{str(base).rstrip('/')}/{post}/{src}"
        return None

    return url
