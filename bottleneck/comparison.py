"""`bottleneck compare`: features × heads × (N per class | K-fold) × draws, then the report.

Rows are extractions named by their spec: by default every extraction of the dataset (with its
layer, pooling, weights, precision...) plus the raw-pixel baseline. Each is brought up to date
through the cache (cached images cost nothing and build no model), aligned on the images they all
have, and scored on the same draws, so every cell of the table is measured on the same images.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from rich.table import Table
from sklearn.metrics import confusion_matrix

from .augment import DEFAULT_AUGMENT
from .batched_logreg import BatchedLogReg, fit_draws
from .cells import CellCache
from .errors import BottleneckError, CompareError
from .evaluate import METRICS, Cell, CellRun, Split, draw_per_class, kfold_splits, protocol_pool, run_cell
from .extraction import ExtractOptions, extract_dataset
from .finetune import FineTunedNetworkClassifier
from .heads import HEADS, FineTunedTailClassifier, input_params, make_head
from .outputs import check_outputs, writing
from .progress import Progress, with_detail
from .report import FILES, GALLERY_CAP, BestRun, Mistake, records, rich_table, write_report
from .sources import DEFAULT_MODEL, build_tail, is_raw_name, resolve_spec
from .spec import ExtractorSpec
from .store import Features, Store, load_features, load_views

__all__ = ["CompareError", "CompareResult", "run_compare"]

DEFAULT_HEADS = ("logreg", "svm", "et")
DEFAULT_PER_CLASS = (15, 30)
# Tuned by default: logreg's C, as in the published linear-probe protocol; its path search is
# cheap. A tuned SVM costs grid × folds × calibration fits per draw, so it is tuned only on
# request (--tune logreg,svm).
DEFAULT_TUNED = ("logreg",)
PIXEL_HEAD = "nb"  # raw pixels also get Gaussian naive Bayes, the classic pixel baseline
PIXEL_ONLY = ("cnn",)  # heads that read raw pixels as images: no cells on embedding rows
FINETUNE_HEAD = "finetune"  # the head column of --finetune cells
WHOLE_NETWORK = "all"  # --finetune all: the whole network, trained on the image files


@dataclass
class CompareResult:
    dataset: str
    root: Path
    protocol: str
    metric: str
    cells: list[Cell]
    best: BestRun  # the pictures' subject: the cell with the highest mean `metric`
    files: dict[str, Path]  # kind ("markdown", "csv", "json", "confusion", ...) → path
    notes: list[str]
    seconds: float

    def table(self) -> Table:
        return rich_table(self.cells, self.metric, f"{self.dataset}: {self.protocol}")

    def to_frame(self) -> Any:
        """A pandas DataFrame of results.json's records: one row per cell and metric."""
        import pandas as pd

        return pd.DataFrame(records(self.cells))


