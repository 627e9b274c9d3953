"""WebDataset tar shards → the manifest entries a folder gives, read as a stream, never unpacked.

`train-{000000..000099}.tar` (brace ranges as WebDataset writes them; a path or any fsspec URL) names
the shards. A sample is the members sharing a key (the member name up to the first dot of its base
name): its image (jpg, jpeg, png, webp, ...) and its label (`cls`, then `txt`, then the `json`
member's `--label-key`, default `label`). Each shard is read once, its image bytes hashed as they
stream past; what was found (each image's offset and size, its sha256, the label members) is kept
in the cache with the shard's size and mtime (or ETag), so a rerun on an unchanged shard reads
nothing, and decoding later reads each image's byte range alone.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

from . import locations
from .datasets import SPLIT_NAMES, Dataset, Entry, check_dataset_name, suggest_name
from .errors import DatasetError
from .images import IMAGE_SUFFIXES, ImageError, read_failure, sha256_stream
from .label_files import LabelColumns, source_json
from .store import Store, read_table, write_table

LAYOUT = "shards"
DEFAULT_LABEL_KEY = "label"
# WebDataset's own order of image extensions, then the other suffixes Pillow reads.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", *sorted(s[1:] for s in IMAGE_SUFFIXES - {".jpg", ".jpeg", ".png", ".webp"}))
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext
_BRACES = re.compile(r"\{([^{}]*)\}")
MAX_SHARDS = 1_000_000
TABLE = "shards"  # the cache's table of listings (store.read_table)


@dataclass(frozen=True)
class Sample:
    """One sample of a shard as listed: where its image is, its hash, and its label members."""

    key: str
    member: str = ""  # the image member's name
    offset: int = 0
    size: int = 0
    sha256: str = ""
    cls: str = ""
    txt: str = ""
    json: str = ""
    problem: str = ""  # why the sample cannot be used ("" when it can)

    def label(self, label_key: str | None) -> tuple[str, str]:
        """(label, "") or ("", why the json member could not be read)."""
        if label_key is None and (self.cls or self.txt):
            return (self.cls or self.txt).strip(), ""
        if not self.json:
            return "", ""
        try:
            meta = json.loads(self.json)
        except json.JSONDecodeError as exc:
            return "", f"its json member is not valid JSON ({exc.msg})"
        value = meta.get(label_key or DEFAULT_LABEL_KEY) if isinstance(meta, dict) else None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return ("" if value is None or isinstance(value, dict | list) else str(value).strip()), ""


@dataclass
class Listing:
    """What one shard holds, and the (size, version) of the shard it was read from."""

    shard: str
    size: int
    version: int
    samples: list[Sample] = field(default_factory=list)
    error: str = ""  # the shard could not be read to its end: not kept, read again next time

    def name(self, root: str) -> str:
        """The shard as the manifest names it: relative to the pattern's folder `root`."""
        return self.shard[len(root) + 1:] if self.shard.startswith(root + "/") else self.shard

    def placed(self, root: str) -> Iterator[tuple[str, str, Sample]]:
        """(manifest path SHARD/KEY, the address of its image's bytes, the sample) of each sample."""
        for sample in self.samples:
            yield f"{self.name(root)}/{sample.key}", locations.member(self.shard, sample.offset, sample.size), sample


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` → a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{a,b}` lists too."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        first, last = ranged.groups()
        if int(last) - int(first) >= MAX_SHARDS or int(last) < int(first):
            raise DatasetError(f"{pattern}: {{{body}}} must count up, at most {MAX_SHARDS:,} shards")
        width = len(first) if first.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def is_shard_input(data: str) -> bool:
    """Whether `data` names tar shards (one, or a brace pattern of them)."""
    name = os.fspath(data).rstrip("/").rsplit("/", 1)[-1].lower()
    return name.endswith((".tar", ".tar.gz", ".tgz")) and not os.path.isdir(os.fspath(data))


