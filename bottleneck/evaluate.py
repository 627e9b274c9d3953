"""Evaluation protocols on arrays: N images per class × R seeded draws, or stratified K-fold; scores.

Nothing here reads files: `compare` loads features and hands over labels, splits and vectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score, confusion_matrix
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from .errors import BottleneckError, CompareError
from .heads import labels_from_scores

# balanced_accuracy (scikit-learn's name) and mean_class_accuracy (the Caltech-101 papers' name) are
# the same number, the mean per-class recall; both are stored so either name finds it.
METRICS = ("accuracy", "balanced_accuracy", "mean_class_accuracy")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise CompareError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def check_per_class(n: int) -> None:
    if n < 1:
        raise CompareError(f"--per-class {n}: need at least 1 training image per class")


def check_folds(k: int, option: str = "--cv", error: type[BottleneckError] = CompareError) -> None:
    """K-fold's rule, for compare's --cv and audit's --folds alike."""
    if k < 2:
        raise error(f"{option} {k}: K-fold needs at least 2 folds")


def check_stratified_folds(labels: np.ndarray, k: int, option: str = "--cv",
                           error: type[BottleneckError] = CompareError) -> None:
    """`check_folds`, and every class with an image in each fold."""
    check_folds(k, option, error)
    classes, counts = np.unique(labels, return_counts=True)
    smallest = int(np.argmin(counts))
    if counts[smallest] < k:
        hint = (f"use {option} {counts[smallest]} or less" if counts[smallest] >= 2
                else "add images to it or remove its folder")
        raise error(f"{option} {k}: class {str(classes[smallest])!r} has only {counts[smallest]} images; {hint}")


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices, sorted
    test: np.ndarray


def protocol_pool(splits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows to draw training images from, fixed test rows or None for "test on the rest").

    A dataset with split folders is tested on its "test" split, else on "val"; draws come from
    "train". Without split folders (or without a held-out split) everything is in the pool.
    """
    splits = np.asarray(splits)
    train = np.flatnonzero(splits == "train")
    for held_out in ("test", "val"):
        test = np.flatnonzero(splits == held_out)
        if len(train) and len(test):
            return train, test
    return np.arange(len(splits)), None


def draw_per_class(
    labels: np.ndarray, n: int, repeats: int, seed: int, *,
    pool: np.ndarray | None = None, test: np.ndarray | None = None, cap: bool = False,
) -> list[Split]:
    """`repeats` stratified draws of `n` training rows per class from `pool`.

    Draw r shuffles each class with `default_rng([seed, r])`, independently of `n`, so draws are
    nested (the 15 of N=15 are among the 30 of N=30) and do not change when `repeats` grows.
    Test rows are `test` when given, else the rest of the pool, which keeps at least one image per
    class. `cap=True` takes min(n, what the class can spare) instead of raising CompareError.
    """
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    spare = 0 if test is not None else 1
    classes, counts = np.unique(labels[pool], return_counts=True)
    smallest = int(np.argmin(counts))
    check_per_class(n)
    if n > counts[smallest] - spare and not cap:
        usable = int(counts[smallest]) - spare
        where = "training images" if test is not None else "images"
        raise CompareError(
            f"--per-class {n}: class {str(classes[smallest])!r} has only {counts[smallest]} {where}; "
            f"use --per-class {usable} or less, or pass --cap to take at most {usable} from that class"
        )
    members = [np.sort(pool[labels[pool] == c]) for c in classes]
    draws = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        train = np.sort(np.concatenate([rng.permutation(m)[: min(n, len(m) - spare)] for m in members]))
        draws.append(Split(train, np.asarray(test) if test is not None else np.setdiff1d(pool, train)))
    return draws


def kfold_splits(labels: np.ndarray, k: int, seed: int) -> list[Split]:
    """Stratified K-fold over all rows: every row is tested exactly once."""
    labels = np.asarray(labels)
    check_stratified_folds(labels, k)
    folds = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    return [Split(np.sort(train), np.sort(test)) for train, test in folds]


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Every metric in METRICS for one draw."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "mean_class_accuracy": float(np.mean(np.diag(matrix) / matrix.sum(axis=1))),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over draws; std is 0 for a single draw."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


@dataclass
class CellRun:
    y_pred: np.ndarray
    fit_seconds: float
    predict_seconds: float


def run_cell(estimator: Any, X: np.ndarray, y: np.ndarray, split: Split, tta: bool = False) -> CellRun:
    """Fit a fresh clone of `estimator` on the training rows and predict the test rows.

    X of shape (images, views, dim) holds each image's plain view first, then its augmented views:
    the head trains on every view of the training images and predicts from the plain view, or with
    `tta` from the mean of its scores (probabilities, else decision values) over all views.

    BLAS runs single-threaded: at these sizes threads cost more than they give (logreg on
    3030 x 1280 fits 7x faster on 2 cores), and `--jobs` parallelises across fits instead.
    """
    model = clone(estimator)
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        if X.ndim == 3:
            model.fit(X[split.train].reshape(-1, X.shape[2]), np.repeat(y[split.train], X.shape[1]))
        else:
            model.fit(X[split.train], y[split.train])
        fitted = time.perf_counter()
        if X.ndim == 3 and tta:
            test = X[split.test]
            score = model.predict_proba if hasattr(model, "predict_proba") else model.decision_function
            mean = np.mean([score(test[:, v]) for v in range(X.shape[1])], axis=0)
            y_pred = labels_from_scores(model.classes_, mean)
        else:
            y_pred = model.predict(X[split.test, 0] if X.ndim == 3 else X[split.test])
    return CellRun(np.asarray(y_pred), fitted - start, time.perf_counter() - fitted)


@dataclass
class Cell:
    """One table cell: a feature set × head × N (or K-fold), with one value per draw."""

    features: str
    head: str
    per_class: int | None  # None under --cv
    cv: int | None = None
    scores: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    fit_seconds: list[float] = field(default_factory=list)
    predict_seconds: list[float] = field(default_factory=list)

    def add(self, y_true: np.ndarray, run: CellRun) -> None:
        for metric, value in score(y_true, run.y_pred).items():
            self.scores[metric].append(value)
        self.fit_seconds.append(run.fit_seconds)
        self.predict_seconds.append(run.predict_seconds)

    def mean_std(self, metric: str) -> tuple[float, float]:
        return mean_std(self.scores[metric])

    @property
    def mean_fit_seconds(self) -> float:
        return float(np.mean(self.fit_seconds))

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready row per metric."""
        rows = []
        for metric in METRICS:
            mean, std = self.mean_std(metric)
            rows.append({
                "features": self.features, "head": self.head, "per_class": self.per_class, "cv": self.cv,
                "metric": metric, "mean": mean, "std": std, "draws": len(self.scores[metric]),
                "fit_seconds": self.mean_fit_seconds, "predict_seconds": float(np.mean(self.predict_seconds)),
                "values": list(self.scores[metric]),
            })
        return rows
