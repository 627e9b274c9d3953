"""Whole-file upkeep: every vector checked against its checksum, and the file rewritten compactly."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from ..errors import StoreError
from ._cache import Store


def verify_cache(cache: Path) -> list[tuple[str, int, list[str]]]:
    """Check every vector against its checksum (and for NaN/inf); drop the damaged ones (the
    group is rewritten without them) so the next extract computes them again. Per extractor: (fingerprint, vectors checked, dataset/path of each
    damaged image, or its sha256 where no manifest names it)."""
    report = []
    with Store.open(cache, writable=True) as store:
        where = {r.sha256: f"{name}/{r.path}" for name in store.datasets() for r in store.read_manifest(name)}
        for fp in store.extractors():
            unknown = store.unreadable_keys(fp)
            checked = store.count(fp) + unknown
            bad = store.damaged(fp)
            store.forget(fp, bad)
            report.append((fp, checked, [where.get(sha, sha) for sha in bad]
                           + ([f"{unknown} vectors whose keys fail their checksum"] if unknown else [])))
    return report


def compact_cache(cache: Path) -> tuple[int, int]:
    """Copy everything the cache holds into a new file and swap it in; (bytes before, bytes after).
    HDF5 does not give back the space of deleted objects (old manifests and path indexes)."""
    if not Path(cache).is_file():
        raise StoreError(f"{cache}: no cache here; pass the --cache that `bottleneck extract` wrote")
    before = Path(cache).stat().st_size
    with Store.open(cache, writable=True) as store:
        store._room(before)
        partial = store.path.with_name(store.path.name + ".compacting")
        with h5py.File(partial, "w") as out:
            for name in store.h5:
                store.h5.copy(store.h5[name], out, name=name)
            out.attrs.update(dict(store.h5.attrs))
        os.replace(partial, store.path.resolve())
    return before, Path(cache).stat().st_size
