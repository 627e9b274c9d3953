"""`bottleneck repair`: a cache whose HDF5 structures are damaged, rebuilt from everything still
readable into a new file, as `sqlite3 .recover` is to SQLite.

Objects are first reached by name. Where a group on the way is damaged, the file is scanned for
HDF5 object headers and each is opened by its address (HDF5's H5Oopen_by_addr), so that a damaged
group costs only itself: the vectors and keys datasets carry their extraction's fingerprint and spec,
and each manifest its name, for this. Every vector whose key and chunk pass their checksums is kept;
each manifest row whose vectors were lost is marked pending (the next extract computes exactly
those); an unreadable path index is rebuilt by the next extract from the files. The damaged file is
kept beside the new one, never deleted.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import BottleneckError, StoreError
from .spec import ExtractorSpec
from .store import ASIDE, MANIFEST_FIELDS, PENDING, cache_lock, check_room, copy_rows, create_rows, readable_keys

_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)
_PATH_INDEX = {"path", "size", "mtime_ns", "sha256"}


@dataclass
class RepairReport:
    cache: Path
    damaged_copy: Path  # where the damaged file now lies
    vectors: int = 0  # vectors kept
    lost_vectors: int = 0  # rows that could not be read (their images are computed again)
    extractors: int = 0
    datasets: int = 0
    pending: int = 0  # manifest rows whose vectors were lost
    path_index: bool = False
    scanned: bool = False  # whether objects had to be found by address

    def summary(self) -> str:
        lost = ([f"{self.lost_vectors} unreadable vectors"] if self.lost_vectors else []) + \
            ([] if self.path_index else ["the path index (the next extract hashes the files again)"])
        return (f"{self.cache}: kept {self.vectors} vectors of {self.extractors} extractions and {self.datasets} "
                f"datasets{' (some found by their headers: a group above them was damaged)' if self.scanned else ''}"
                f"{'; lost ' + ', '.join(lost) if lost else ''}; {self.pending} images are pending, which "
                f"`bottleneck extract` computes again; the old file is kept as {self.damaged_copy}")


@dataclass
class _Found:
    """What could be opened, by name or by address."""

    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)  # fp → {"spec", "keys", "vectors", "attrs"}
    datasets: dict[str, h5py.Group] = field(default_factory=dict)
    path_index: h5py.Group | None = None
    complete: bool = True  # every object reached by name


def repair_cache(cache: Path) -> RepairReport:
    """Rebuild `cache` from what HDF5 can still read of it, then swap the new file in."""
    cache = Path(cache)
    if not cache.is_file():
        raise StoreError(f"{cache}: no cache here; pass the --cache that `bottleneck extract` wrote")
    real = cache.resolve()
    partial, aside = real.with_name(real.name + ".repairing"), _free_name(real.with_name(real.name + ".damaged"))
    with cache_lock(cache, exclusive=True):
        check_room(partial, real.stat().st_size)
        padded = real.with_name(real.name + ".padded")
        source = _open_file(real, padded)
        report = RepairReport(cache, aside)
        try:
            with source, h5py.File(partial, "w") as out:
                found = _by_name(source)
                if not found.complete:
                    report.scanned = True
                    _merge(found, _by_address(source, real))
                _write(source, found, out, report)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            padded.unlink(missing_ok=True)
        os.replace(real, aside)
        os.replace(partial, real)
    return report


# -- finding what is readable ----------------------------------------------------------------------


def _open_file(path: Path, padded: Path) -> h5py.File:
    """`path` opened read-only; a truncated file is opened as a copy padded with zeros to the length
    its superblock records, so that everything before the cut can still be read."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        stored = re.search(r"truncated file: eof = \d+, .*stored_eof = (\d+)", str(exc))
        if stored is None:
            raise StoreError(f"{path}: HDF5 cannot open any of it ({str(exc).splitlines()[0]}); nothing to salvage: "
                             "move it aside and extract again") from None
    shutil.copyfile(path, padded)
    os.truncate(padded, int(stored.group(1)))
    return h5py.File(padded, "r")


def _by_name(source: h5py.File) -> _Found:
    found = _Found()
    top = _members(source, "", found)
    for fp in _members(source, "extractors", found) if "extractors" in top else []:
        extractor = _extractor(_open(source, f"extractors/{fp}", found))
        if extractor is None:
            found.complete = False
        else:
            found.extractors[fp] = extractor
    for name in _members(source, "datasets", found) if "datasets" in top else []:
        group = _open(source, f"datasets/{name}", found)
        if group is not None:
            found.datasets[name] = group
    found.path_index = _open(source, "paths", found) if "paths" in top else None
    return found


