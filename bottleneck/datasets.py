"""Dataset layouts on disk → manifest entries, and content-hash splits."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError
from .images import find_image_parts

# Folder names the tutorials use for splits, mapped to one canonical name each.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Entry:
    path: str  # POSIX path relative to the dataset root
    label: str
    split: str  # "train" | "val" | "test" | "" when the layout has no split folders


@dataclass(frozen=True)
class Dataset:
    root: Path
    name: str
    layout: str  # "classes": ROOT/<class>/...  |  "splits": ROOT/<split>/<class>/...
    entries: list[Entry]
    ignored: tuple[str, ...] = ()  # images outside any class folder

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.entries})


def dataset_name(root: Path) -> str:
    """A default name for the dataset at `root`: its folder name, safe as an HDF5 group name."""
    return re.sub(r"[^\w.\-]+", "_", root.resolve().name) or "dataset"


def scan_dataset(root: Path, name: str | None = None) -> Dataset:
    """Read `ROOT/<class>/<images>` or `ROOT/{train,val,test}/<class>/<images>`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; pass a folder with one sub-folder per class")
    root = root.resolve()
    files = find_image_parts(root)
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
    return Dataset(root, name or dataset_name(root), layout, entries, ignored)


def hash_split(sha256: str, test_size: float, seed: int = 0) -> str:
    """'test' or 'train' from the image's content hash alone.

    As in TensorFlow's retrain.py, an image's split never depends on which other images exist,
    so adding files to a folder never moves old ones between train and test.
    """
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_size else "train"
