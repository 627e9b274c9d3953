"""`Store`: an open cache file, its extractions (vectors keyed by fingerprint and sha256),
dataset manifests and path index."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._version import __version__
from ..errors import BottleneckError, CacheBusyError, DamagedVectorsError, DiskFullError, StoreError
from ..spec import ExtractorSpec
from ._disk import RESERVE, cache_lock, check_room, first_line, one_line_errors, repair_hint
from ._rows import KEY_CHUNK, SHA, append_rows, copy_rows, create_rows, readable_keys

FORMAT = "bottleneck-cache"
FORMAT_VERSION = 1
DEFAULT_CACHE = Path("cache/bottleneck.h5")
MANIFEST_FIELDS = ("path", "label", "split", "sha256", "status")
ASIDE = "~"  # in a group name: a temporary copy (fingerprints and dataset names never contain it)
PENDING = "pending: the run stopped before this image was computed"
_STR = h5py.string_dtype()


@dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to the dataset root
    label: str
    split: str
    sha256: str  # "" when the file could not be read
    status: str  # "ok", or why the image was skipped


def _attr(value: object) -> object:
    """An HDF5-storable attribute: containers as JSON, str subclasses (TorchVersion) as plain str."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value) if isinstance(value, str) else value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    """An open cache file. Use `Store.open(path, writable=...)` as a context manager."""

    def __init__(self, h5: h5py.File, path: Path) -> None:
        self.h5 = h5
        self.path = path
        self._keys: dict[str, dict[str, int]] = {}
        self._unreadable_keys: dict[str, int] = {}  # rows whose key fails its checksum, per group
        self._specs: dict[str, ExtractorSpec] = {}
        self.full = False  # a write was refused for lack of space

    @classmethod
    @contextmanager
    def open(cls, path: Path, writable: bool = False) -> Iterator[Store]:
        """Open the cache; a writer holds an exclusive lock, readers a shared one."""
        path = Path(path)
        if not writable and not path.exists():
            raise StoreError(f"{path}: no cache here yet; run `bottleneck extract DATA --cache {path}` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        with cache_lock(path, exclusive=writable):
            try:
                h5 = h5py.File(path, "a" if writable else "r")
            except OSError as exc:
                if "unable to lock file" in str(exc).lower():  # HDF5's lock: a process that bypassed ours holds it
                    raise CacheBusyError(f"{path} is in use by another process; wait for it to finish or pass "
                                         "another --cache") from None
                raise StoreError(f"{path}: not a readable HDF5 cache ({first_line(exc)}); {repair_hint(path)}") from None
            with one_line_errors(path), h5:
                store = cls(h5, path)
                if writable:
                    store._init_root()
                elif h5.attrs.get("format") != FORMAT:
                    raise StoreError(f"{path}: not a bottleneck cache (no format attribute)")
                yield store

    def _init_root(self) -> None:
        attrs = self.h5.attrs
        if "format" not in attrs:
            attrs.update(format=FORMAT, format_version=FORMAT_VERSION, created=_now())
        elif attrs["format"] != FORMAT:
            raise StoreError(f"{self.path}: an HDF5 file that is not a bottleneck cache; pass another --cache")
        if attrs.get("bottleneck_version") != __version__:
            attrs["bottleneck_version"] = __version__

    def _get(self, path: str, default: Any = None) -> Any:
        """The object at `path`, or `default` when a link on the way does not exist. Unlike h5py's
        `get`, an object that exists but cannot be opened (damaged) raises, and is not taken for absent."""
        obj = self.h5
        for name in path.split("/"):
            if not obj.id.links.exists(name.encode()):
                return default
            obj = obj[name]
        return obj

    # -- embeddings ---------------------------------------------------------------------------

    def extractors(self) -> list[str]:
        return sorted(k for k in self._get("extractors", {}) if ASIDE not in k)

    def extractor_attrs(self, fp: str) -> dict[str, Any]:
        if self._get(f"extractors/{fp}") is None:
            raise StoreError(f"{self.path}: no extractor {fp}; see `bottleneck info`")
        return dict(self.h5["extractors"][fp].attrs)

    def ensure_extractor(self, fp: str, spec: ExtractorSpec, **attrs: object) -> None:
        """Create the group for `fp` once; its attributes hold the spec and describe the vectors."""
        group = self.h5.require_group("extractors")
        if fp in group:
            return
        dim, dtype = spec.feature_dim, spec.dtype
        assert dim is not None
        g = group.create_group(fp)
        described = {"model": spec.model, "weights": spec.weights, "layer": spec.layer or "", "pool": spec.pool,
                     "preprocess": spec.preprocess.to_dict(), "precision": spec.precision, "decode": spec.decode,
                     "label": spec.label(), "spec": spec.to_dict(), "bottleneck_version": __version__, **attrs}
        g.attrs.update({k: _attr(v) for k, v in described.items()})
        g.attrs.update(feature_dim=dim, dtype=dtype, created=_now(), updated=_now())
        create_rows(g, dim, dtype)
        # Copies on the datasets themselves: `bottleneck repair` can still tell whose rows these are
        # when the group above them is damaged.
        g["keys"].attrs["fingerprint"] = fp
        g["vectors"].attrs.update(fingerprint=fp, spec=_attr(spec.to_dict()))

    def extractor_spec(self, fp: str) -> ExtractorSpec:
        """The spec the vectors under `fp` were made with (also from caches of the first release)."""
        if fp not in self._specs:
            text = self.extractor_attrs(fp).get("spec")
            try:
                if text is None:
                    raise BottleneckError("no spec attribute")
                self._specs[fp] = ExtractorSpec.from_dict(str(text))
            except (BottleneckError, ValueError) as exc:
                raise StoreError(f"{self.path}: extractor {fp} has no readable spec ({exc}); delete the cache "
                                 "(or pass another --cache) and rerun extract") from None
        return self._specs[fp]

    def find_extractor(self, spec: ExtractorSpec) -> ExtractorSpec | None:
        """The stored spec that equals `spec` but for the feature width (which only a build can
        tell), keeping `spec`'s weights file; None if there is none."""
        wanted = spec.replace(feature_dim=None)
        for fp in self.extractors():
            stored = self.extractor_spec(fp)
            if stored.replace(feature_dim=None) == wanted:
                return stored.replace(weights_file=spec.weights_file or stored.weights_file)
        return None

    def match_extractors(self, dataset: str, query: str) -> list[str]:
        """The fingerprints of `dataset`'s extractions that `query` names: a fingerprint, a label
        (`resnet50[layer3,max]`) or a model name."""
        fps = self.dataset_extractors(dataset)
        for by in (lambda fp: fp, lambda fp: self.extractor_spec(fp).label(), lambda fp: self.extractor_spec(fp).model):
            found = [fp for fp in fps if by(fp) == query]
            if found:  # a model's name means its plain vectors, not its augmented views (named by their label)
                return [fp for fp in found if not self.extractor_spec(fp).augment] or found
        return []

    def extraction_named(self, dataset: str, query: str, option: str = "--model") -> str | None:
        """The one extraction of `dataset` that `query` names (see `match_extractors`), None when
        none does; when several do, one line asking for a label or fingerprint."""
        fps = self.match_extractors(dataset, query)
        if len(fps) > 1:
            several = ", ".join(f"{self.extractor_spec(fp).label()} ({fp})" for fp in fps)
            raise StoreError(f"{option} {query}: dataset {dataset!r} has {len(fps)} extractions of {query}: "
                             f"{several}; name one by its label or fingerprint")
        return fps[0] if fps else None

    def _key_index(self, fp: str) -> dict[str, int]:
        """sha256 → row; rows whose key is gone or unreadable are left out (so they count as missing)."""
        if fp not in self._keys:
            group = self._get(f"extractors/{fp}")
            index: dict[str, int] = {}
            if group is not None:
                key_of, unreadable = readable_keys(group["keys"])
                index = {key: row for row, key in key_of.items()}
                if unreadable:
                    self._unreadable_keys[fp] = unreadable
            self._keys[fp] = index
        return self._keys[fp]

    def damaged(self, fp: str, shas: Sequence[str] | None = None) -> list[str]:
        """The images among `shas` (default: all) whose vectors under `fp` fail their checksum or are
        not finite, read chunk by chunk."""
        index = self._key_index(fp)
        wanted = {index[s]: s for s in (index if shas is None else shas) if s in index}
        if not wanted:
            return []
        data = self.h5["extractors"][fp]["vectors"]
        rows_per_chunk = data.chunks[0] if data.chunks else len(data)
        bad: list[str] = []
        for start in sorted({row - row % rows_per_chunk for row in wanted}):
            stop = min(start + rows_per_chunk, data.shape[0])
            try:
                block = data[start:stop]
                broken = {start + int(i) for i in np.flatnonzero(~np.isfinite(block).all(axis=1))}
            except OSError:  # the chunk fails its checksum
                broken = set(range(start, stop))
            bad += [wanted[row] for row in sorted(broken) if row in wanted]
        return bad

    def forget(self, fp: str, shas: Sequence[str]) -> None:
        """Drop the vectors of `shas` (damaged ones): the next extract computes those images again.

        The group is rewritten without them and without every block that fails its checksum:
        appending reads the last, partly filled chunk first, so a damaged chunk left in place would
        fail every later write. Every intact vector is kept, and the old group is only replaced once
        the new one is complete."""
        index = self._key_index(fp)
        drop = {index[s] for s in shas if s in index}
        if drop or fp in self._unreadable_keys:
            self._rewrite(fp, drop)

    def _rewrite(self, fp: str, drop: set[int]) -> None:
        parent = self.h5["extractors"]
        old, copy_name, old_name = parent[fp], f"{fp}{ASIDE}rewrite", f"{fp}{ASIDE}old"
        data = old["vectors"]
        self._room(data.shape[0] * data.shape[1] * data.dtype.itemsize)
        for leftover in (copy_name, old_name):
            if leftover in parent:
                del parent[leftover]
        new = parent.create_group(copy_name)
        new.attrs.update(dict(old.attrs))
        create_rows(new, data.shape[1], data.dtype)
        for member in ("keys", "vectors"):
            new[member].attrs.update(dict(old[member].attrs))
        copy_rows(data, {row: sha for sha, row in self._key_index(fp).items()}, new, drop)
        self.h5.flush()
        parent.move(fp, old_name)
        parent.move(copy_name, fp)
        del parent[old_name]
        self._keys.pop(fp, None)
        self._unreadable_keys.pop(fp, None)
        self.h5.flush()

    def unreadable_keys(self, fp: str) -> int:
        """How many rows of `fp` have a key that fails its checksum (their images are not known)."""
        self._key_index(fp)
        return self._unreadable_keys.get(fp, 0)

    def has(self, fp: str, sha: str) -> bool:
        return sha in self._key_index(fp)

    def count(self, fp: str) -> int:
        return len(self._key_index(fp))

    def add_vectors(self, fp: str, shas: Sequence[str], vectors: np.ndarray) -> list[str]:
        """Append one batch and flush it to disk before returning. Rows that are not finite are
        not stored: their shas are returned."""
        index = self._key_index(fp)
        vectors = np.asarray(vectors)
        finite = np.isfinite(vectors).all(axis=1)
        rejected = [s for s, ok in zip(shas, finite, strict=True) if not ok]
        fresh = [i for i, s in enumerate(shas) if s not in index and finite[i]]
        if not fresh:
            return rejected
        group = self.h5["extractors"][fp]
        data = group["vectors"]
        chunk_bytes = int(np.prod(data.chunks)) * data.dtype.itemsize if data.chunks else 0
        self._room(len(fresh) * data.shape[1] * data.dtype.itemsize + 2 * chunk_bytes + KEY_CHUNK * 64 * 2)
        start = append_rows(group, [shas[i] for i in fresh], vectors[fresh])
        for offset, i in enumerate(fresh):
            index[shas[i]] = start + offset
        group.attrs["updated"] = _now()
        self.h5.flush()
        return rejected

    def _room(self, nbytes: int, reserve: int = RESERVE) -> None:
        try:
            check_room(self.path, nbytes, reserve)
        except DiskFullError:
            self.full = True
            raise

    def get_vectors(self, fp: str, shas: Sequence[str]) -> np.ndarray:
        """Vectors for `shas`, in that order, as float32."""
        index = self._key_index(fp)
        missing = [s for s in shas if s not in index]
        if missing:
            raise StoreError(f"{self.path}: {len(missing)} images have no vectors under {fp}; rerun extract")
        rows = np.array([index[s] for s in shas], dtype=np.int64)
        data = self.h5["extractors"][fp]["vectors"]
        if len(rows) == 0:
            return np.zeros((0, data.shape[1]), dtype=np.float32)
        try:
            if len(rows) * 4 > data.shape[0]:
                out = data[()][rows].astype(np.float32, copy=False)
            else:
                order = np.unique(rows)
                out = data[order][np.searchsorted(order, rows)].astype(np.float32, copy=False)
        except OSError:  # a chunk failed its checksum: perhaps one these rows don't need
            out = None
        bad = self.damaged(fp, shas) if out is None or not np.isfinite(out).all() else []
        if out is None and not bad:
            out = np.concatenate([data[row:row + 1] for row in rows]).astype(np.float32, copy=False)
        if bad:
            raise DamagedVectorsError(f"{self.path}: the vectors of {len(bad)} images under {fp} are damaged; rerun "
                                      "extract to compute them again (`bottleneck info --verify` checks the whole "
                                      "cache)", bad)
        assert out is not None
        return np.asarray(out, dtype=np.float32)

    # -- datasets -----------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        return sorted(self._get("datasets", {}).keys())

    def dataset_attrs(self, name: str) -> dict[str, Any]:
        return dict(self._dataset_group(name).attrs)

    def dataset_root(self, name: str) -> Path | str:
        """The folder the manifest's paths are relative to: a Path, or a URL (tar shards' folder)."""
        root = str(self._dataset_group(name).attrs["root"])
        return root if "://" in root else Path(root)

    def dataset_source(self, name: str) -> str:
        """A label file's dataset: its file and columns as JSON (label_files.source_json); "" for a folder's."""
        return str(self._dataset_group(name).attrs.get("source", ""))

    def _dataset_group(self, name: str) -> h5py.Group:
        group = self._get(f"datasets/{name}")
        if group is None:
            known = ", ".join(self.datasets()) or "none yet"
            raise StoreError(f"{self.path}: no dataset named {name!r} (cached: {known}); run `bottleneck extract` on it")
        return group

    def write_manifest(self, name: str, root: Path | str, layout: str, rows: Sequence[ManifestRow], fp: str,
                       remember: bool = True, views: int | None = None, source: str = "") -> None:
        """Replace the manifest of `name` (written beside the old one, then swapped in), unless it is
        unchanged: a rerun that finds nothing new writes nothing, so the file does not grow.

        `remember` records (name, fp) as the last run, and fp as this dataset's last extractor:
        the defaults of `fit` and `compare`. `source`: a label file's dataset, the file and its columns.
        """
        parent = self.h5.require_group("datasets")
        old = self._get(f"datasets/{name}")
        extractors = sorted(set(json.loads(old.attrs.get("extractors", "[]"))) | {fp}) if old is not None else [fp]
        last = fp if remember or old is None else old.attrs.get("last_extractor", fp)
        counts = json.loads(old.attrs.get("views", "{}")) if old is not None else {}
        counts.update({fp: views} if views else {})
        same_root = old is not None and old.attrs.get("root") == str(root) and old.attrs.get("source", "") == source
        if same_root and json.loads(old.attrs["extractors"]) == extractors and old.attrs.get("last_extractor") == last \
                and json.loads(old.attrs.get("views", "{}")) == counts and self.read_manifest(name) == list(rows):
            if remember and self.last_run() != (name, fp):
                self.h5.attrs.update(last_dataset=name, last_extractor=fp)
            return
        self._room(len(rows) * 512, reserve=1 << 20)  # within the reserve kept when vectors filled the disk
        tmp = parent.require_group(f"{name}.writing")  # left over if a previous write was killed
        for field in MANIFEST_FIELDS:
            if field in tmp:
                del tmp[field]
            values = [getattr(r, field) for r in rows]
            tmp.create_dataset(field, data=np.array(values, dtype=SHA if field == "sha256" else _STR))
        tmp.attrs.update(
            name=name, root=str(root), layout=layout, images=len(rows), extractors=json.dumps(extractors), views=json.dumps(counts),
            last_extractor=last, created=old.attrs["created"] if old is not None else _now(), updated=_now(),
            **({"source": source} if source else {}),
        )
        if old is not None:
            del parent[name]
        parent.move(f"{name}.writing", name)
        if remember:
            self.h5.attrs.update(last_dataset=name, last_extractor=fp)
        self.h5.attrs["updated"] = _now()
        self.h5.flush()

    def read_manifest(self, name: str) -> list[ManifestRow]:
        group = self._dataset_group(name)
        columns = [group[f].asstr()[()] if f != "sha256" else [s.decode() for s in group[f][()]] for f in MANIFEST_FIELDS]
        return [ManifestRow(*values) for values in zip(*columns, strict=True)]

    def dataset_views(self, name: str) -> dict[str, int]:
        """Fingerprint → how many augmented views of each image the dataset's last extract made."""
        return {str(fp): int(k) for fp, k in json.loads(self._dataset_group(name).attrs.get("views", "{}")).items()}

    def dataset_extractors(self, name: str) -> list[str]:
        return [str(fp) for fp in json.loads(self._dataset_group(name).attrs.get("extractors", "[]"))]

    def dataset_or_last(self, dataset: str | None) -> str:
        """`dataset`, or the one extracted last."""
        if dataset is not None:
            return dataset
        last = self.last_run()
        if last is None:
            raise StoreError(f"{self.path}: no dataset extracted yet; run `bottleneck extract DATA --cache {self.path}` "
                             "first")
        return last[0]

    def last_run(self) -> tuple[str, str] | None:
        attrs = self.h5.attrs
        if "last_dataset" not in attrs:
            return None
        return str(attrs["last_dataset"]), str(attrs["last_extractor"])

    # -- path index ---------------------------------------------------------------------------

    def read_path_index(self) -> dict[str, tuple[int, int, str]]:
        """abs path → (size, mtime_ns, sha256) as of the last run."""
        group = self._get("paths")
        if group is None:
            return {}
        paths = group["path"].asstr()[()]
        sizes, mtimes, shas = group["size"][()], group["mtime_ns"][()], group["sha256"][()]
        return {p: (int(s), int(m), h.decode()) for p, s, m, h in zip(paths, sizes, mtimes, shas, strict=True)}

    def write_path_index(self, index: dict[str, tuple[int, int, str]]) -> None:
        self._room(len(index) * 512, reserve=1 << 20)
        if self._get("paths") is not None:
            del self.h5["paths"]
        group = self.h5.create_group("paths")
        items = sorted(index.items())
        group.create_dataset("path", data=np.array([p for p, _ in items], dtype=_STR))
        group.create_dataset("size", data=np.array([v[0] for _, v in items], dtype=np.int64))
        group.create_dataset("mtime_ns", data=np.array([v[1] for _, v in items], dtype=np.int64))
        group.create_dataset("sha256", data=np.array([v[2] for _, v in items], dtype=SHA))
        self.h5.flush()