def _extractor(group: Any) -> dict[str, Any] | None:
    if group is None:
        return None
    try:
        return {"attrs": dict(_readable_attrs(group)), "keys": group["keys"], "vectors": group["vectors"],
                "spec": str(group.attrs["spec"])}
    except _H5_ERRORS:
        return None


def _by_address(source: h5py.File, path: Path) -> _Found:
    """Every object whose header HDF5 can open, found by scanning the file for object headers."""
    found = _Found()
    loose: dict[str, dict[str, Any]] = {}  # fp → datasets that name their extraction
    for obj in _objects_at(source, path):
        attrs = dict(_readable_attrs(obj))
        if isinstance(obj, h5py.Dataset):
            if "fingerprint" in attrs:
                role = "vectors" if obj.ndim == 2 else "keys"
                loose.setdefault(str(attrs["fingerprint"]), {})[role] = obj
                if role == "vectors" and "spec" in attrs:
                    loose[str(attrs["fingerprint"])]["spec"] = str(attrs["spec"])
        elif "spec" in attrs:
            extractor = _extractor(obj)
            fp = _fingerprint(extractor["spec"]) if extractor is not None else None
            if extractor is not None and fp is not None:
                found.extractors[fp] = extractor
        elif "root" in attrs and "layout" in attrs:
            found.datasets[str(attrs.get("name") or Path(str(attrs["root"])).name)] = obj
        elif set(_keys(obj)) >= _PATH_INDEX:
            found.path_index = obj
    for fp, parts in loose.items():
        if fp not in found.extractors and {"keys", "vectors", "spec"} <= set(parts):
            found.extractors[fp] = {"attrs": {"spec": parts["spec"]}, **parts}
    return found


