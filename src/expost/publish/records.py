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


def image_urls(ws: Layout, post: str, out: Path):
    """figures/x.png -> absolute URL: the published gist's pinned raw URL while the figure is unchanged,
    else image_base_url from expost.toml, else None (the link stays relative and export warns)."""
    record = published_records(ws).get(post) or {}
    base = ws.settings.get("image_base_url")

    def url(src: str) -> str | None:
        name = Path(src).name
        raw = record.get("raw_urls", {}).get(name)
        if raw and (out / src).is_file() and record.get("files", {}).get(name) == sha256_file(out / src):
            return raw
        if base:
            return f"{str(base).rstrip('/')}/{post}/{src}"
        return None

    return url
