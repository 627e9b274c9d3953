"""The rows of a `bottleneck compare` and the draws they share: the features chosen by spec, brought up
to date through the cache, aligned on the images they all have, and named as the table shows them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .augment import DEFAULT_AUGMENT
from .dataset_identity import dataset_input, input_present
from .errors import BottleneckError, CompareError
from .evaluate import Split, draw_per_class, kfold_splits, protocol_pool
from .extraction import ExtractOptions, extract_dataset
from .progress import Progress
from .shards import image_addresses
from .sources import DEFAULT_MODEL, build_tail, resolve_spec
from .spec import ExtractorSpec
from .store import Features, Store, fusion_parts, load_features, load_views, stack_views

if TYPE_CHECKING:
    import torch

    from .label_files import LabelColumns

    Input = tuple[Path | str, LabelColumns | None]  # what extract_dataset reads: a folder, or a label file and its columns

Tail = tuple["torch.nn.Module", tuple]  # the network after a layer, and the shape of that layer's maps
Setting = tuple[int | None, int | None, list[Split]]  # (N per class, K folds, draws)


@dataclass(frozen=True, eq=False)
class Row:
    """One row of the table: a feature set and how its cells train."""

    spec: ExtractorSpec
    name: str  # as the table shows it
    X: np.ndarray  # (images, dim); (images, 1 + views, dim) for a views row; (sha, path) items for a files row
    fingerprint: str  # names the row's fitted cells in cells/
    every_head: bool = True  # False: a --finetune LAYER row not asked for, which gets only its finetune cells
    tta: bool = False  # predicts from the mean of its scores over all views
    tail: Tail | None = None  # --finetune LAYER: the network after the row's layer, trained on its maps
    files: bool = False  # --finetune all: the row's whole network, trained on the image files
    blocks: tuple[int, ...] = ()  # a fused row (`--models a+b`): its blocks' widths; `spec` is its first block's

    @property
    def raw(self) -> bool:
        """Raw pixels rather than a network's embedding."""
        return self.spec.pixels


@dataclass
class Plan:
    """What a compare fits: its rows, on the images they all have, and the draws they share."""

    name: str  # the dataset
    root: Path | str
    out: Path
    rows: list[Row]
    paths: list[str]
    addresses: list[str]  # where each image's bytes are (shards.image_addresses)
    shas: list[str]
    labels: np.ndarray
    settings: list[Setting]
    protocol: str
    notes: list[str]


Fusion = tuple[ExtractorSpec, ...]  # `--models a+b`: the extractions of one fused row


def choose_features(cache: Path, dataset: str | None, models: Sequence[str] | None, pixels: int | None
                    ) -> tuple[str, Path | str, list[ExtractorSpec], list[tuple[ExtractorSpec, int]], Input,
                               list[Fusion]]:
    """(dataset name, root, the specs of its plain rows, (augmented spec, views) of its views rows, what
    extract reads to update it, the fused rows' extractions): every query is resolved before any work.
    A views row brings its plain spec's row along; a fused row's blocks (and views) are loaded, not shown alone."""
    with Store.open(cache) as store:
        dataset = store.dataset_or_last(dataset)
        root = store.dataset_root(dataset)  # StoreError naming the cached datasets if unknown
        data = dataset_input(store, dataset)  # its folder, or its label file
        extracted = {fp: store.extractor_spec(fp) for fp in store.dataset_extractors(dataset)}
        counts = store.dataset_views(dataset)
        if models is None:
            # whole maps (--pool none) are --finetune's input: a row only when named in --models
            chosen = [s for fp, s in extracted.items() if (s.augment and fp in counts) or s.embedding] \
                or [resolve_spec(DEFAULT_MODEL)]
            fusions: list[Fusion] = []
        else:
            parts = {query: fusion_parts(query) for query in models}
            named = {part: store.extraction_named(dataset, part, "--models") for query in models for part in parts[query]}
            spec_of = {part: extracted[fp] if fp else resolve_spec(part) for part, fp in named.items()}
            chosen = [spec_of[query] for query in models if len(parts[query]) == 1]
            fusions = [tuple(spec_of[part] for part in parts[query]) for query in models if len(parts[query]) > 1]
    if any(s.pool == "none" for fusion in fusions for s in fusion):
        raise CompareError("a fused row (a+b) joins pooled extractions; whole maps (--pool none) cannot be fused")
    unviewed = [s.label() for fusion in fusions for s in fusion if s.augment and s.fingerprint() not in counts]
    if unviewed:
        raise CompareError(f"{unviewed[0]}: no cached views to fuse; run `bottleneck extract {root} --views K` with "
                           "that augmentation first")
    view_rows = [(s, counts[s.fingerprint()]) for s in chosen if s.augment]
    specs = [s.replace(augment=None) for s in chosen]
    if pixels:
        raw = resolve_spec(f"raw{pixels}")
        specs += [] if raw in specs else [raw]
    return dataset, root, list(dict.fromkeys(specs)), list(dict.fromkeys(view_rows)), data, list(dict.fromkeys(fusions))