def run_compare(
    cache: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    heads: Sequence[str] = DEFAULT_HEADS,
    per_class: Sequence[int] | None = None,
    cv: int | None = None,
    repeats: int = 5,
    seed: int = 0,
    pixels: int | None = 32,
    metric: str = "accuracy",
    tune: Sequence[str] = DEFAULT_TUNED,
    cap: bool = False,
    out: Path | None = None,
    jobs: int | None = None,
    device: str = "auto",
    finetune: Sequence[str] = (),
    progress: Progress | None = None,
) -> CompareResult:
    """Compare feature sets and heads on one cached dataset and write the report under `out`.

    dataset: default the last one extracted into `cache`. models: default (None) every extraction of
    it (raw pixels aside), else efficientnet_lite0; each entry of a list is a model name, a label
    such as `resnet50[layer3,max]` or a fingerprint; [] for the pixel baseline alone. per_class / cv: one
    or the other (default per_class 15,30). pixels: the raw-pixel baseline raw{pixels}, None for none.
    tune: heads whose hyperparameters are searched inside each training draw (logreg: along a
    warm-started C path on a held-out part). jobs: parallel fits (default one per core).
    device: where logreg cells train: "auto" (torch on CUDA, all draws of a cell in one solve, when
    CUDA is there; else scikit-learn), "sklearn", or a torch device ("cuda", "cuda:1", "cpu").
    finetune: layers (e.g. blocks.5) at which each embedding row's network is cut: a row of that
    layer's cached maps (`--pool none`) on which the rest of the network and a linear layer train;
    "all": a finetune cell on each embedding row that trains its whole network on augmented images
    decoded from the files (`finetune.FineTunedNetworkClassifier`), the expensive reference.
    cap: take min(N, what a class can spare) instead of failing on small classes.
    """
    start = time.perf_counter()
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    heads, per_class = _check_options(heads, per_class, cv, repeats, metric, tune, jobs)
    torch_device = _linear_device(device)
    name, root, specs, view_rows = _choose_features(cache, dataset, models, pixels)
    if not specs:
        raise CompareError("nothing to compare: no --models and no --pixels baseline")
    out = out or Path("reports") / name
    check_outputs([("the report", out / f) for f in FILES.values()], cache=cache,
                  inputs=[("the dataset folder", root)], folder=out)
    chosen = len(specs)  # rows of every head; a --finetune row not among them gets only its own cells
    whole = _whole_networks(specs, root) if WHOLE_NETWORK in finetune else []
    tails = _tails(specs, [layer for layer in finetune if layer != WHOLE_NETWORK])  # checked before any work
    specs += [spec for spec in tails if spec not in specs]
    notes: list[str] = []
    loaded = _load(cache, name, root, specs, progress, notes)
    fingerprints = [spec.fingerprint() for spec in (f.spec for f in loaded) if spec is not None]
    paths, shas, labels, splits, Xs = _align(loaded, notes)
    names, models_of, tta = _row_names(specs), [s.model for s in specs], [False] * len(specs)
    for spec, views in view_rows:  # a row trained on every view, and its test-time-augmented twin
        X = np.concatenate([Xs[specs.index(spec.replace(augment=None))][:, None],
                            _load_views(cache, name, root, spec, views, shas, progress)], axis=1)
        row = f"{names[specs.index(spec.replace(augment=None))]}+views{views}"
        row += "" if spec.augment == DEFAULT_AUGMENT else f"[{spec.augment}]"
        for test_time in (False, True):
            Xs.append(X)
            names.append(row + ("+tta" if test_time else ""))
            fingerprints.append(f"{spec.fingerprint()}+views{views}" + ("+tta" if test_time else ""))
            models_of.append(spec.model)
            tta.append(test_time)
    whole_rows = {}  # row → spec of the network its finetune cells train on the files
    items = np.array([[sha, str(root / path)] for path, sha in zip(paths, shas)], dtype=object).reshape(-1, 2)
    for spec in whole:
        whole_rows[len(Xs)] = spec
        Xs.append(items)
        names.append(names[specs.index(spec)])
        fingerprints.append(f"{spec.fingerprint()}+files")
        models_of.append(spec.model)
        tta.append(False)
    if view_rows:
        notes.append("+viewsK rows: the head trains on the plain and K augmented views of each training image "
                     "and predicts from the plain view; +tta rows from the mean of its scores over all views")
    settings, protocol = _settings(labels, splits, per_class, cv, repeats, seed, cap, notes)
    tuned_tail = {specs.index(spec): tail for spec, tail in tails.items()}

    def row_heads(f: int) -> list[str]:
        if f in whole_rows:
            return [FINETUNE_HEAD]
        return (_heads_for(models_of[f], heads) if f < chosen or f >= len(specs) else []) \
            + ([FINETUNE_HEAD] if f in tuned_tail else [])

    grid = [(f, h, s) for f in range(len(Xs)) for h in row_heads(f) for s in range(len(settings))]
    # Fits run in parallel across cells: a forest then builds its trees on one core.
    single: dict[str, Any] = {"n_jobs": 1} if jobs != 1 else {}
    heads_used = dict.fromkeys((h, is_raw_name(models_of[f])) for f, h, _ in grid if h != FINETUNE_HEAD)
    sklearn_heads = {(h, raw): make_head(h, tune=h in tune, random_state=seed, probabilities=False,
                                         **(single if h in ("rf", "et") else {}), **input_params(h, raw))
                     for h, raw in heads_used}
    batched = BatchedLogReg(tune="logreg" in tune, random_state=seed) if torch_device is not None else None
    estimators: dict[tuple[int, str], object] = {
        (f, h): batched if h == "logreg" and batched is not None and Xs[f].ndim == 2
        else sklearn_heads[h, is_raw_name(models_of[f])] for f, h, _ in grid if h != FINETUNE_HEAD}
    for f, (tail, shape) in tuned_tail.items():
        estimators[f, FINETUNE_HEAD] = FineTunedTailClassifier(tail, shape, random_state=seed)
    if tuned_tail:
        notes.append(f"{FINETUNE_HEAD} cells: the network after the row's layer (pretrained, batch-norm statistics "
                     "kept) and a linear layer, trained on that layer's cached maps from the tuned logreg probe: "
                     "AdamW at 1e-4, up to 30 epochs, early stopping on a tenth of the training draw")
    for f, spec in whole_rows.items():
        estimators[f, FINETUNE_HEAD] = FineTunedNetworkClassifier(spec, random_state=seed)
    if whole_rows:
        notes.append(f"{FINETUNE_HEAD} cells of a model's own row (--finetune all): its whole network (batch-norm "
                     "statistics kept) and a linear layer from the tuned logreg probe, trained on the image files, "
                     f"view e of each image ({DEFAULT_AUGMENT}) decoded in epoch e: AdamW at 1e-5, up to 8 epochs, "
                     "early stopping on a tenth of the training draw; fits one at a time, on every core (or CUDA)")
    pixel_params = [f"{h} {', '.join(f'{k}={v}' for k, v in input_params(h, True).items())}"
                    for h, raw in heads_used if raw and input_params(h, True)]
    if pixel_params:
        notes.append(f"on raw pixels, settings that suit pixels better than the embedding rows' (README, heads): "
                     f"{'; '.join(pixel_params)}")
    tuned = ", ".join(h for h in dict.fromkeys(h for h, _ in heads_used) if h in tune) or "none"
    notes.insert(0, f"{len(paths)} images, {len(np.unique(labels))} classes; ± is the sample std (ddof=1) over "
                    f"draws; hyperparameters tuned inside each training draw: {tuned}")
    fitted = CellCache(Path(cache).parent / "cells")
    head_hashes = {key: joblib.hash(estimator) for key, estimator in estimators.items()}
    keys = {(f, h, s, r): fitted.key(fingerprints[f], head_hashes[f, h], shas, labels, split)
            for f, h, s in grid for r, split in enumerate(settings[s][2])}
    runs = _run_grid(grid, settings, estimators, Xs, tta, labels, names, jobs, with_detail(progress), fitted, keys,
                     torch_device)

    cells = []
    for f, h, s in grid:
        n, k, draws = settings[s]
        cell = Cell(names[f], h, n, k)
        for split, run in zip(draws, runs[(f, h, s)]):
            cell.add(labels[split.test], run)
        cells.append(cell)
    best_index = int(np.argmax([c.mean_std(metric)[0] for c in cells]))
    f, h, s = grid[best_index]
    best = _best_run(cells[best_index], settings[s][2], runs[(f, h, s)], labels, paths, seed)
    with writing(out):
        files = write_report(out, cells, best, root=root, title=f"{name}: {protocol}", metric=metric, notes=notes)
    return CompareResult(name, root, protocol, metric, cells, best, files, notes, time.perf_counter() - start)