def list_shard(shard: str, size: int, version: int) -> Listing:
    """Read `shard` once, as a stream: every sample with its image's place and hash, and its labels."""
    listing = Listing(shard, size, version)
    samples: dict[str, dict[str, str | int]] = {}
    try:
        handle = _open(shard)
        with handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for info in tar:
                found = _KEY_EXT.match(info.name)
                if not info.isfile() or found is None:
                    continue
                key, ext = found.group(1), found.group(2).lower()
                sample = samples.setdefault(key, {})
                stream = tar.extractfile(info)
                if ext in IMAGE_EXTENSIONS and "member" not in sample and stream is not None:
                    sample.update(member=info.name, offset=info.offset_data, size=info.size, sha256=sha256_stream(stream),
                                  problem="" if info.size else "empty image member (0 bytes)")
                elif ext in ("cls", "txt", "json") and stream is not None:
                    sample[ext] = stream.read(1 << 20).decode("utf-8", "replace")
    except (OSError, tarfile.TarError, EOFError, ImageError, DatasetError) as exc:
        listing.error = read_failure(exc)
        samples = {key: parts for key, parts in samples.items() if parts}  # the sample cut short, if any
    for key, parts in samples.items():
        problem = str(parts.pop("problem", "")) if "member" in parts else \
            f"no image member ({', '.join(IMAGE_EXTENSIONS[:4])}, ...)"
        listing.samples.append(Sample(key=key, problem=problem, **parts))  # type: ignore[arg-type]
    return listing


def _open(shard: str) -> BinaryIO:
    """The shard as a binary file object, local or fsspec."""
    if shard.lower().endswith((".tar.gz", ".tgz")):
        raise ImageError("a compressed shard cannot be read by byte ranges; write plain .tar shards")
    if locations.is_url(shard):
        fs, path = locations.filesystem(shard)
        return fs.open(path, "rb", block_size=8 << 20)
    return open(shard, "rb")


def list_shards(shards: list[str], known: dict[str, Listing], workers: int,
                progress: Callable[[int], None] | None = None) -> list[Listing]:
    """The listing of every shard: the one in `known` when the shard's size and version are unchanged,
    else read now (`workers` shards at a time). A shard that cannot be read is a listing with an error."""

    def one(shard: str) -> Listing:
        try:
            size, version = locations.version(shard)
        except (OSError, DatasetError) as exc:
            return Listing(shard, 0, 0, error=read_failure(exc))
        except ImageError as exc:  # not a regular file
            return Listing(shard, 0, 0, error=str(exc))
        old = known.get(shard)
        if old is not None and (old.size, old.version) == (size, version):
            return old
        return list_shard(shard, size, version)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        listings = []
        for listing in pool.map(one, shards):
            listings.append(listing)
            if progress is not None:
                progress(len(listings))
    return listings


def read_shards(store: Store, pattern: str, name: str | None, columns: LabelColumns, workers: int,
                progress: Callable[[int], None] | None = None) -> tuple[Dataset, dict[str, str], dict[str, str]]:
    """`scan_shards` on the shards `pattern` names, listed with the cache's listings of them (the
    complete listings are kept there for the next run)."""
    if (columns.images, columns.id_column, columns.label_column) != (None, None, "label"):
        raise DatasetError(f"{pattern}: --images, --id-column and --label-column go with a label file; a shard's "
                           "label is its cls or txt member, or --label-key of its json member")
    pattern = pattern if locations.is_url(pattern) else os.path.abspath(pattern)
    shards = expand_braces(pattern)
    known = listings_from_table(read_table(store, TABLE))
    listings = list_shards(shards, known, workers, progress)
    if any(known.get(listing.shard) is not listing for listing in listings if not listing.error):
        wanted = set(shards)
        kept = {shard: old for shard, old in known.items() if shard not in wanted}
        kept.update((listing.shard, listing) for listing in listings if not listing.error)
        write_table(store, TABLE, listings_to_table(list(kept.values())))
    return scan_shards(pattern, name, columns, listings)


