"""Whether a folder may write a dataset's manifest under its name: not over another folder of that
name, and not over a moved one's unless the contents say it is the same folder."""

from __future__ import annotations

from pathlib import Path

from .datasets import suggest_name
from .errors import ExtractError
from .store import Store


def check_same_dataset(store: Store, name: str, root: Path, cache: Path) -> None:
    """Two folders of one name must not replace each other's manifest (a folder that moved may:
    `check_moved`, once its files are hashed)."""
    if name not in store.datasets():
        return
    old = store.dataset_root(name)
    if old != root and old.is_dir():
        raise ExtractError(f"{cache} already holds a dataset named {name!r}, from {old}; pass --name to keep "
                           f"both (e.g. --name {_other_name(root, name)})")


def check_moved(store: Store, name: str, root: Path, cache: Path, shas: set[str]) -> None:
    """A dataset whose folder is gone follows a new folder only when the contents say it moved there:
    at least half of either side's images are in the other (so images added or removed since keep it)."""
    if name not in store.datasets() or store.dataset_root(name) == root:
        return
    old = {r.sha256 for r in store.read_manifest(name) if r.sha256}
    shared = len(old & shas)
    if shared and (2 * shared >= len(shas) or 2 * shared >= len(old)):
        return
    raise ExtractError(f"{cache} already holds a dataset named {name!r}, from {store.dataset_root(name)} (gone now), "
                       f"with other images than {root}; pass --name to keep both (e.g. --name {_other_name(root, name)})")


def _other_name(root: Path, name: str) -> str:
    """A name for a second folder called like `name`: its parent folder's name before it."""
    return suggest_name(f"{root.parent.name or 'other'}-{name}")
