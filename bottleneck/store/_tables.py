"""Small tables of text and integer columns kept in the cache whole: written beside the old one, then
swapped in, so a killed write leaves the old table (the shard listings of `shards`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from ._cache import Store

_STR = h5py.string_dtype()
_GROUP = "tables"


def read_table(store: Store, name: str) -> dict[str, list[str] | list[int]]:
    """Column name → values of table `name`; {} when the cache has none."""
    group = store._get(f"{_GROUP}/{name}")
    if group is None:
        return {}
    return {column: (data.asstr()[()].tolist() if data.dtype.kind == "O" else data[()].tolist())
            for column, data in group.items()}


def write_table(store: Store, name: str, columns: Mapping[str, Sequence[str] | Sequence[int]]) -> None:
    """Replace table `name` with `columns` (str or int values, all of one length)."""
    rows = len(next(iter(columns.values()), []))
    store._room(rows * 64 * len(columns), reserve=1 << 20)
    parent = store.h5.require_group(_GROUP)
    writing = f"{name}.writing"
    if writing in parent:
        del parent[writing]
    group = parent.create_group(writing)
    for column, values in columns.items():
        text = any(isinstance(v, str) for v in values)
        group.create_dataset(column, data=np.array(list(values), dtype=_STR if text else np.int64))
    if name in parent:
        del parent[name]
    parent.move(writing, name)
    store.h5.flush()