def scan_shards(pattern: str, name: str | None, columns: LabelColumns, listings: list[Listing]
                ) -> tuple[Dataset, dict[str, str], dict[str, str]]:
    """(the dataset, entry path → address of its image bytes, address → sha256) from the shards'
    listings. Entry paths are `SHARD/KEY`, SHARD relative to the pattern's folder; a split comes from
    a shard named train-*, val-* or test-*."""
    root = pattern.rsplit("/", 1)[0] if "/" in pattern else "."
    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    addresses: dict[str, str] = {}
    shas: dict[str, str] = {}
    splits = _splits([listing.shard for listing in listings])
    for listing in listings:
        if listing.error:
            problems.append((listing.name(root), listing.error))
        split = splits.get(listing.shard, "")
        for path, address, sample in listing.placed(root):
            label, problem = sample.label(columns.label_key)
            if sample.problem or problem:
                problems.append((path, sample.problem or problem))
                continue
            entries.append(Entry(path, label, split))
            addresses[path] = address
            shas[address] = sample.sha256
    if not entries:
        first = f"; first: {problems[0][0]}: {problems[0][1]}" if problems else ""
        raise DatasetError(f"{pattern}: no usable samples in {len(listings)} shards{first}")
    dataset = Dataset(locations.path_or_url(root), _name_for(root, name), LAYOUT, entries,
                      problems=tuple(problems), source=source_json(pattern, columns))
    return dataset, addresses, shas


def _splits(shards: list[str]) -> dict[str, str]:
    """Shard → its split, named by its first word (train-*, val-*, valid_*, test-*), when the shards
    name at least two splits; shards that all say train are one pool, split by content hash later."""
    named = {shard: SPLIT_NAMES.get(re.split(r"[-_.]", shard.rsplit("/", 1)[-1], maxsplit=1)[0].lower(), "")
             for shard in shards}
    return named if len(set(named.values()) - {""}) >= 2 else {}


def _name_for(root: str, name: str | None) -> str:
    if name is not None:
        return check_dataset_name(name)
    folder = root.rstrip("/").rsplit("/", 1)[-1]
    return check_dataset_name(suggest_name(folder) if folder.strip("._") else "shards")


def image_addresses(cache: Path | Store, name: str, paths: list[str]) -> list[str]:
    """Where the bytes of dataset `name`'s images (manifest paths) are, for whatever decodes them
    after extract (fine-tuning, thumbnails, export's check): a shard's byte range, or root/path."""
    if not isinstance(cache, Store):
        with Store.open(cache) as store:
            return image_addresses(store, name, paths)
    root = os.fspath(cache.dataset_root(name))
    if cache.dataset_attrs(name).get("layout") != LAYOUT:
        return [locations.join(root, p) for p in paths]
    where = {path: address for listing in listings_from_table(read_table(cache, TABLE)).values()
             for path, address, _ in listing.placed(root)}
    return [where.get(p, locations.join(root, p)) for p in paths]


# -- the listings in the cache ------------------------------------------------------------------

_COLUMNS = [f.name for f in fields(Sample)]


def listings_to_table(listings: list[Listing]) -> dict[str, list[str] | list[int]]:
    """The complete listings as one table (a row per sample; a shard without samples keeps one empty row)."""
    table: dict[str, list] = {"shard": [], "shard_size": [], "shard_version": [], **{c: [] for c in _COLUMNS}}
    for listing in listings:
        if listing.error:
            continue
        for sample in listing.samples or [Sample(key="")]:
            table["shard"].append(listing.shard)
            table["shard_size"].append(listing.size)
            table["shard_version"].append(listing.version)
            for column in _COLUMNS:
                table[column].append(getattr(sample, column))
    return table


def listings_from_table(table: dict[str, list]) -> dict[str, Listing]:
    listings: dict[str, Listing] = {}
    for i, shard in enumerate(table.get("shard", [])):
        listing = listings.setdefault(shard, Listing(shard, int(table["shard_size"][i]), int(table["shard_version"][i])))
        if table["key"][i]:
            listing.samples.append(Sample(**{c: table[c][i] for c in _COLUMNS}))
    return listings
