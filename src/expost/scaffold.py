"""`expost new`: scaffold a workspace, an experiment or a post that run and render out of the box."""

from __future__ import annotations

from pathlib import Path

from expost.errors import WorkspaceError
from expost.posts.post import check_name
from expost.runs.spec import discover
from expost.layout import Layout

HERE = Path(__file__).parent / "scaffold"


def _write_new(path: Path, text: str) -> Path:
    if path.exists():
        raise WorkspaceError(f"{path} already exists; pick another name or delete it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def new_experiment(root: Path, name: str) -> Path:
    check_name(name, "experiment")
    if not name.isidentifier():
        raise WorkspaceError(f"experiment name {name!r} must be a Python identifier (letters, digits, _)")
    text = (HERE / "experiment.py.tmpl").read_text().format(name=name)
    return _write_new(Path(root) / "experiments" / f"{name}.py", text)


def new_post(ws: Layout, name: str, experiment: str | None = None) -> Path:
    check_name(name)
    names = [p.stem for p in discover(ws.experiments_dir)]
    experiment = experiment or (names[0] if names else None)
    if experiment not in names:
        raise WorkspaceError(f"--experiment {experiment!r}: not in experiments/ (available: {', '.join(names) or 'none'}); "
                             "create one with `expost new experiment NAME`")
    text = (HERE / "post.md.j2.tmpl").read_text().format(title=name.replace("-", " ").capitalize(),
                                                         experiment=experiment)
    return _write_new(ws.templates_dir / f"{name}.md.j2", text)


def new_workspace(path: Path) -> tuple[list[Path], bool, str]:
    """The workspace's files, and (ok, note) of putting it under git (gitstate.init_and_commit)."""
    from expost.gitstate import init_and_commit

    root = Path(path)
    if (root / "experiments").exists():
        raise WorkspaceError(f"{root} already holds experiments/: it is a workspace already")
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text(".expost/\n")
    exp = new_experiment(root, "example")
    post = new_post(Layout(root.resolve()), "example-post", "example")
    ok, note = init_and_commit(root, "New expost workspace")
    return [exp, post], ok, note