def _whole_networks(specs: list[ExtractorSpec], root: Path) -> list[ExtractorSpec]:
    """The embedding rows whose networks `--finetune all` trains on the files under `root`."""
    if not root.is_dir():
        raise CompareError(f"--finetune {WHOLE_NETWORK} trains on the image files, and {root} is gone: "
                           "restore the folder, or leave out --finetune all")
    whole = [s for s in specs if not is_raw_name(s.model) and s.pool != "none"]
    if not whole:
        raise CompareError(f"--finetune {WHOLE_NETWORK} needs an embedding row to train (a model extraction, "
                           "not raw pixels alone)")
    return whole


def _tails(specs: list[ExtractorSpec], layers: Sequence[str]) -> dict[ExtractorSpec, tuple[torch.nn.Module, tuple]]:
    """For each embedding row and each layer: the spec of that layer's whole maps, and the network
    after it (see `sources.build_tail`)."""
    tails = {}
    for spec in specs:
        if is_raw_name(spec.model) or spec.layer is not None:
            continue
        for layer in layers:
            maps = spec.replace(layer=layer, pool="none", feature_dim=None)
            maps = next((s for s in specs if s.replace(feature_dim=None) == maps), maps)  # already a row
            try:
                tails[maps] = build_tail(maps)
            except BottleneckError as exc:
                raise CompareError(f"--finetune {layer}: {exc}") from None
    if layers and not tails:
        raise CompareError("--finetune needs an embedding row to cut (a model extraction, not raw pixels alone)")
    return tails


