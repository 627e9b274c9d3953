"""Label files → the manifest entries a folder gives: `path,label[,split]` rows in CSV, JSON, JSON Lines
or Parquet, paths relative to the file's folder (or `--images DIR`); or id-only sheets whose ids are
file names under `--images`, an extension looked up when the id has none.

A row that cannot be used (a path leaving the folder, a duplicate, a missing file, a bad split) is a
problem reported with its reason, never fatal; a row without a label is kept, for `predict`.
"""

from __future__ import annotations

import csv
import json
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .datasets import SPLIT_NAMES, Dataset, Entry, check_dataset_name, scan_dataset, suggest_name
from .errors import DatasetError
from .images import IMAGE_SUFFIXES

LABEL_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
LAYOUT = "labels"
PARQUET_HINT = "reading .parquet needs pyarrow: pip install 'bottleneck-features[parquet]'"


@dataclass(frozen=True)
class LabelColumns:
    """How a label file names its images: a `path` column relative to the file's folder (or to
    `images`), or an `id_column` of file names under `images` (default: the file's folder)."""

    images: Path | None = None
    id_column: str | None = None
    label_column: str = "label"
    path_column: str = "path"
    split_column: str = "split"


@dataclass(frozen=True)
class _Row:
    where: str  # "line 3", "row 3": how the user finds it in the file
    image: str  # the path or id cell
    label: str
    split: str


def is_label_file(data: Path) -> bool:
    return data.suffix.lower() in LABEL_SUFFIXES and not data.is_dir()


def source_json(file: Path, columns: LabelColumns) -> str:
    """What the cache records of a label-file dataset, to read it again (`source_from_json`)."""
    fields = asdict(columns)
    fields["images"] = str(columns.images) if columns.images is not None else None
    return json.dumps({"file": str(file), **fields}, sort_keys=True)


def source_from_json(text: str) -> tuple[Path, LabelColumns]:
    fields = json.loads(text)
    file = Path(fields.pop("file"))
    images = fields.pop("images")
    return file, LabelColumns(images=Path(images) if images is not None else None, **fields)


def read_label_file(file: Path, name: str | None = None, columns: LabelColumns | None = None) -> Dataset:
    """The dataset a label file lists: its entries, and (row, reason) for each row left out."""
    columns = columns or LabelColumns()
    file = Path(file)
    if file.suffix.lower() not in LABEL_SUFFIXES:
        raise DatasetError(f"{file}: a label file ends in {', '.join(LABEL_SUFFIXES)}; or pass a folder of class folders")
    if not file.is_file():
        raise DatasetError(f"{file}: no such label file")
    file = file.resolve()
    base = (columns.images or file.parent).resolve()
    if not base.is_dir():
        raise DatasetError(f"--images {columns.images}: not a folder")
    found, rows = _read(file)
    image_column = columns.id_column or columns.path_column
    missing = [c for c in (image_column, columns.label_column) if c not in found]
    if missing:
        hint = "; name yours with --id-column and --label-column" if columns.id_column or columns.label_column != "label" \
            else "; name yours with --label-column, or --images DIR --id-column COLUMN for a sheet of ids"
        raise DatasetError(f"{file}: no {' or '.join(repr(c) for c in missing)} column (its columns: "
                           f"{', '.join(repr(c) for c in found) or 'none'}){hint}")
    parsed = [_Row(where, _cell(row.get(image_column)), _cell(row.get(columns.label_column)),
                   _cell(row.get(columns.split_column))) for where, row in rows]
    entries, problems = _entries(parsed, base, columns.id_column is not None)
    if not entries:
        first = f"; first: {problems[0][0]}: {problems[0][1]}" if problems else ""
        raise DatasetError(f"{file}: none of its {len(parsed)} rows names a usable image{first}")
    return Dataset(base, _name_for(file, name), LAYOUT, entries, problems=tuple(problems),
                   source=source_json(file, columns))


def _name_for(file: Path, name: str | None) -> str:
    if name is not None:
        return check_dataset_name(name)
    stem = suggest_name(file.stem) if file.stem.strip("._") else "dataset"
    return check_dataset_name(stem)


def _cell(value: Any) -> str:
    """A cell as text: a formula (`=cmd|...`) or markup in a label is just text."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric label read as 3.0 from JSON or Parquet is the class "3"
    return str(value).strip()


# -- reading ------------------------------------------------------------------------------------


def _read(file: Path) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(column names, (where, row) pairs), or a one-line DatasetError."""
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            return _read_parquet(file)
        with open(file, encoding="utf-8-sig", newline="") as handle:
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