def tails(specs: list[ExtractorSpec], layers: Sequence[str]) -> dict[ExtractorSpec, Tail]:
    """For each embedding row and each layer: the spec of that layer's whole maps, and the network
    after it (see `sources.build_tail`)."""
    found = {}
    for spec in specs:
        if spec.pixels or spec.layer is not None:
            continue
        for layer in layers:
            maps = spec.replace(layer=layer, pool="none", feature_dim=None)
            maps = next((s for s in specs if s.replace(feature_dim=None) == maps), maps)  # already a row
            try:
                found[maps] = build_tail(maps)
            except BottleneckError as exc:
                raise CompareError(f"--finetune {layer}: {exc}") from None
    if layers and not found:
        raise CompareError("--finetune needs an embedding row to cut (a model extraction, not raw pixels alone)")
    return found


def row_names(specs: list[ExtractorSpec]) -> list[str]:
    """Each spec's label; labels two specs share get their fingerprint's hash appended."""
    labels = [s.label() for s in specs]
    return [f"{label}~{s.fingerprint()[-6:]}" if labels.count(label) > 1 and s.complete else label
            for label, s in zip(labels, specs, strict=True)]


def bring_up_to_date(cache: Path, name: str, root: Path | str, specs: list[ExtractorSpec],
                     view_rows: list[tuple[ExtractorSpec, int]], progress: Progress | None,
                     source: Input | None = None) -> dict[ExtractorSpec, str]:
    """The step before a comparison, the only one that writes: what each row lacks is extracted while
    the dataset's folder is there (only images it lacks are computed; a model is built only then).
    Each spec → the fingerprint it is stored under, its width and precision decided (none without the folder)."""
    data, columns = source or (root, None)  # the dataset's folder, or its label file (`choose_features`)
    if not input_present(root) or not input_present(data):
        return {}
    options = ExtractOptions(progress=progress)
    stored = {spec: extract_dataset(data, spec, cache, name=name, options=options, remember=False,
                                    columns=columns).fingerprint for spec in specs}
    for spec, views in view_rows:
        extract_dataset(data, spec, cache, name=name, options=options, remember=False, views=views, columns=columns)
    return stored


Aligned = tuple[list[str], list[str], np.ndarray, np.ndarray, list[np.ndarray]]  # paths, shas, labels, splits, Xs


def load(cache: Path, name: str, root: Path | str, specs: list[ExtractorSpec], stored: dict[ExtractorSpec, str],
         view_rows: list[tuple[ExtractorSpec, int]], notes: list[str]
         ) -> tuple[list[Features], Aligned, list[np.ndarray], list[str]]:
    """All the comparison reads, in one read-only open of the cache: each feature set under the fingerprint
    `bring_up_to_date` found (else its own), aligned on the images they all have (`align`), and the views
    of those images for each views row. Without the folder: the images cached when it was last extracted."""
    if not input_present(root):
        notes.append(f"{root} is gone: compared the images cached when it was last extracted")
    fps = [stored.get(spec) or (spec.fingerprint() if spec.complete else "") for spec in specs]
    with Store.open(cache) as store:
        have = set(store.dataset_extractors(name))
        missing = [spec.label() for spec, fp in zip(specs, fps, strict=True) if fp not in have]
        if missing:
            raise CompareError(f"{', '.join(missing)}: not extracted for {name!r}; run `bottleneck extract {root} "
                               f"--model {missing[0]}` (or compare with the folder there, which extracts it)")
        loaded = [load_features(store, name, fp) for fp in fps]
        aligned = align(loaded, notes)
        views = [load_views(store, name, spec.fingerprint(), aligned[1]) for spec, _ in view_rows]
        addresses = image_addresses(store, name, aligned[0])
    return loaded, aligned, views, addresses


def align(features: list[Features], notes: list[str]) -> Aligned:
    """Keep the images every feature set has, in one row order (so draws mean the same images)."""
    common = set(features[0].paths).intersection(*(f.paths for f in features[1:]))
    keep = [p for p in features[0].paths if p in common]
    dropped = len(set().union(*(f.paths for f in features))) - len(keep)
    if dropped:
        notes.append(f"{dropped} images lack vectors for some feature set and were left out")
    Xs, first_rows = [], None
    for f in features:
        index = {p: i for i, p in enumerate(f.paths)}
        rows = np.array([index[p] for p in keep], dtype=np.int64)
        first_rows = rows if first_rows is None else first_rows
        Xs.append(f.X[rows])
    assert first_rows is not None
    shas = [features[0].shas[i] for i in first_rows]
    return keep, shas, features[0].labels[first_rows], features[0].splits[first_rows], Xs