def _objects_at(source: h5py.File, path: Path) -> Iterator[Any]:
    """The groups and datasets whose version-1 object headers (8-byte aligned: version 1, reserved 0,
    a message count, a reference count of 1) HDF5 opens by address."""
    lib = _hdf5()
    if lib is None:
        return
    words = np.memmap(path, dtype="<u8", mode="r", shape=(path.stat().st_size // 8,))
    step = 1 << 20
    for start in range(0, len(words), step):
        block = words[start:start + step]
        hits = np.flatnonzero(((block & 0xFFFF_FFFF_FF00_FFFF) == 0x0000_0001_0000_0001) & (block & 0xFF0000 != 0))
        for index in hits:
            hid = lib.H5Oopen_by_addr(source.id.id, int(start + index) * 8)
            if hid < 0:
                continue
            kind = lib.H5Iget_type(hid)
            if kind == _H5I_DATASET:
                yield h5py.Dataset(h5py.h5d.DatasetID(hid))
            elif kind == _H5I_GROUP:
                yield h5py.Group(h5py.h5g.GroupID(hid))
            else:
                lib.H5Oclose(hid)


_H5I_GROUP, _H5I_DATASET = 2, 5  # from H5Ipublic.h


@functools.cache
def _hdf5() -> ctypes.CDLL | None:
    """The HDF5 library h5py runs on (found among this process's mapped files), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    libraries = [p for p in re.findall(r"(/\S*libhdf5[^/\s]*\.so[^/\s]*)$", maps, re.M) if "_hl" not in Path(p).name]
    if not libraries:
        return None
    try:
        lib = ctypes.CDLL(libraries[0])
        lib.H5Oopen_by_addr.argtypes = [ctypes.c_int64, ctypes.c_uint64]
        lib.H5Oopen_by_addr.restype = ctypes.c_int64
        lib.H5Iget_type.argtypes = [ctypes.c_int64]
        lib.H5Iget_type.restype = ctypes.c_int
        lib.H5Oclose.argtypes = [ctypes.c_int64]
        lib.H5Eset_auto2.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        lib.H5Eset_auto2(0, None, None)  # H5E_DEFAULT: no error stack printed for each wrong guess
    except (OSError, AttributeError):
        return None
    return lib


def _merge(found: _Found, more: _Found) -> None:
    for fp, extractor in more.extractors.items():
        found.extractors.setdefault(fp, extractor)
    for name, group in more.datasets.items():
        found.datasets.setdefault(name, group)
    found.path_index = found.path_index or more.path_index


# -- writing the new file --------------------------------------------------------------------------


def _write(source: h5py.File, found: _Found, out: h5py.File, report: RepairReport) -> None:
    out.attrs.update(dict(_readable_attrs(source)))
    out.attrs["repaired"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    kept = {fp: _copy_extractor(fp, extractor, out, report) for fp, extractor in found.extractors.items()}
    for name, group in found.datasets.items():
        _copy_manifest(name, group, kept, out, report)
    if found.path_index is not None:
        try:
            source.copy(found.path_index, out, name="paths")
            report.path_index = True
        except _H5_ERRORS:
            pass


def _copy_extractor(fp: str, extractor: dict[str, Any], out: h5py.File, report: RepairReport) -> set[str]:
    """Copy the rows of one extraction whose key and vector blocks are readable; the keys kept."""
    data = extractor["vectors"]
    try:
        key_of, _ = readable_keys(extractor["keys"])
        rows, dim, dtype = data.shape[0], data.shape[1], data.dtype
    except _H5_ERRORS:
        return set()
    target = out.require_group("extractors").create_group(fp)
    target.attrs.update(extractor["attrs"])
    create_rows(target, dim, dtype)
    target["keys"].attrs["fingerprint"] = fp
    target["vectors"].attrs.update(fingerprint=fp, spec=extractor["spec"])
    kept = set(copy_rows(data, key_of, target))
    report.extractors += 1
    report.vectors += len(kept)
    report.lost_vectors += rows - len(kept)
    return kept


def _copy_manifest(name: str, group: h5py.Group, kept: dict[str, set[str]], out: h5py.File,
                   report: RepairReport) -> None:
    """Copy one manifest (its root and extractions are its attributes), each row whose vectors are
    gone from its last extraction marked pending."""
    try:
        attrs = dict(_readable_attrs(group))
        columns = {f: group[f][()] for f in MANIFEST_FIELDS}
        dtypes = {f: group[f].dtype for f in MANIFEST_FIELDS}
    except _H5_ERRORS:
        return
    have = kept.get(str(attrs.get("last_extractor", "")), set())
    status = [s.decode() if isinstance(s, bytes) else str(s) for s in columns["status"]]
    for i, sha in enumerate(columns["sha256"]):
        if status[i] == "ok" and sha.decode() not in have:
            status[i] = PENDING
            report.pending += 1
    columns["status"] = np.array(status, dtype=object)
    attrs["extractors"] = json.dumps([fp for fp in json.loads(str(attrs.get("extractors", "[]"))) if fp in kept])
    target = out.require_group("datasets").create_group(name)
    for f, values in columns.items():
        target.create_dataset(f, data=values, dtype=dtypes[f])
    target.attrs.update(attrs)
    report.datasets += 1


# -- small helpers ---------------------------------------------------------------------------------


def _members(source: h5py.File, group: str, found: _Found) -> list[str]:
    """The names in `group` ("" for the root) HDF5 can list, temporary copies left out; an
    unlistable group makes the search by name incomplete."""
    try:
        listed = (source[group] if group else source).keys()
        return sorted(k for k in listed if ASIDE not in k and not k.endswith(".writing"))
    except _H5_ERRORS:
        found.complete = False
        return []


def _open(source: h5py.File, name: str, found: _Found) -> Any:
    """The object a listed name leads to; None, and the search incomplete, when it cannot be opened."""
    try:
        return source[name]
    except _H5_ERRORS:
        found.complete = False
        return None


def _keys(group: h5py.Group) -> list[str]:
    try:
        return list(group.keys())
    except _H5_ERRORS:
        return []


def _readable_attrs(obj: Any) -> Iterator[tuple[str, Any]]:
    try:
        names = list(obj.attrs.keys())
    except _H5_ERRORS:
        return
    for name in names:
        try:
            yield name, obj.attrs[name]
        except _H5_ERRORS:
            continue


def _fingerprint(spec: str) -> str | None:
    """The group name of the extraction `spec` describes (its fingerprint), or None if unreadable."""
    try:
        return ExtractorSpec.from_dict(spec).fingerprint()
    except (BottleneckError, ValueError):
        return None


def _free_name(path: Path) -> Path:
    """`path`, or path.1, path.2, ... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