def _heads_for(features: str, heads: list[str]) -> list[str]:
    if not is_raw_name(features):
        return [h for h in heads if h not in PIXEL_ONLY]
    return heads + [PIXEL_HEAD] if PIXEL_HEAD not in heads else heads


def _check_options(heads: Sequence[str], per_class: Sequence[int] | None, cv: int | None, repeats: int,
                   metric: str, tune: Sequence[str], jobs: int) -> tuple[list[str], list[int] | None]:
    for head in [*heads, *tune]:
        if head not in HEADS:
            raise CompareError(f"unknown head {head!r}; known heads: {', '.join(HEADS)}")
    if not heads:
        raise CompareError("no heads to compare; pass --heads, e.g. --heads logreg,svm")
    if metric not in METRICS:
        raise CompareError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if per_class and cv:
        raise CompareError("pass --per-class or --cv, not both")
    if repeats < 1:
        raise CompareError(f"--repeats {repeats}: need at least 1 draw")
    if cv is not None and cv < 2:
        raise CompareError(f"--cv {cv}: K-fold needs at least 2 folds")
    if per_class and min(per_class) < 1:
        raise CompareError(f"--per-class {min(per_class)}: need at least 1 training image per class")
    if jobs == 0:
        raise CompareError("--jobs 0: give the number of parallel fits (1 or more; -1 for one per core)")
    if cv:
        return list(dict.fromkeys(heads)), None
    return list(dict.fromkeys(heads)), sorted(set(per_class or DEFAULT_PER_CLASS))


def _choose_features(cache: Path, dataset: str | None, models: Sequence[str] | None, pixels: int | None
                     ) -> tuple[str, Path, list[ExtractorSpec], list[tuple[ExtractorSpec, int]]]:
    """(dataset name, root, the specs of its plain rows, (augmented spec, views) of its views rows):
    every query is resolved before any work. A views row brings its plain spec's row along."""
    with Store.open(cache) as store:
        if dataset is None:
            last = store.last_run()
            if last is None:
                raise CompareError(
                    f"{cache}: no dataset extracted yet; run `bottleneck extract DATA --cache {cache}` first")
            dataset = last[0]
        root = store.dataset_root(dataset)  # StoreError naming the cached datasets if unknown
        extracted = {fp: store.extractor_spec(fp) for fp in store.dataset_extractors(dataset)}
        counts = store.dataset_views(dataset)
        if models is None:
            # whole maps (--pool none) are --finetune's input: a row only when named in --models
            chosen = [s for fp, s in extracted.items() if (s.augment and fp in counts) or
                      not (s.augment or is_raw_name(s.model) or s.pool == "none")] or [resolve_spec(DEFAULT_MODEL)]
        else:
            chosen = []
            for query in models:
                fps = store.match_extractors(dataset, query)
                if len(fps) > 1:
                    several = ", ".join(f"{extracted[fp].label()} ({fp})" for fp in fps)
                    raise CompareError(f"--models {query}: dataset {dataset!r} has {len(fps)} extractions of it: "
                                       f"{several}; name one by its label or fingerprint")
                chosen.append(extracted[fps[0]] if fps else resolve_spec(query))
    view_rows = [(s, counts[s.fingerprint()]) for s in chosen if s.augment]
    specs = [s.replace(augment=None) for s in chosen]
    if pixels:
        raw = resolve_spec(f"raw{pixels}")
        specs += [] if raw in specs else [raw]
    return dataset, root, list(dict.fromkeys(specs)), list(dict.fromkeys(view_rows))


def _row_names(specs: list[ExtractorSpec]) -> list[str]:
    """Each spec's label; labels two specs share get their fingerprint's hash appended."""
    labels = [s.label() for s in specs]
    return [f"{label}~{s.fingerprint()[-6:]}" if labels.count(label) > 1 and s.complete else label
            for label, s in zip(labels, specs)]


