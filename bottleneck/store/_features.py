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
            raise StoreError(f"{spec.label()} holds augmented views, which compare and fit train on beside the plain "
                             f"vectors; this reads a plain extraction, e.g. --model {spec.replace(augment=None).label()}")
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


def fusion_parts(query: str) -> list[str]:
    """`a+b[x+y]+c` → a, b[x+y], c: the extractions a fused query (`--model a+b`) joins, split on the
    `+` outside brackets (an augmentation such as crop=0.35+flip sits inside a label's brackets)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(query):
        depth += (char == "[") - (char == "]")
        if char == "+" and depth == 0:
            parts.append(query[start:i])
            start = i + 1
    return [*parts, query[start:]]


def select_extractions(cache: Path, dataset: str | None, model: str | None) -> tuple[str, list[str]]:
    """(dataset, fingerprints): `select_extraction` for each part of a fused `model` (a+b), or for it alone."""
    if model is None or len(fusion_parts(model)) == 1:
        dataset, fp = select_extraction(cache, dataset, model)
        return dataset, [fp]
    found = [select_extraction(cache, dataset, part) for part in fusion_parts(model)]
    return found[0][0], list(dict.fromkeys(fp for _, fp in found))


def auto_extractions(cache: Path, dataset: str | None) -> tuple[str, list[str]]:
    """(dataset, fingerprints) `fit --head auto` searches when no --model is given: the dataset's
    embeddings (`ExtractorSpec.embedding`), the last extracted first; else its last extraction alone."""
    with Store.open(cache) as store:
        dataset = store.dataset_or_last(dataset)
        last = str(store.dataset_attrs(dataset)["last_extractor"])
        embeddings = [fp for fp in store.dataset_extractors(dataset) if store.extractor_spec(fp).embedding]
    return dataset, sorted(embeddings, key=lambda fp: fp != last) or [last]


def plain_and_views(cache: Path, dataset: str, fps: Sequence[str], search: bool) -> tuple[list[str], dict[int, str]]:
    """(the plain extractions a head reads, block index → the fingerprint of that block's cached views).
    An augmented extraction (`--model lite0[augment=...]`) stands for its plain twin and its views; with
    `search` (`fit --head auto`), each plain block brings its augmented extraction with the most views."""
    plain, viewed = [], {}
    with Store.open(cache) as store:
        counts = store.dataset_views(dataset)
        for i, fp in enumerate(fps):
            spec = store.extractor_spec(fp)
            if spec.augment:
                twin = spec.replace(augment=None).fingerprint()
                if twin not in store.dataset_extractors(dataset):
                    raise StoreError(f"dataset {dataset!r} has the views of {spec.label()} but not its plain vectors; "
                                     f"run `bottleneck extract {store.dataset_root(dataset)} --views {counts.get(fp, 8)} "
                                     f"--augment {spec.augment}`")
                plain.append(twin)
                viewed[i] = fp
                continue
            plain.append(fp)
            of_it = [v for v in counts if search and store.extractor_spec(v).replace(augment=None).fingerprint() == fp]
            if of_it:
                viewed[i] = max(of_it, key=lambda v: counts[v])
    return plain, viewed


def with_views(cache: Path | Store, dataset: str, features: Features, widths: Sequence[int], viewed: dict[int, str]
               ) -> np.ndarray:
    """`stack_views` of `features.X`'s blocks (`widths`), those in `viewed` with their cached views."""
    with _reading(cache) as store:
        views = [load_views(store, dataset, viewed[b], features.shas) if b in viewed else None
                 for b in range(len(widths))]
    edges = np.cumsum((0, *widths))
    return stack_views([features.X[:, edges[b]:edges[b + 1]] for b in range(len(widths))], views)


def stack_views(blocks: Sequence[np.ndarray], views: Sequence[np.ndarray | None]) -> np.ndarray:
    """(images, 1 + K, D): each image's plain vector, then K views, block by block side by side: a block's
    augmented views (images, K', dim), or with None its plain vector repeated. K: the fewest any block has
    (view k of every block is the same augmented image: views are seeded by image and index)."""
    count = min(v.shape[1] for v in views if v is not None)
    return np.concatenate([np.concatenate([block[:, None], v[:, :count]], axis=1) if v is not None
                           else np.repeat(block[:, None], count + 1, axis=1)
                           for block, v in zip(blocks, views, strict=True)], axis=2)


def load_fused(cache: Path | Store, dataset: str, fps: Sequence[str]) -> tuple[Features, list[ExtractorSpec], int]:
    """(the rows every extraction in `fps` has, their vectors side by side in `fps` order; the specs;
    how many images were left out for lacking a block). One fingerprint: `load_features`."""
    with _reading(cache) as store:
        parts = [load_features(store, dataset, fp) for fp in fps]
    first = parts[0]
    if len(parts) == 1:
        return first, [first.spec] if first.spec is not None else [], 0
    common = set(first.shas).intersection(*(p.shas for p in parts[1:]))
    keep = [i for i, sha in enumerate(first.shas) if sha in common]
    rows = [{sha: j for j, sha in enumerate(p.shas)} for p in parts]
    blocks = [p.X[[row[first.shas[i]] for i in keep]] for p, row in zip(parts, rows, strict=True)]
    fused = Features(first.root, [first.paths[i] for i in keep], first.labels[keep], first.splits[keep],
                     [first.shas[i] for i in keep], np.concatenate(blocks, axis=1), first.spec)
    dropped = len(set().union(*(p.shas for p in parts))) - len(keep)
    return fused, [p.spec for p in parts if p.spec is not None], dropped


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
