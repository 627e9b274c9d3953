"""The embedding map's projection: an extraction's vectors laid out in 2-D by openTSNE, kept in the
cache beside the vectors (`store.read_projection`), so a second report of the same images costs
nothing. benchmarks/RESULTS.md section 20 says why openTSNE rather than UMAP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BottleneckError
from .store import Store, read_projection, write_projection

INSTALL = "pip install 'bottleneck-features[map]'"
PCA_DIMS = 50  # both libraries' advice: PCA first, then the neighbour graph on 50 dimensions
METHOD = "openTSNE"  # in the key and the stored parameters: another method is another layout
TINY = 5  # below this many images, the first two principal components (t-SNE needs a neighbourhood)


class MapUnavailableError(BottleneckError):
    """The projection library (the `map` extra) is not installed."""


@dataclass(frozen=True)
class ProjectionParams:
    """What the map's layout depends on besides the vectors; part of its key in the cache."""

    perplexity: float = 30.0  # lowered to (n - 1) / 3 for small sets
    seed: int = 0
    pca: int = PCA_DIMS


def check_available() -> None:
    """One line naming the install command when the projection library is missing."""
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        raise MapUnavailableError(f"the embedding map needs openTSNE: {INSTALL}") from None


def prepare(X: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """Unit rows (the audit's and the heads' cosine geometry), centred, reduced to `dims` by PCA."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    unit = unit - unit.mean(axis=0)
    keep = min(dims, unit.shape[0], unit.shape[1])
    if keep >= unit.shape[1]:
        return unit
    return np.asarray(PCA(keep, svd_solver="randomized", random_state=seed).fit_transform(unit), dtype=np.float32)


def project(X: np.ndarray, params: ProjectionParams = ProjectionParams()) -> np.ndarray:
    """(n, 2) float32 map coordinates of the rows of `X` (all distinct images)."""
    n = len(X)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if n < TINY:  # the first two principal components of the unit rows (none for a single image)
        unit = np.asarray(X, dtype=np.float64)
        unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        u, s, _ = np.linalg.svd(unit - unit.mean(axis=0), full_matrices=False)
        xy = np.zeros((n, 2), dtype=np.float32)
        xy[:, :min(2, len(s))] = (u * s)[:, :2]
        return xy
    check_available()
    Z = prepare(X, params.pca, params.seed)
    from openTSNE import TSNE

    perplexity = min(params.perplexity, max(1.0, (n - 1) / 3))
    embedding = TSNE(perplexity=perplexity, random_state=params.seed, n_jobs=-1, verbose=False).fit(Z)
    return np.asarray(embedding, dtype=np.float32)


def projection_key(fp: str, shas: Sequence[str], params: ProjectionParams) -> str:
    """The extraction, the set of images and the parameters: any change is another map."""
    digest = hashlib.sha256(json.dumps({"fingerprint": fp, "images": sorted(set(shas)), "method": METHOD,
                                        "params": asdict(params)}, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def cached_projection(cache: Path, fp: str, shas: Sequence[str], X: np.ndarray, *, write: bool = True,
                      params: ProjectionParams = ProjectionParams()) -> tuple[np.ndarray, bool]:
    """(map coordinates of each row of `X`, whether they came from the cache). Rows are images keyed
    by `shas` under the extraction `fp`; copies of one image (one sha256) share their point. Computed
    once, and stored when `write` (the cache opened for writing only then)."""
    key = projection_key(fp, shas, params)
    with Store.open(cache) as store:
        stored = read_projection(store, fp, key)
    if stored is not None:
        return _rows(stored[0], stored[1], shas), True
    first: dict[str, int] = {}
    for row, sha in enumerate(shas):
        first.setdefault(sha, row)
    unique = list(first)
    xy = project(np.asarray(X)[list(first.values())], params)
    if write:
        with Store.open(cache, writable=True) as store:
            write_projection(store, fp, key, unique, xy, json.dumps({"method": METHOD, **asdict(params)}))
    return _rows(unique, xy, shas), False


def _rows(keys: Sequence[str], xy: np.ndarray, shas: Sequence[str]) -> np.ndarray:
    where = {k: i for i, k in enumerate(keys)}
    return np.asarray(xy, dtype=np.float32)[[where[s] for s in shas]]
