"""The embedding map's projections kept in the cache: `/projections/<fp>/<key>/` holds `keys` (the
images' sha256) and `xy` (their 2-D coordinates); the key names the set of images and the parameters
(`map_layout.projection_key`). A cache, not data: compact copies them, repair may drop them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from ._cache import Store
from ._rows import SHA

GROUP = "projections"


def read_projection(store: Store, fp: str, key: str) -> tuple[list[str], np.ndarray] | None:
    """(sha256 of each point, (n, 2) coordinates) stored under `key`, or None."""
    group = store._get(f"{GROUP}/{fp}/{key}")
    if group is None or "keys" not in group or "xy" not in group:
        return None
    keys = [bytes(k).decode() for k in group["keys"][()]]
    xy = np.asarray(group["xy"][()], dtype=np.float32)
    return (keys, xy) if xy.shape == (len(keys), 2) else None


def write_projection(store: Store, fp: str, key: str, shas: Sequence[str], xy: np.ndarray, params: str) -> None:
    """Store one projection (replacing one under the same key); room checked as for a manifest."""
    store._room(len(shas) * 80 + (64 << 10), reserve=1 << 20)
    parent = store.h5.require_group(f"{GROUP}/{fp}")
    if key in parent:
        del parent[key]
    group = parent.create_group(key)
    group.create_dataset("keys", data=np.array(list(shas), dtype=SHA))
    group.create_dataset("xy", data=np.asarray(xy, dtype=np.float32))
    group.attrs.update(params=params, images=len(shas), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    store.h5.flush()
