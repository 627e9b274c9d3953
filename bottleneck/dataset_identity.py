"""Whether a folder or label file may write a dataset's manifest under its name: not over another
folder's or file's of that name, and not over a moved one's unless the contents say it is the same.
A folder's dataset is bound to the folder; a label file's to the file (its images may share a folder
with another label file's)."""

from __future__ import annotations

import os
from pathlib import Path

from .datasets import Dataset, suggest_name
from .errors import ExtractError
from .label_files import LabelColumns, source_from_json
from .shards import expand_braces, is_shard_input
from .store import Store


def identity(dataset: Dataset) -> Path | str:
    """What a dataset is bound to: its label file or shard pattern, or its folder."""
    return source_from_json(dataset.source)[0] if dataset.source else dataset.root


def _stored_identity(store: Store, name: str) -> Path | str:
    source = store.dataset_source(name)
    return source_from_json(source)[0] if source else store.dataset_root(name)


def input_present(data: Path | str) -> bool:
    """Whether a dataset's input is there to read again: its folder or label file, its shard pattern's
    first shard. A URL is taken as there: asking costs a request, and each read that fails is reported."""
    if isinstance(data, str):
        return True
    first = expand_braces(str(data))[0] if is_shard_input(str(data)) else str(data)
    return Path(first).exists()


def dataset_input(store: Store, name: str) -> tuple[Path | str, LabelColumns | None]:
    """What `extract_dataset` reads to bring dataset `name` up to date (compare, audit): its folder,
    or its label file and columns."""
    source = store.dataset_source(name)
    return source_from_json(source) if source else (store.dataset_root(name), None)


def check_same_dataset(store: Store, name: str, dataset: Dataset, cache: Path) -> None:
    """Two folders (or label files) of one name must not replace each other's manifest (one that
    moved may: `check_moved`, once its files are hashed)."""
    if name not in store.datasets():
        return
    old, new = _stored_identity(store, name), identity(dataset)
    if old != new and input_present(old):
        raise ExtractError(f"{cache} already holds a dataset named {name!r}, from {old}; pass --name to keep "
                           f"both (e.g. --name {_other_name(new, name)})")


def check_moved(store: Store, name: str, dataset: Dataset, cache: Path, shas: set[str]) -> None:
    """A dataset whose folder is gone follows a new folder only when the contents say it moved there:
    at least half of either side's images are in the other (so images added or removed since keep it)."""
    new = identity(dataset)
    if name not in store.datasets() or _stored_identity(store, name) == new:
        return
    old = {r.sha256 for r in store.read_manifest(name) if r.sha256}
    shared = len(old & shas)
    if shared and (2 * shared >= len(shas) or 2 * shared >= len(old)):
        return
    raise ExtractError(f"{cache} already holds a dataset named {name!r}, from {_stored_identity(store, name)} (gone "
                       f"now), with other images than {new}; pass --name to keep both (e.g. --name "
                       f"{_other_name(new, name)})")


def _other_name(root: Path | str, name: str) -> str:
    """A name for a second folder called like `name`: its parent folder's name before it."""
    parent = os.path.basename(os.path.dirname(os.fspath(root).rstrip("/")))
    return suggest_name(f"{parent or 'other'}-{name}")
