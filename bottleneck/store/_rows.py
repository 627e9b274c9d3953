"""An extraction's rows in the file: `keys` and `vectors`, chunked with a checksum per chunk,
appended vectors first, read block by block past any chunk that fails its checksum."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np

SHA = "S64"
KEY_CHUNK = 4096
GONE = b""  # the key of a hidden row (older releases hid damaged vectors this way)


def readable_blocks(dataset: h5py.Dataset, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) of `dataset` in blocks of `rows`; a block that fails its checksum is left out."""
    for start in range(0, dataset.shape[0], rows):
        try:
            yield start, dataset[start:start + rows]
        except OSError:
            continue


def readable_keys(keys: h5py.Dataset) -> tuple[dict[int, str], int]:
    """(row → key of every row whose block of keys passes its checksum, hidden rows left out; how
    many rows sit in blocks that fail it)."""
    key_of: dict[int, str] = {}
    read = 0
    for start, block in readable_blocks(keys, KEY_CHUNK):
        key_of.update((start + i, k.decode()) for i, k in enumerate(block) if k != GONE)
        read += len(block)
    return key_of, int(keys.shape[0]) - read


def copy_rows(vectors: h5py.Dataset, key_of: dict[int, str], target: h5py.Group,
              drop: frozenset[int] | set[int] = frozenset()) -> list[str]:
    """Append to the extractor group `target` every row of `vectors` that has a key in `key_of`, is
    not in `drop`, passes its checksum and is finite; the keys copied."""
    copied: list[str] = []
    for start, block in readable_blocks(vectors, vectors.chunks[0] if vectors.chunks else len(vectors)):
        rows = [i for i in range(len(block)) if start + i in key_of and start + i not in drop
                and np.isfinite(block[i]).all()]
        keys = [key_of[start + i] for i in rows]
        append_rows(target, keys, block[rows])
        copied += keys
    return copied


def _chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per chunk for ~1 MiB chunks: large sequential writes, cheap partial reads."""
    return max(1, min(4096, (1 << 20) // max(1, dim * itemsize)))


def create_rows(group: h5py.Group, dim: int, dtype: Any) -> None:
    """An extractor group's empty, growable `keys` and `vectors`, with ~1 MiB chunks of vectors."""
    chunk = _chunk_rows(dim, np.dtype(dtype).itemsize)
    # fletcher32: every chunk carries a checksum, so damage on disk is found when it is read.
    group.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=SHA, chunks=(KEY_CHUNK,), fletcher32=True)
    group.create_dataset("vectors", shape=(0, dim), maxshape=(None, dim), dtype=dtype, chunks=(chunk, dim),
                         fletcher32=True)


def append_rows(group: h5py.Group, shas: Sequence[str], vectors: np.ndarray) -> int:
    """Append rows to an extractor group, vectors flushed before the keys that make them visible;
    returns the first new row."""
    keys, data = group["keys"], group["vectors"]
    start = int(keys.shape[0])
    end = start + len(shas)
    if not len(shas):
        return start
    data.resize(end, axis=0)
    data[start:end] = vectors.astype(data.dtype, copy=False)
    group.file.flush()
    keys.resize(end, axis=0)
    keys[start:end] = np.array(shas, dtype=SHA)
    return start


def view_key(sha: str, view: int) -> str:
    """The key of augmented view `view` of the image with content hash `sha` (64 hex, as an image's)."""
    return hashlib.sha256(f"{sha}/view{view}".encode()).hexdigest()
