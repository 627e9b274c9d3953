"""Dataset layouts on disk → manifest entries, and content-hash splits."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError
from .images import find_image_parts, is_image_file_name
from .locations import is_url, list_files

# The store writes a manifest as `<name>.writing` and marks its temporary copies with "~".
WRITING = ".writing"
_NOT_IN_NAMES = "/\\~"  # "/" nests HDF5 groups, a backslash is a path elsewhere, "~" marks temporary copies

# Folder names the tutorials use for splits, mapped to one canonical name each.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Entry:
    path: str  # POSIX path relative to the dataset root
    label: str
    split: str  # "train" | "val" | "test" | "" when the layout has no split folders


@dataclass(frozen=True)
class Dataset:
    root: Path | str  # a folder, or a URL (tar shards' folder)
    name: str
    layout: str  # "classes": ROOT/<class>/...  |  "splits": ROOT/<split>/<class>/...  |  "labels": a label file
    entries: list[Entry]
    ignored: tuple[str, ...] = ()  # images outside any class folder
    versions: dict[str, tuple[int, int]] = field(default_factory=dict)  # a URL's files: path → (size, version), listed
    problems: tuple[tuple[str, str], ...] = ()  # (row, why) for each row of a label file left out
    source: str = ""  # a label file's dataset: the file and its columns, as JSON (label_files.source_json)

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.entries})


def dataset_name(root: Path | str) -> str:
    """A default name for the dataset at `root` (a folder or a URL): its folder name, safe as an HDF5
    group name."""
    folder = root.rstrip("/").rsplit("/", 1)[-1] if isinstance(root, str) else root.resolve().name
    return _safe(folder) or "dataset"


def _safe(text: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", text)


def _name_problem(name: str) -> str:
    """Why `name` cannot be a dataset's group in the cache ("" when it can)."""
    if not name:
        return "a dataset name cannot be empty"
    if not name.strip("."):
        return "a dataset name cannot be only dots"
    if any(c in _NOT_IN_NAMES for c in name):
        return "a dataset name cannot contain '/', '\\' or '~'"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return "a dataset name cannot contain control characters"
    if name.endswith(WRITING):
        return f"a dataset name cannot end in {WRITING}, the cache's name for a manifest being written"
    return ""


def suggest_name(text: str) -> str:
    """A valid dataset name close to `text`, for error messages."""
    name = _safe(text).strip("._")
    if name.endswith(WRITING):
        name = name[: -len(WRITING)] + "-writing"
    return name if name.strip(".") else "dataset"


def check_dataset_name(name: str, root: Path | None = None) -> str:
    """`name`, if the cache can hold a dataset under it; every path that writes a manifest checks
    its name here before it opens the cache. `root`: the name was derived from this folder's name."""
    problem = _name_problem(name)
    if not problem:
        return name
    given, fix = (f"{root}: its folder name {name!r} would name the dataset, and", "pass --name") \
        if root is not None else (f"--name {name!r}:", "pass another --name")
    raise DatasetError(f"{given} {problem}; {fix}, e.g. --name {suggest_name(name)}")


def scan_dataset(root: Path | str, name: str | None = None) -> Dataset:
    """Read `ROOT/<class>/<images>` or `ROOT/{train,val,test}/<class>/<images>`; ROOT a folder, or a
    URL as a str (listed through fsspec)."""
    if isinstance(root, str) and is_url(root):
        root = root.rstrip("/")
        listed = list_files(root)
        files = sorted(tuple(f.split("/")) for f in listed
                       if is_image_file_name(f.rsplit("/", 1)[-1]) and not any(p.startswith(".") for p in f.split("/")))
        return _classes(root, files, _name_for(root, name), listed)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; pass a folder with one sub-folder per class, "
                           "or a label file (.csv, .json, .jsonl, .parquet)")
    root = root.resolve()
    return _classes(root, find_image_parts(root), _name_for(root, name))


def _classes(root: Path | str, files: list[tuple[str, ...]], name: str,
             versions: dict[str, tuple[int, int]] | None = None) -> Dataset:
    """The dataset of `files` (path parts under `root`): a class per folder, under split folders or not."""
    if not files:
        raise DatasetError(f"{root}: no images found (looked for .jpg .jpeg .png .bmp .gif .webp .tif .tiff)")
    top = {parts[0] for parts in files if len(parts) > 1}
    is_split = bool(top) and all(t.lower() in SPLIT_NAMES for t in top)
    entries: list[Entry] = []
    loose: list[str] = []
    depth = 3 if is_split else 2
    for parts in files:
        if len(parts) < depth:
            loose.append("/".join(parts))
            continue
        split = SPLIT_NAMES[parts[0].lower()] if is_split else ""
        label = parts[1] if is_split else parts[0]
        entries.append(Entry("/".join(parts), label, split))
    if not entries:
        where = f"{root}/<split>/<class>/" if is_split else f"{root}/<class>/"
        raise DatasetError(
            f"{root}: {len(loose)} images but no class folders; put each class's images in {where}"
        )
    ignored = tuple(loose)
    layout = "splits" if is_split else "classes"
    return Dataset(root, name, layout, entries, ignored, versions=versions or {})


def _name_for(root: Path | str, name: str | None) -> str:
    """The dataset name given, or the one `root`'s folder name makes; either checked."""
    if name is not None:
        return check_dataset_name(name)
    return check_dataset_name(dataset_name(root), Path(root) if isinstance(root, Path) else None)


def hash_split(sha256: str, test_size: float, seed: int = 0) -> str:
    """'test' or 'train' from the image's content hash alone.

    As in TensorFlow's retrain.py, an image's split never depends on which other images exist,
    so adding files to a folder never moves old ones between train and test.
    """
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_size else "train"
