"""`bottleneck compare`: features × heads × (N per class | K-fold) × draws, then the report.

Rows are extractions named by their spec: by default every extraction of the dataset (with its
layer, pooling, weights, precision...) plus the raw-pixel baseline. Each is brought up to date
through the cache (cached images cost nothing and build no model), aligned on the images they all
have, and scored on the same draws, so every cell of the table is measured on the same images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from sklearn.metrics import confusion_matrix

from .augment import DEFAULT_AUGMENT
from .batched_logreg import BatchedLogReg
from .compare_fits import Estimators, Job, run_fits
from .compare_fits import by_cell as by_cell_of
from .compare_plan import (
    Plan,
    Row,
    Setting,
    bring_up_to_date,
    choose_features,
    files_rows,
    fused_rows,
    load,
    plain_rows,
    settings,
    tails,
    views_rows,
)
from .dataset_identity import input_present
from .errors import BottleneckError, CompareError, DeviceError
from .evaluate import Cell, CellRun, Split, check_folds, check_metric, check_per_class
from .finetune import FineTunedNetworkClassifier
from .heads import FineTunedTailClassifier, input_params, make_head
from .heads._factory import check_head
from .map_layout import cached_projection, check_available
from .map_page import EmbeddingMap, MapView, mark_bits
from .outputs import check_outputs, writing
from .progress import Progress
from .report import FILES, GALLERY_CAP, BestRun, Mistake, records, rich_table, write_report
from .runtime import resolve_device
from .sources import is_raw_name
from .spec import ExtractorSpec

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
    root: Path | str  # a str: a URL
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


@dataclass(frozen=True)
class CompareOptions:
    """A compare's options, checked once before any work: each error is the line the CLI prints."""

    heads: tuple[str, ...]
    per_class: tuple[int, ...] | None  # None under --cv; else sorted, DEFAULT_PER_CLASS when not given
    cv: int | None
    repeats: int
    seed: int
    metric: str
    tune: tuple[str, ...]
    cap: bool
    jobs: int
    finetune: tuple[str, ...] = ()
    device: str = "auto"
    torch_device: str | None = field(init=False, default=None)  # where logreg cells train in torch; None: sklearn

    def __post_init__(self) -> None:
        for head in [*self.heads, *self.tune]:
            check_head(head)
        if not self.heads:
            raise CompareError("no heads to compare; pass --heads, e.g. --heads logreg,svm")
        check_metric(self.metric)
        self._check_protocol()
        if self.jobs == 0:
            raise CompareError("--jobs 0: give the number of parallel fits (1 or more; -1 for one per core)")
        object.__setattr__(self, "heads", tuple(dict.fromkeys(self.heads)))
        object.__setattr__(self, "per_class", None if self.cv else tuple(sorted(set(self.per_class or DEFAULT_PER_CLASS))))
        object.__setattr__(self, "torch_device", _linear_device(self.device))

    def _check_protocol(self) -> None:
        per_class, cv = self.per_class, self.cv
        if per_class and cv:
            raise CompareError("pass --per-class or --cv, not both")
        if self.repeats < 1:
            raise CompareError(f"--repeats {self.repeats}: need at least 1 draw")
        if cv is not None:
            check_folds(cv)
        if per_class:
            check_per_class(min(per_class))


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
    update: bool = True,
    progress: Progress | None = None,
    embedding_map: bool = False,
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
    update: first extract what the rows lack while the dataset's folder is there (`compare_plan.
    bring_up_to_date`, the only step that writes the cache); False compares the cache as it is,
    opening it read-only.
    embedding_map: report.html shows each extraction's 2-D map (`map_layout.cached_projection`), its
    best cell's mistakes marked; the step after the comparison, which stores the layout in the cache
    when `update` (so the next report costs nothing) and only reads it otherwise.
    """
    start = time.perf_counter()
    options = CompareOptions(tuple(heads), None if per_class is None else tuple(per_class), cv, repeats, seed, metric,
                             tuple(tune), cap, (os.cpu_count() or 1) if jobs is None else jobs, tuple(finetune), device)
    plan = _plan(cache, dataset, models, pixels, out, options, update, progress)
    grid, runs = _fit_all(cache, plan, options, progress)
    return _score(plan, options, grid, runs, start, (Path(cache), update) if embedding_map else None)


def _plan(cache: Path, dataset: str | None, models: Sequence[str] | None, pixels: int | None, out: Path | None,
          options: CompareOptions, update: bool, progress: Progress | None) -> Plan:
    """Choose the features, check where the report goes, bring every row up to date (`update`), then
    load them read-only and draw."""
    name, root, specs, view_rows, source, fusions = choose_features(cache, dataset, models, pixels)
    if not specs and not fusions:
        raise CompareError("nothing to compare: no --models and no --pixels baseline")
    out = out or Path("reports") / name
    check_outputs([("the report", out / f) for f in FILES.values()], cache=cache,
                  inputs=[("the dataset folder", root)] if isinstance(root, Path) else [], folder=out)
    chosen = len(specs)  # rows of every head; a --finetune row not among them gets only its own cells
    whole = _whole_networks(specs, root) if WHOLE_NETWORK in options.finetune else []
    found = tails(specs, [layer for layer in options.finetune if layer != WHOLE_NETWORK])  # checked before any work
    specs += [spec for spec in found if spec not in specs]
    # loaded for their fused rows: each block's plain vectors, and the views of an augmented block
    specs += [p for p in dict.fromkeys(s.replace(augment=None) for fusion in fusions for s in fusion) if p not in specs]
    fused_views = list(dict.fromkeys(s for fusion in fusions for s in fusion if s.augment))
    stored = bring_up_to_date(cache, name, root, specs, view_rows, progress, source) if update else {}
    notes: list[str] = []
    loaded, (paths, shas, labels, splits, Xs), views, addresses = load(
        cache, name, root, specs, stored, view_rows + [(s, 0) for s in fused_views], notes)
    views, blocks_views = views[:len(view_rows)], dict(zip(fused_views, views[len(view_rows):], strict=True))
    if stored:  # each spec as stored: its width and precision decided
        as_stored = {spec: features.spec or spec for spec, features in zip(specs, loaded, strict=True)}
        specs, whole = [as_stored[s] for s in specs], [as_stored[s] for s in whole]
        found = {as_stored[s]: tail for s, tail in found.items()}
        fusions = [tuple(s if s.augment else as_stored[s] for s in fusion) for fusion in fusions]  # views: stored
    plain = plain_rows(specs, loaded, Xs, chosen, found)
    rows = plain + fused_rows(fusions, plain, blocks_views) + views_rows(view_rows, views, plain) + \
        files_rows(whole, plain, addresses, shas)
    if fusions:
        notes.append("a+b rows: the extractions' vectors side by side, each block standardised and weighted to the "
                     "same total variance (heads.BlockScaler), so no block counts more for being wider")
    if view_rows or fused_views:
        notes.append("+viewsK rows: the head trains on the plain and K augmented views of each training image "
                     "and predicts from the plain view; +tta rows from the mean of its scores over all views")
    draws, protocol = settings(labels, splits, options.per_class, options.cv, options.repeats, options.seed,
                               options.cap, notes)
    return Plan(name, root, out, rows, paths, addresses, shas, labels, draws, protocol, notes)


def _whole_networks(specs: list[ExtractorSpec], root: Path | str) -> list[ExtractorSpec]:
    """The embedding rows whose networks `--finetune all` trains on the files under `root`."""
    if not input_present(root):
        raise CompareError(f"--finetune {WHOLE_NETWORK} trains on the image files, and {root} is gone: "
                           "restore the folder, or leave out --finetune all")
    whole = [s for s in specs if not s.pixels and s.pool != "none"]
    if not whole:
        raise CompareError(f"--finetune {WHOLE_NETWORK} needs an embedding row to train (a model extraction, "
                           "not raw pixels alone)")
    return whole


def _heads_for(features: str, heads: list[str]) -> list[str]:
    if not is_raw_name(features):
        return [h for h in heads if h not in PIXEL_ONLY]
    return heads + [PIXEL_HEAD] if PIXEL_HEAD not in heads else heads


def _row_heads(row: Row, heads: list[str]) -> list[str]:
    if row.files:
        return [FINETUNE_HEAD]
    return (_heads_for(row.spec.model, heads) if row.every_head else []) + ([FINETUNE_HEAD] if row.tail else [])


def _jobs(rows: list[Row], heads: list[str], settings: list[Setting]) -> list[Job]:
    """The grid, flat: row × head × setting × draw, in the table's order."""
    return [Job(row, head, n, k, r, split) for row in rows for head in _row_heads(row, heads)
            for n, k, draws in settings for r, split in enumerate(draws)]


def _heads_used(jobs: list[Job]) -> list[tuple[str, bool, tuple[int, ...], int]]:
    """(head, on raw pixels, fused blocks, views per image) of every cell but the finetune ones, in the
    grid's order."""
    return list(dict.fromkeys((job.head, job.row.raw, job.row.blocks, _views(job.row)) for job in jobs
                              if job.head != FINETUNE_HEAD))


def _views(row: Row) -> int:
    """Rows per image a head's fit gets: auto splits its folds by image (`AutoHeadClassifier.views`)."""
    return row.X.shape[1] if row.X.ndim == 3 else 1


def _views_param(head: str, views: int) -> dict[str, Any]:
    return {"views": views} if head == "auto" and views > 1 else {}


def _estimators(jobs: list[Job], options: CompareOptions) -> Estimators:
    """One estimator per (row, head): scikit-learn heads shared by (head, raw pixels), batched logreg in
    torch on `options.torch_device`, a finetune head per --finetune row."""
    # Fits run in parallel across cells: a forest then builds its trees on one core.
    single: dict[str, Any] = {"n_jobs": 1} if options.jobs != 1 else {}
    sklearn_heads = {(h, raw, blocks, views): make_head(h, tune=h in options.tune, random_state=options.seed,
                                                        probabilities=False, blocks=blocks,
                                                        **(single if h in ("rf", "et") else {}), **input_params(h, raw),
                                                        **_views_param(h, views))
                     for h, raw, blocks, views in _heads_used(jobs)}
    batched = (BatchedLogReg(tune="logreg" in options.tune, random_state=options.seed)
               if options.torch_device is not None else None)
    estimators: Estimators = {}
    for row, head in dict.fromkeys((job.row, job.head) for job in jobs):
        if head == FINETUNE_HEAD and row.tail is not None:
            estimators[row, head] = FineTunedTailClassifier(*row.tail, random_state=options.seed)
        elif head == FINETUNE_HEAD:
            estimators[row, head] = FineTunedNetworkClassifier(row.spec, random_state=options.seed)
        elif head == "logreg" and batched is not None and row.X.ndim == 2:
            estimators[row, head] = replace(batched, blocks=row.blocks)
        else:
            estimators[row, head] = sklearn_heads[head, row.raw, row.blocks, _views(row)]
    return estimators


def _head_notes(plan: Plan, jobs: list[Job], tune: Sequence[str]) -> None:
    """The report's notes on how the heads train; first, the images, classes and tuned heads."""
    notes, used = plan.notes, _heads_used(jobs)
    if any(row.tail is not None for row in plan.rows):
        notes.append(f"{FINETUNE_HEAD} cells: the network after the row's layer (pretrained, batch-norm statistics "
                     "kept) and a linear layer, trained on that layer's cached maps from the tuned logreg probe: "
                     "AdamW at 1e-4, up to 30 epochs, early stopping on a tenth of the training draw")
    if any(row.files for row in plan.rows):
        notes.append(f"{FINETUNE_HEAD} cells of a model's own row (--finetune all): its whole network (batch-norm "
                     "statistics kept) and a linear layer from the tuned logreg probe, trained on the image files, "
                     f"view e of each image ({DEFAULT_AUGMENT}) decoded in epoch e: AdamW at 1e-5, up to 8 epochs, "
                     "early stopping on a tenth of the training draw; fits one at a time, on every core (or CUDA)")
    pixel_params = [f"{h} {', '.join(f'{k}={v}' for k, v in input_params(h, True).items())}"
                    for h, raw, _, _ in used if raw and input_params(h, True)]
    if pixel_params:
        notes.append(f"on raw pixels, settings that suit pixels better than the embedding rows' (README, heads): "
                     f"{'; '.join(pixel_params)}")
    tuned = ", ".join(h for h in dict.fromkeys(h for h, *_ in used) if h in tune) or "none"
    notes.insert(0, f"{len(plan.paths)} images, {len(np.unique(plan.labels))} classes; ± is the sample std (ddof=1) "
                    f"over draws; hyperparameters tuned inside each training draw: {tuned}")


def _fit_all(cache: Path, plan: Plan, options: CompareOptions,
             progress: Progress | None) -> tuple[list[Job], dict[Job, CellRun]]:
    """Every job's run: from cache/cells when fitted before, else fitted now (and kept there)."""
    jobs = _jobs(plan.rows, list(options.heads), plan.settings)
    estimators = _estimators(jobs, options)
    _head_notes(plan, jobs, options.tune)
    return jobs, run_fits(jobs, estimators, plan, Path(cache).parent / "cells", torch_device=options.torch_device,
                          n_jobs=options.jobs, progress=progress)


def _score(plan: Plan, options: CompareOptions, jobs: list[Job], runs: dict[Job, CellRun],
           start: float, mapped: tuple[Path, bool] | None = None) -> CompareResult:
    """The table's cells from the runs, the best cell's pictures, the map (`mapped`: the cache and whether
    it may be written), and the report."""
    by_cell = by_cell_of(jobs)
    cells = []
    for (row, head, n, k), cell_jobs in by_cell.items():
        cell = Cell(row.name, head, n, k)
        for job in cell_jobs:
            cell.add(plan.labels[job.split.test], runs[job])
        cells.append(cell)
    best_index = int(np.argmax([c.mean_std(options.metric)[0] for c in cells]))
    best_jobs = list(by_cell.values())[best_index]
    best = _best_run(cells[best_index], [job.split for job in best_jobs], [runs[job] for job in best_jobs],
                     plan.labels, plan.paths, options.seed)
    embedding, map_note = _embedding_map(plan, cells, by_cell, runs, options.metric, *mapped) if mapped else (None, "")
    with writing(plan.out):
        files = write_report(plan.out, cells, best, images=dict(zip(plan.paths, plan.addresses, strict=True)),
                             title=f"{plan.name}: {plan.protocol}", metric=options.metric, notes=plan.notes,
                             embedding_map=embedding, map_note=map_note)
    return CompareResult(plan.name, plan.root, plan.protocol, options.metric, cells, best, files, plan.notes,
                         time.perf_counter() - start)


def _linear_device(device: str) -> str | None:
    """Where logreg cells train in torch, None for scikit-learn. Compare's own words: "sklearn", and "auto"
    (torch only where CUDA is, else scikit-learn); `runtime.resolve_device` checks any other device."""
    if device == "sklearn":
        return None
    try:
        resolved = resolve_device(device)
    except DeviceError as exc:
        raise DeviceError(f"{exc} (compare also takes sklearn: scikit-learn fits)") from None
    except RuntimeError:  # not a device string torch can parse
        raise DeviceError(f"--device {device}: use auto, sklearn, cpu or cuda (cuda:N for one GPU)") from None
    return None if device == "auto" and resolved.type != "cuda" else str(resolved)


def _best_run(cell: Cell, draws: list[Split], runs: list[CellRun], labels: np.ndarray, paths: list[str],
              seed: int) -> BestRun:
    """Confusion summed over all draws; up to GALLERY_CAP mistakes of the first draw, sampled with `seed`."""
    classes = sorted(np.unique(labels).tolist())
    confusion = sum(confusion_matrix(labels[d.test], run.y_pred, labels=classes) for d, run in zip(draws, runs, strict=True))
    test, pred = draws[0].test, runs[0].y_pred
    wrong = np.flatnonzero(labels[test] != pred)
    chosen = np.random.default_rng(seed).permutation(wrong)[:GALLERY_CAP]
    mistakes = sorted((Mistake(paths[test[i]], str(labels[test[i]]), str(pred[i])) for i in chosen),
                      key=lambda m: (m.true, m.path))
    return BestRun(cell, classes, np.asarray(confusion), mistakes)


def _embedding_map(plan: Plan, cells: list[Cell], by_cell: dict, runs: dict[Job, CellRun], metric: str, cache: Path,
                   write: bool) -> tuple[EmbeddingMap | None, str]:
    """Each plain extraction row laid out in 2-D, the test images of its best cell's first draw marked
    where that cell was wrong; (None, why) when the map cannot be drawn (the `map` extra missing)."""
    rows = [row for row in dict.fromkeys(key[0] for key in by_cell)
            if isinstance(row.X, np.ndarray) and row.X.ndim == 2 and not row.files and not row.blocks
            and row.spec.pool != "none"]
    if not rows:
        return None, "no extraction row to draw"
    try:
        check_available()
        views = [_map_view(plan, row, cells, by_cell, runs, metric, cache, write) for row in rows]
    except BottleneckError as exc:
        plan.notes.append(f"no embedding map: {exc}")
        return None, str(exc)
    return EmbeddingMap(list(plan.paths), list(plan.addresses), [str(x) for x in plan.labels], views), ""


def _map_view(plan: Plan, row: Row, cells: list[Cell], by_cell: dict, runs: dict[Job, CellRun], metric: str,
              cache: Path, write: bool) -> MapView:
    fp = row.spec.fingerprint() if row.spec.complete else row.fingerprint
    xy, _ = cached_projection(cache, fp, plan.shas, row.X, write=write)
    keys = [key for key in by_cell if key[0] is row]
    scored = [(cell.mean_std(metric)[0], key) for cell, key in zip(cells, by_cell, strict=True) if key in keys]
    notes, marks, caption = [""] * len(plan.paths), [0] * len(plan.paths), ""
    if scored:
        _, key = max(scored, key=lambda item: item[0])
        job = by_cell[key][0]
        _, head, n, k = key
        setting = f"{k}-fold, fold 1" if k else f"N={n}, draw 1"
        wrong = mark_bits(["misclassified"])
        for i, predicted in zip(job.split.test, runs[job].y_pred, strict=True):
            notes[i] = f"predicted: {predicted} ({head}, {setting})"
            marks[i] = wrong if str(predicted) != str(plan.labels[i]) else 0
        caption = (f"marked: the test images that {head} ({setting}), this row's best head, got wrong; "
                   "hover a test image for its prediction")
    return MapView(row.name, xy, marks, notes, caption=caption)
