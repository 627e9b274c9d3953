"""What heads and exporters read: the usable rows of one dataset under one extraction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BottleneckError, DamagedVectorsError, StoreError
from ..spec import ExtractorSpec
from ._cache import Store
from ._rows import view_key


@dataclass
class Features:
    """The usable rows of one dataset under one extraction: `X`, `y` (the labels) and `paths` line up."""

    root: Path | str  # a folder, or a URL (tar shards' folder)
    paths: list[str]  # relative to root
    labels: np.ndarray
    splits: np.ndarray  # "train" | "val" | "test", or "" without split folders
    shas: list[str]
    X: np.ndarray  # (n, D) float32
    spec: ExtractorSpec | None = None  # the extractor that made X

    @property
    def y(self) -> np.ndarray:
        return self.labels

    def to_frame(self) -> Any:
        """A pandas DataFrame: path, label, split, sha256, then one column per dimension (f0, f1, ...)."""
        try:
            import pandas as pd
        except ImportError:
            raise BottleneckError("to_frame needs pandas: pip install pandas") from None
        columns = pd.DataFrame(self.X, columns=[f"f{i}" for i in range(self.X.shape[1])])
        rows = pd.DataFrame({"path": self.paths, "label": self.labels, "split": self.splits, "sha256": self.shas})
        return pd.concat([rows, columns], axis=1)


@contextmanager
def _reading(cache: Path | Store) -> Iterator[Store]:
    """`cache` opened read-only, or the Store a caller holds open already (several loads, one open)."""
    if isinstance(cache, Store):
        yield cache
    else:
        with Store.open(cache) as store:
            yield store


def load_views(cache: Path | Store, dataset: str, fp: str, shas: Sequence[str]) -> np.ndarray:
    """(images, views, dim): the augmented views of `shas` under `fp`, as many as the last extract made."""
    with _reading(cache) as store:
        views = store.dataset_views(dataset).get(fp)
        if not views:
            raise StoreError(f"{store.path}: {fp} holds no augmented views of {dataset!r}; run `bottleneck extract "
                             f"{store.dataset_root(dataset)} --views K`")
        missing = [s for s in shas if not store.has(fp, view_key(s, views - 1))]
        if missing:
            raise StoreError(f"{store.path}: {len(missing)} images of {dataset!r} lack their {views} views under "
                             f"{fp}; run `bottleneck extract {store.dataset_root(dataset)} --views {views}`")
        X = store.get_vectors(fp, [view_key(s, i) for s in shas for i in range(views)])
    return X.reshape(len(shas), views, -1)


def load_features(cache: Path | Store, dataset: str, fp: str) -> Features:
    """Everything a head needs: the usable rows of `dataset` and their vectors under `fp`; `cache` a path,
    or a Store already open."""
    with _reading(cache) as store:
        root = store.dataset_root(dataset)
        spec = store.extractor_spec(fp)
        if spec.augment:
            raise StoreError(f"{spec.label()} holds augmented views, which compare trains on (its +views rows); "
                             f"fit and export take a plain extraction, e.g. --model {spec.replace(augment=None).label()}")
        rows = [r for r in store.read_manifest(dataset) if r.status == "ok" and r.label]  # unlabelled: for predict
        try:
            X = store.get_vectors(fp, [r.sha256 for r in rows])
        except DamagedVectorsError as exc:
            damaged = set(exc.shas)
            paths = [r.path for r in rows if r.sha256 in damaged]
            raise DamagedVectorsError(
                f"{store.path}: the vectors of {len(paths)} images of {dataset!r} are damaged ({', '.join(paths[:3])}"
                f"{', ...' if len(paths) > 3 else ''}); run `bottleneck extract {root}` to compute them again",
                exc.shas) from None
    return Features(
        root=root,
        paths=[r.path for r in rows],
        labels=np.array([r.label for r in rows]),
        splits=np.array([r.split for r in rows]),
        shas=[r.sha256 for r in rows],
        X=X,
        spec=spec,
    )


def select_extraction(cache: Path, dataset: str | None, model: str | None) -> tuple[str, str]:
    """(dataset, fingerprint): the dataset's last extraction, or the one `model` names (a model name,
    a label such as `resnet50[layer3,max]`, or a fingerprint)."""
    with Store.open(cache) as store:
        dataset = store.dataset_or_last(dataset)
        if model is None:
            return dataset, str(store.dataset_attrs(dataset)["last_extractor"])
        fp = store.extraction_named(dataset, model)
        if fp is None:
            described = [f"{store.extractor_spec(fp).label()} ({fp})" for fp in store.dataset_extractors(dataset)]
            raise StoreError(f"dataset {dataset!r} has no {model} features (it has: {', '.join(described)}); "
                             f"run `bottleneck extract {store.dataset_root(dataset)} --model {model}`")
        return dataset, fp