def _read_csv(file: Path, handle: Any) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    reader = csv.DictReader(handle)
    found = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = found
    if not found:
        raise DatasetError(f"{file}: empty; a label file starts with a header row such as path,label")
    return found, [(f"line {reader.line_num}", row) for row in reader]


def _json(file: Path, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{file}: expected a JSON list of objects such as {{\"path\": ..., \"label\": ...}}")
    return [(f"item {i}", item) for i, item in enumerate(data, 1)]


def _jsonl(file: Path, text: str) -> list[tuple[str, Any]]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{file}: line {n} is not valid JSON ({exc.msg})") from None
    return items


def _columns(file: Path, items: list[tuple[str, Any]]) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    bad = next((where for where, item in items if not isinstance(item, dict)), None)
    if bad is not None:
        raise DatasetError(f"{file}: {bad} is not an object such as {{\"path\": ..., \"label\": ...}}")
    found = list(dict.fromkeys(k for _, item in items for k in item))
    return found, items


def _read_parquet(file: Path) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{file}: {PARQUET_HINT}") from None
    try:
        table = pq.read_table(file)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DatasetError(f"{file}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return list(table.column_names), [(f"row {i}", row) for i, row in enumerate(table.to_pylist(), 1)]


# -- rows → entries -----------------------------------------------------------------------------


def _entries(rows: list[_Row], base: Path, ids: bool) -> tuple[list[Entry], list[tuple[str, str]]]:
    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    first: dict[str, _Row] = {}
    lookup = _IdLookup(base)
    for row in rows:
        path, problem = _locate(row.image, base, lookup if ids else None)
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


def _locate(image: str, base: Path, lookup: _IdLookup | None) -> tuple[str, str]:
    """(the path the manifest records, "") or ("", why the row is refused). A relative path must stay
    inside `base`, through symlinks too; an absolute one is taken as given."""
    if not image:
        return "", "no image path"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in image):
        return "", "the path contains control characters"
    path = os.path.normpath(image)
    problem = _outside(base, path)
    if not problem and lookup is not None and os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES:
        path = lookup.find(path)
        if not path:
            return "", f"no image named {image}.* ({'/'.join(sorted(IMAGE_SUFFIXES))}) in {base}"
        problem = _outside(base, path)  # the file found may be a symlink out
    if problem:
        return "", problem
    if not os.path.isfile(os.path.join(base, path)):
        return "", "missing: no such file"
    return path.replace(os.sep, "/"), ""


def _outside(base: Path, path: str) -> str:
    """Why the normalised relative `path` leaves `base` ("" when it stays inside, or is absolute)."""
    if os.path.isabs(path):
        return ""
    root = os.fspath(base)
    if path == os.pardir or path.startswith(os.pardir + os.sep):
        return f"outside {root}: a relative path must stay inside it; give an absolute path for an image elsewhere"
    if not os.path.realpath(os.path.join(root, path)).startswith(root + os.sep):
        return f"outside {root} through a symlink: a relative path must stay inside it"
    return ""


class _IdLookup:
    """Ids without an extension → the image file of that name, each folder listed once."""

    def __init__(self, base: Path) -> None:
        self.base = os.fspath(base)
        self.listed: dict[str, dict[str, list[str]]] = {}

    def find(self, image_id: str) -> str:
        folder, stem = os.path.split(image_id)
        if folder not in self.listed:
            self.listed[folder] = _by_stem(os.path.join(self.base, folder))
        names = self.listed[folder].get(stem, [])
        return os.path.join(folder, sorted(names)[0]) if names else ""


def _by_stem(folder: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name in _listdir(folder):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(stem, []).append(name)
    return found


def _listdir(folder: str) -> Iterator[str]:
    try:
        yield from os.listdir(folder)
    except OSError:
        return


def scan_input(data: Path, name: str | None = None, columns: LabelColumns | None = None) -> Dataset:
    """The dataset `data` holds: a label file's rows, or a folder's class (and split) folders."""
    if is_label_file(Path(data)):
        return read_label_file(Path(data), name, columns)
    if columns is not None:
        raise DatasetError(f"{data}: --images, --id-column and --label-column go with a label file "
                           f"({', '.join(LABEL_SUFFIXES)}), not a folder")
    return scan_dataset(Path(data), name)