def _load(cache: Path, name: str, root: Path, specs: list[ExtractorSpec], progress: Progress | None,
          notes: list[str]) -> list[Features]:
    """Each feature set, brought up to date through the cache first while the dataset's folder is
    there (only images it lacks are computed; a model is built only then). Without the folder, the
    cached manifest is compared as it is."""
    if not root.is_dir():
        notes.append(f"{root} is gone: compared the images cached when it was last extracted")
    loaded = []
    for spec in specs:
        if root.is_dir() or not spec.complete:
            report = extract_dataset(root, spec, cache, name=name, options=ExtractOptions(progress=progress),
                                     remember=False)
            fp = report.fingerprint
        else:
            fp = spec.fingerprint()
        loaded.append(load_features(cache, name, fp))  # right after its own manifest
    return loaded


def _load_views(cache: Path, name: str, root: Path, spec: ExtractorSpec, views: int, shas: list[str],
                progress: Progress | None) -> np.ndarray:
    """(images, views, dim) for `shas`, brought up to date through the cache while the folder is there."""
    if root.is_dir():
        extract_dataset(root, spec, cache, name=name, options=ExtractOptions(progress=progress), remember=False,
                        views=views)
    return load_views(cache, name, spec.fingerprint(), shas)


def _align(features: list[Features],
           notes: list[str]) -> tuple[list[str], list[str], np.ndarray, np.ndarray, list[np.ndarray]]:
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


Setting = tuple[int | None, int | None, list[Split]]  # (N per class, K folds, draws)


def _settings(labels: np.ndarray, splits: np.ndarray, per_class: list[int] | None, cv: int | None,
              repeats: int, seed: int, cap: bool, notes: list[str]) -> tuple[list[Setting], str]:
    """The draws, computed once and shared by every feature set and head."""
    if cv:
        return [(None, cv, kfold_splits(labels, cv, seed))], f"stratified {cv}-fold cross-validation (seed {seed})"
    pool, test = protocol_pool(splits)
    settings: list[Setting] = []
    for n in per_class or []:
        draws = draw_per_class(labels, n, repeats, seed, pool=pool, test=test, cap=cap)
        classes, counts = np.unique(labels[draws[0].train], return_counts=True)
        short = [f"{c} ({k})" for c, k in zip(classes, counts) if k < n]
        if short:
            notes.append(f"N={n} capped for {len(short)} classes: {', '.join(short)}")
        settings.append((n, None, draws))
    tested = (f"tested on the {splits[test[0]]} split ({len(test)} images)" if test is not None
              else "tested on all the other images")
    return settings, f"{repeats} draws of N training images per class (seed {seed}), {tested}"


def _fit(key: tuple[int, str, int], r: int, estimator: object, X: np.ndarray, tta: bool, y: np.ndarray,
         split: Split) -> tuple[tuple[int, str, int], int, CellRun | str]:
    """One fit in a worker; a failure comes back as its message so the grid can name the cell."""
    try:
        return key, r, run_cell(estimator, X, y, split, tta)
    except Exception as exc:  # noqa: BLE001 - any estimator error becomes a CompareError naming the cell
        return key, r, f"{type(exc).__name__}: {exc}".splitlines()[0]


