"""Label files → the manifest entries a folder gives: `path,label[,split]` rows in CSV, JSON, JSON Lines
or Parquet, paths relative to the file's folder (or `--images DIR`); or id-only sheets whose ids are
file names under `--images`, an extension looked up when the id has none.

A row that cannot be used (a path leaving the folder, a duplicate, a missing file, a bad split) is a
problem reported with its reason, never fatal; a row without a label is kept, for `predict`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import locations
from .datasets import SPLIT_NAMES, Dataset, Entry, check_dataset_name, scan_dataset, suggest_name
from .errors import DatasetError
from .images import IMAGE_SUFFIXES
from .locations import is_url, path_or_url

LABEL_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
LAYOUT = "labels"
PARQUET_HINT = "reading .parquet needs pyarrow: pip install 'bottleneck-features[parquet]'"


@dataclass(frozen=True)
class LabelColumns:
    """How a label file names its images: a `path` column relative to the file's folder (or to
    `images`), or an `id_column` of file names under `images` (default: the file's folder)."""

    images: Path | str | None = None  # a str: a URL
    id_column: str | None = None
    label_column: str = "label"
    path_column: str = "path"
    split_column: str = "split"
    label_key: str | None = None  # tar shards: the key of a sample's json member holding its label


@dataclass(frozen=True)
class _Row:
    where: str  # "line 3", "row 3": how the user finds it in the file
    image: str  # the path or id cell
    label: str
    split: str


def is_label_file(data: Path | str) -> bool:
    if isinstance(data, str) and is_url(data):
        return data.lower().endswith(LABEL_SUFFIXES)
    return Path(data).suffix.lower() in LABEL_SUFFIXES and not Path(data).is_dir()


def source_json(file: Path | str, columns: LabelColumns) -> str:
    """What the cache records of a label file's or shards' dataset, to read it again (`source_from_json`)."""
    fields = asdict(columns)
    fields["images"] = str(columns.images) if columns.images is not None else None
    return json.dumps({"file": str(file), **fields}, sort_keys=True)


def source_from_json(text: str) -> tuple[Path | str, LabelColumns]:
    """(the label file or shard pattern: a Path, or a URL as given; its columns)."""
    fields = json.loads(text)
    file = fields.pop("file")
    images = fields.pop("images")
    return path_or_url(file), LabelColumns(images=path_or_url(images) if images is not None else None, **fields)


def read_label_file(file: Path | str, name: str | None = None, columns: LabelColumns | None = None) -> Dataset:
    """The dataset a label file lists: its entries, and (row, reason) for each row left out."""
    columns = columns or LabelColumns()
    if isinstance(file, str) and is_url(file):
        return _read_remote(file, name, columns)
    file = Path(file)
    if file.suffix.lower() not in LABEL_SUFFIXES:
        raise DatasetError(f"{file}: a label file ends in {', '.join(LABEL_SUFFIXES)}; or pass a folder of class folders")
    if not file.is_file():
        raise DatasetError(f"{file}: no such label file")
    file = file.resolve()
    if isinstance(columns.images, str):  # the images at a URL
        return _dataset(file, name, columns, columns.images, _RemoteFolder(columns.images), _read(file, file.open))
    base = (columns.images or file.parent).resolve()
    if not base.is_dir():
        raise DatasetError(f"--images {columns.images}: not a folder")
    return _dataset(file, name, columns, base, _Folder(base), _read(file, file.open))


def _read_remote(file: str, name: str | None, columns: LabelColumns) -> Dataset:
    """A label file at a URL, its paths relative to its folder there (or to --images, a URL too)."""
    base = str(columns.images) if columns.images is not None else file.rsplit("/", 1)[0]
    if not is_url(base):
        raise DatasetError(f"--images {base}: beside a label file at a URL, give the images' folder as a URL")
    fs, path = locations.filesystem(file)
    if not fs.isfile(path):
        raise DatasetError(f"{file}: no such label file")
    return _dataset(file, name, columns, base, _RemoteFolder(base), _read(file, lambda *a, **k: fs.open(path, *a, **k)))


def _dataset(file: Path | str, name: str | None, columns: LabelColumns, base: Path | str, folder: _Folder,
             read: tuple[list[str], list[tuple[str, dict[str, Any]]]]) -> Dataset:
    found, rows = read
    image_column = columns.id_column or columns.path_column
    missing = [c for c in (image_column, columns.label_column) if c not in found]
    if missing:
        hint = "; name yours with --id-column and --label-column" if columns.id_column or columns.label_column != "label" \
            else "; name yours with --label-column, or --images DIR --id-column COLUMN for a sheet of ids"
        raise DatasetError(f"{file}: no {' or '.join(repr(c) for c in missing)} column (its columns: "
                           f"{', '.join(repr(c) for c in found) or 'none'}){hint}")
    parsed = [_Row(where, _cell(row.get(image_column)), _cell(row.get(columns.label_column)),
                   _cell(row.get(columns.split_column))) for where, row in rows]
    entries, problems = _entries(parsed, folder, columns.id_column is not None)
    if not entries:
        first = f"; first: {problems[0][0]}: {problems[0][1]}" if problems else ""
        raise DatasetError(f"{file}: none of its {len(parsed)} rows names a usable image{first}")
    return Dataset(base, _name_for(file, name), LAYOUT, entries, problems=tuple(problems),
                   source=source_json(file, columns), versions=folder.versions)


def _name_for(file: Path | str, name: str | None) -> str:
    if name is not None:
        return check_dataset_name(name)
    stem = Path(urlsplit(file).path if isinstance(file, str) else file).stem
    stem = suggest_name(stem) if stem.strip("._") else "dataset"
    return check_dataset_name(stem)


def _cell(value: Any) -> str:
    """A cell as text: a formula (`=cmd|...`) or markup in a label is just text."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric label read as 3.0 from JSON or Parquet is the class "3"
    return str(value).strip()


# -- reading ------------------------------------------------------------------------------------


def _read(file: Path | str, opener: Callable[..., Any]) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(column names, (where, row) pairs) of `file`, opened by `opener` (Path.open, or an fsspec
    file's), or a one-line DatasetError."""
    suffix = os.path.splitext(str(file))[1].lower()
    try:
        if suffix == ".parquet":
            return _read_parquet(file, opener)
        with io.TextIOWrapper(opener("rb"), encoding="utf-8-sig", newline="") as handle:
            if suffix == ".csv":
                return _read_csv(file, handle)
            text = handle.read()
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{file}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DatasetError(f"{file}: not a readable CSV file ({exc})") from None
    items = _jsonl(file, text) if suffix == ".jsonl" else _json(file, text)
    return _columns(file, items)


def _read_csv(file: Path | str, handle: Any) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    reader = csv.DictReader(handle)
    found = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = found
    if not found:
        raise DatasetError(f"{file}: empty; a label file starts with a header row such as path,label")
    return found, [(f"line {reader.line_num}", row) for row in reader]


def _json(file: Path | str, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{file}: expected a JSON list of objects such as {{\"path\": ..., \"label\": ...}}")
    return [(f"item {i}", item) for i, item in enumerate(data, 1)]


def _jsonl(file: Path | str, text: str) -> list[tuple[str, Any]]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{file}: line {n} is not valid JSON ({exc.msg})") from None
    return items


def _columns(file: Path | str, items: list[tuple[str, Any]]) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    bad = next((where for where, item in items if not isinstance(item, dict)), None)
    if bad is not None:
        raise DatasetError(f"{file}: {bad} is not an object such as {{\"path\": ..., \"label\": ...}}")
    found = list(dict.fromkeys(k for _, item in items for k in item))
    return found, items


def _read_parquet(file: Path | str, opener: Callable[..., Any]) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{file}: {PARQUET_HINT}") from None
    try:
        with opener("rb") as handle:
            table = pq.read_table(handle)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DatasetError(f"{file}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return list(table.column_names), [(f"row {i}", row) for i, row in enumerate(table.to_pylist(), 1)]


# -- rows → entries -----------------------------------------------------------------------------


def _entries(rows: list[_Row], folder: _Folder, ids: bool) -> tuple[list[Entry], list[tuple[str, str]]]:
    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    first: dict[str, _Row] = {}
    for row in rows:
        path, problem = _locate(row.image, folder, ids)
        split = SPLIT_NAMES.get(row.split.lower(), "?") if row.split else ""
        if not problem and path in first:
            earlier = first[path]
            problem = f"a duplicate of {earlier.where}" + (f", which says {earlier.label!r}"
                                                          if earlier.label != row.label else "")
        if not problem and split == "?":
            problem = f"split {row.split!r}: use train, val (valid, validation) or test"
        if problem:
            problems.append((f"{row.where} ({row.image or 'empty'})", problem))
            continue
        first[path] = row
        entries.append(Entry(path, row.label, split))
    return entries, problems


def _locate(image: str, folder: _Folder, lookup: bool) -> tuple[str, str]:
    """(the path the manifest records, "") or ("", why the row is refused). A relative path must stay
    inside the folder, through symlinks too; a local absolute one is taken as given."""
    if not image:
        return "", "no image path"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in image):
        return "", "the path contains control characters"
    path = folder.normalise(image)
    problem = folder.outside(path)
    if not problem and lookup and os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES:
        path = folder.find(path)
        if not path:
            return "", f"no image named {image}.* ({'/'.join(sorted(IMAGE_SUFFIXES))}) in {folder.base}"
        problem = folder.outside(path)  # the file found may be a symlink out
    if problem:
        return "", problem
    if not folder.is_file(path):
        return "", "missing: no such file"
    return path.replace(os.sep, "/"), ""


class _Folder:
    """The folder a label file's paths are relative to, on this machine: symlinks followed and
    checked, ids looked up one folder listing at a time."""

    def __init__(self, base: Path | str) -> None:
        self.base = os.fspath(base)
        self.listed: dict[str, dict[str, list[str]]] = {}
        self.versions: dict[str, tuple[int, int]] = {}  # a URL's files, listed: path → (size, version)

    def normalise(self, image: str) -> str:
        return os.path.normpath(image)

    def outside(self, path: str) -> str:
        """Why the normalised relative `path` leaves the folder ("" when it stays inside, or is absolute)."""
        if os.path.isabs(path):
            return ""
        root = self.base
        if path == os.pardir or path.startswith(os.pardir + os.sep):
            return f"outside {root}: a relative path must stay inside it; give an absolute path for an image elsewhere"
        if not os.path.realpath(os.path.join(root, path)).startswith(root + os.sep):
            return f"outside {root} through a symlink: a relative path must stay inside it"
        return ""

    def is_file(self, path: str) -> bool:
        return os.path.isfile(os.path.join(self.base, path))

    def find(self, image_id: str) -> str:
        """An id without an extension → the image file of that name ("" when there is none)."""
        folder, stem = os.path.split(image_id)
        if folder not in self.listed:
            self.listed[folder] = _by_stem(self.names(folder))
        names = self.listed[folder].get(stem, [])
        return os.path.join(folder, sorted(names)[0]) if names else ""

    def names(self, folder: str) -> list[str]:
        try:
            return os.listdir(os.path.join(self.base, folder))
        except OSError:
            return []


class _RemoteFolder(_Folder):
    """The folder at a URL, listed once: no symlinks, and every path relative to it."""

    def __init__(self, base: str) -> None:
        super().__init__(base.rstrip("/"))
        self.versions = locations.list_files(self.base)

    def normalise(self, image: str) -> str:
        return posixpath.normpath(image)

    def outside(self, path: str) -> str:
        if path.startswith("/") or is_url(path) or path == ".." or path.startswith("../"):
            return f"outside {self.base}: beside a label file at a URL, a path must be relative and stay inside its folder"
        return ""

    def is_file(self, path: str) -> bool:
        return path in self.versions

    def names(self, folder: str) -> list[str]:
        prefix = f"{folder}/" if folder else ""
        return [f[len(prefix):] for f in self.versions if f.startswith(prefix) and "/" not in f[len(prefix):]]


def _by_stem(names: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(stem, []).append(name)
    return found


def scan_input(data: Path | str, name: str | None = None, columns: LabelColumns | None = None) -> Dataset:
    """The dataset `data` (a path, or a URL as a str) holds: a label file's rows, or a folder's class
    (and split) folders."""
    if is_label_file(data):
        if columns is not None and columns.label_key is not None:
            raise DatasetError(f"{data}: --label-key goes with tar shards; a label file names its column with --label-column")
        return read_label_file(data, name, columns)
    if columns is not None:
        raise DatasetError(f"{data}: --images, --id-column and --label-column go with a label file "
                           f"({', '.join(LABEL_SUFFIXES)}), --label-key with tar shards; not with a folder")
    return scan_dataset(data, name)