def plain_rows(specs: list[ExtractorSpec], loaded: list[Features], Xs: list[np.ndarray], chosen: int,
               found: dict[ExtractorSpec, Tail]) -> list[Row]:
    """A row per spec; those past the first `chosen` are --finetune LAYER rows not asked for."""
    return [Row(spec, name, X, (features.spec or spec).fingerprint(), every_head=i < chosen, tail=found.get(spec))
            for i, (spec, name, features, X) in enumerate(zip(specs, row_names(specs), loaded, Xs, strict=True))]


def fused_rows(fusions: list[Fusion], rows: list[Row], views: dict[ExtractorSpec, np.ndarray]) -> list[Row]:
    """A row per fusion: its blocks' features side by side (aligned already), named a+b. A fusion with an
    augmented extraction (its `views`) gives a views row and its +tta twin: view k of every block is the
    same augmented image, a plain block repeats its one vector (`store.stack_views`)."""
    by_spec = {row.spec: row for row in rows}
    fused = []
    for fusion in fusions:
        blocks = [by_spec[spec.replace(augment=None)] for spec in fusion]
        widths = tuple(b.X.shape[1] for b in blocks)
        if not any(spec.augment for spec in fusion):
            fused.append(Row(blocks[0].spec, "+".join(b.name for b in blocks), np.concatenate([b.X for b in blocks], axis=1),
                             "+".join(b.fingerprint for b in blocks), blocks=widths))
            continue
        X = stack_views([b.X for b in blocks], [views[spec] if spec.augment else None for spec in fusion])
        count = X.shape[1] - 1
        name = "+".join(_views_name(b, spec, count) if spec.augment else b.name
                        for spec, b in zip(fusion, blocks, strict=True))
        fused += _tta_pair(blocks[0].spec, name, X, "+".join(spec.fingerprint() for spec in fusion) + f"+views{count}",
                           widths)
    return fused


def views_rows(view_rows: list[tuple[ExtractorSpec, int]], views: list[np.ndarray], plain: list[Row]) -> list[Row]:
    """For each augmented extraction (its `views` as `load` read them): a row trained on every view, and its
    test-time-augmented twin."""
    rows = []
    by_spec = {row.spec: row for row in plain}
    for (spec, count), X_views in zip(view_rows, views, strict=True):
        base = by_spec[spec.replace(augment=None)]
        rows += _tta_pair(spec, _views_name(base, spec, count), stack_views([base.X], [X_views]),
                          f"{spec.fingerprint()}+views{count}")
    return rows


def _views_name(base: Row, spec: ExtractorSpec, count: int) -> str:
    return f"{base.name}+views{count}" + ("" if spec.augment == DEFAULT_AUGMENT else f"[{spec.augment}]")


def _tta_pair(spec: ExtractorSpec, name: str, X: np.ndarray, fingerprint: str, blocks: tuple[int, ...] = ()
              ) -> list[Row]:
    """A views row, predicting from the plain view, and its twin predicting from the mean over all views."""
    return [Row(spec, name + suffix, X, fingerprint + suffix, tta=tta, blocks=blocks)
            for tta, suffix in ((False, ""), (True, "+tta"))]


def files_rows(whole: list[ExtractorSpec], plain: list[Row], addresses: list[str], shas: list[str]) -> list[Row]:
    """For each network --finetune all trains: a row of (sha, where its bytes are) items, named as the
    spec's own row."""
    if not whole:
        return []
    items = np.array([[sha, address] for address, sha in zip(addresses, shas, strict=True)], dtype=object).reshape(-1, 2)
    names = {row.spec: row.name for row in plain}
    return [Row(spec, names[spec], items, f"{spec.fingerprint()}+files", files=True) for spec in whole]


def settings(labels: np.ndarray, splits: np.ndarray, per_class: Sequence[int] | None, cv: int | None,
             repeats: int, seed: int, cap: bool, notes: list[str]) -> tuple[list[Setting], str]:
    """The draws, computed once and shared by every feature set and head."""
    if cv:
        return [(None, cv, kfold_splits(labels, cv, seed))], f"stratified {cv}-fold cross-validation (seed {seed})"
    pool, test = protocol_pool(splits)
    found: list[Setting] = []
    for n in per_class or []:
        draws = draw_per_class(labels, n, repeats, seed, pool=pool, test=test, cap=cap)
        classes, counts = np.unique(labels[draws[0].train], return_counts=True)
        short = [f"{c} ({k})" for c, k in zip(classes, counts, strict=True) if k < n]
        if short:
            notes.append(f"N={n} capped for {len(short)} classes: {', '.join(short)}")
        found.append((n, None, draws))
    tested = (f"tested on the {splits[test[0]]} split ({len(test)} images)" if test is not None
              else "tested on all the other images")
    return found, f"{repeats} draws of N training images per class (seed {seed}), {tested}"