def _run_grid(grid: list[tuple[int, str, int]], settings: list[Setting], estimators: dict[tuple[int, str], object],
              Xs: list[np.ndarray], tta: list[bool], labels: np.ndarray, names: list[str], jobs: int,
              report: Callable[[str, int, int, str], None], cells: CellCache,
              keys: dict[tuple[int, str, int, int], str],
              torch_device: str | None) -> dict[tuple[int, str, int], list[CellRun]]:
    """Every (feature set, head, setting, draw) fit not cached yet: batched logreg cells in torch on
    `torch_device`, whole networks one at a time in this process, the rest in parallel with `jobs`
    joblib workers."""
    done: dict[tuple[tuple[int, str, int], int], CellRun] = {}
    tasks = []
    for key in grid:
        for r, split in enumerate(settings[key[2]][2]):
            cached = cells.get(keys[(*key, r)])
            if cached is None:
                tasks.append((key, r, split))
            else:
                done[key, r] = cached
    total = len(done) + len(tasks)

    def cell_name(key: tuple[int, str, int]) -> str:
        n, k, _ = settings[key[2]]
        return f"{names[key[0]]} + {key[1]}, " + (f"{k}-fold" if k else f"N={n}")

    batched = [t for t in tasks if isinstance(estimators[t[0][:2]], BatchedLogReg)]
    serial = [t for t in tasks if isinstance(estimators[t[0][:2]], FineTunedNetworkClassifier)]
    pending = [t for t in tasks if t not in batched and t not in serial]

    def show() -> None:  # the current cell: the first unfinished one in the order fits start
        now = next((cell_name(k) for k, r, _ in batched + pending + serial if (k, r) not in done), "")
        report("fits", len(done), total, now)

    def finished(key: tuple[int, str, int], r: int, run: CellRun) -> None:
        done[key, r] = run
        cells.put(keys[(*key, r)], run)
        show()

    show()
    for key in dict.fromkeys(t[0] for t in batched):
        draws = [(r, split) for k, r, split in batched if k == key]
        head = estimators[key[:2]]
        assert isinstance(head, BatchedLogReg) and torch_device is not None
        try:
            result = fit_draws(head, Xs[key[0]], labels, [s.train for _, s in draws], [s.test for _, s in draws],
                               torch_device)
        except (RuntimeError, ValueError) as exc:  # CUDA out of memory, a solver failure...
            raise CompareError(f"{cell_name(key)} failed on {torch_device}: {str(exc).splitlines()[0]}; "
                               "pass --device sklearn to fit it on the CPU") from None
        for (r, _), y_pred in zip(draws, result.y_pred):
            finished(key, r, CellRun(y_pred, result.fit_seconds, result.predict_seconds))
    with tempfile.TemporaryDirectory(prefix="bottleneck-") as tmp:
        if jobs != 1:  # memory-map the features once instead of shipping (and hashing) them per fit
            shared: dict[int, np.ndarray] = {}  # a views row and its +tta twin share one array
            for i, X in enumerate(Xs):
                if id(X) not in shared:
                    shared[id(X)] = joblib.load(joblib.dump(X, f"{tmp}/{i}.joblib")[0], mmap_mode="r")
            Xs = [shared[id(X)] for X in Xs]
        calls = (joblib.delayed(_fit)(key, r, estimators[key[:2]], Xs[key[0]], tta[key[0]], labels, split)
                 for key, r, split in pending)
        for key, r, run in joblib.Parallel(n_jobs=jobs, return_as="generator_unordered")(calls):
            if isinstance(run, str):
                raise CompareError(f"{cell_name(key)}, draw {r + 1} failed: {run}")
            finished(key, r, run)
    for key, r, split in serial:  # a whole network takes every core (or the GPU) for itself
        _, _, run = _fit(key, r, estimators[key[:2]], Xs[key[0]], False, labels, split)
        if isinstance(run, str):
            raise CompareError(f"{cell_name(key)}, draw {r + 1} failed: {run}")
        finished(key, r, run)
    return {key: [done[key, r] for r in range(len(settings[key[2]][2]))] for key in grid}


def _linear_device(device: str) -> str | None:
    """The torch device for batched logreg cells, or None for scikit-learn."""
    if device == "sklearn":
        return None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else None
    try:
        torch.device(device)
    except RuntimeError:
        raise CompareError(f"--device {device}: use auto, sklearn, cpu or cuda (cuda:N for one GPU)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CompareError(f"--device {device}: CUDA is not available here; use auto, sklearn or cpu")
    return device


def _best_run(cell: Cell, draws: list[Split], runs: list[CellRun], labels: np.ndarray, paths: list[str],
              seed: int) -> BestRun:
    """Confusion summed over all draws; up to GALLERY_CAP mistakes of the first draw, sampled with `seed`."""
    classes = sorted(np.unique(labels).tolist())
    confusion = sum(confusion_matrix(labels[d.test], run.y_pred, labels=classes) for d, run in zip(draws, runs))
    test, pred = draws[0].test, runs[0].y_pred
    wrong = np.flatnonzero(labels[test] != pred)
    chosen = np.random.default_rng(seed).permutation(wrong)[:GALLERY_CAP]
    mistakes = sorted((Mistake(paths[test[i]], str(labels[test[i]]), str(pred[i])) for i in chosen),
                      key=lambda m: (m.true, m.path))
    return BestRun(cell, classes, np.asarray(confusion), mistakes)
