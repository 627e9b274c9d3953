"""Logistic regression with C chosen on held-out parts of the training data (the C path)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import BaseCrossValidator, StratifiedKFold, StratifiedShuffleSplit
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

DEFAULT_C = 0.1  # the C when nothing can be held out (fewer than 2 images in some class)

State = TypeVar("State")


class _StratifiedKFoldUpTo(BaseCrossValidator):
    """Shuffled StratifiedKFold with ``min(max_splits, smallest class count)`` folds, fixed at
    split time, so one splitter suits any training set.

    Deliberately has no ``n_splits`` attribute: CalibratedClassifierCV would read it as a fixed
    fold count.
    """

    def __init__(self, max_splits: int = 5, random_state: int | None = None) -> None:
        self.max_splits = max_splits
        self.random_state = random_state

    def _kfold(self, y: Any) -> StratifiedKFold:
        smallest = int(np.unique(np.asarray(y), return_counts=True)[1].min())
        if smallest < 2:
            raise ValueError(
                "cross-validation needs at least 2 samples of every class; "
                f"the smallest class has {smallest}"
            )
        n_splits = min(self.max_splits, smallest)
        return StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)

    def split(self, X: Any, y: Any, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self._kfold(y).split(X, y)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        # without y only the upper bound is known
        return self.max_splits if y is None else self._kfold(y).get_n_splits()


def tuning_splits(y: np.ndarray, folds: int | str, holdout: float,
                  random_state: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, held-out) row splits a C path is scored on: one stratified held-out part of
    `holdout` (at least one image per class), or stratified k-fold. folds="auto": 5 folds below
    250 images, where a held-out fifth (under 50 images) measures accuracy in steps of 2 points or
    more, coarser than the differences between Cs; one held-out part above, where each fold costs."""
    classes, counts = np.unique(y, return_counts=True)
    k = (5 if len(y) < 250 else 1) if folds == "auto" else int(folds)
    if k > 1:
        kfold = StratifiedKFold(min(k, int(counts.min())), shuffle=True, random_state=random_state)
        return list(kfold.split(np.zeros(len(y)), y))
    held = StratifiedShuffleSplit(1, test_size=max(holdout, len(classes) / len(y)), random_state=random_state)
    return list(held.split(np.zeros(len(y)), y))


@dataclass(frozen=True)
class CPath(Generic[State]):
    """Where `walk_C_path` went, per draw."""

    scores: list[dict[float, float]]  # the mean held-out score of each C the draw visited, in order
    C: list[float]  # the chosen C
    start: list[State]  # what `solve` returned at the chosen C: the refit on all the data starts there


def walk_C_path(Cs: Iterable[float], solve: Callable[[float], tuple[Sequence[float], State]]) -> CPath[State]:
    """The C path's rule, for R draws tuned together. `solve(C)` fits every draw at C, warm-started
    from its previous call (the caller keeps that state), and returns each draw's mean held-out
    score and the state the caller refits from. Cs are walked from small to large; a draw stops at
    the first C whose score is no better than a smaller C's (larger Cs cost most), the walk once
    every draw has; each draw chooses the smallest C with its best score."""
    scores: list[dict[float, float]] = []
    stopped: list[bool] = []
    solutions: dict[float, State] = {}
    for C in sorted(Cs):
        draws, solutions[C] = solve(C)
        if not scores:
            scores, stopped = [{} for _ in draws], [False] * len(draws)
        for r, score in enumerate(draws):
            if not stopped[r]:
                best = max(scores[r].values(), default=-np.inf)
                scores[r][C] = float(score)
                stopped[r] = scores[r][C] <= best
        if all(stopped):
            break
    chosen = [max(s, key=lambda c: s[c]) for s in scores]  # max keeps the first, so the smallest of equals
    return CPath(scores, chosen, [solutions[c] for c in chosen])


class PathTunedLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression whose C is chosen on held-out parts of the training data
    (`tuning_splits`), along a warm-started path of Cs (small to large, stopping at the first C
    whose mean held-out score is no better than a smaller one's: larger Cs cost most), then
    refitted on all of it from the chosen C's solution: a few untuned fits, where a 5 C x 5-fold
    grid search costs 25 cold ones. On CNN embeddings the C curve is
    flat (FIELD_NOTES), so one held-out part chooses as well as five folds once it holds 50 images.

    With fewer than 2 images in some class nothing can be held out, and `default_C` is used.
    """

    def __init__(self, Cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0), holdout: float = 0.2,
                 folds: int | str = "auto", default_C: float = DEFAULT_C, max_iter: int = 5000,
                 random_state: int | None = 0) -> None:
        self.Cs = Cs
        self.holdout = holdout
        self.folds = folds
        self.default_C = default_C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> PathTunedLogisticRegression:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        classes, counts = np.unique(y, return_counts=True)
        self.scores_: dict[float, float] = {}
        start: tuple[np.ndarray, np.ndarray] | None = None
        if counts.min() >= 2 and len(classes) > 1:
            splits = tuning_splits(y, self.folds, self.holdout, self.random_state)
            paths = [LogisticRegression(max_iter=self.max_iter, warm_start=True, random_state=self.random_state)
                     for _ in splits]

            def solve(C: float) -> tuple[list[float], tuple[np.ndarray, np.ndarray]]:
                """One draw: the mean score over the splits, each path warm-started from its last fit."""
                score = np.mean([path.set_params(C=C).fit(X[train], y[train]).score(X[val], y[val])
                                 for path, (train, val) in zip(paths, splits, strict=True)])
                return [float(score)], (paths[0].coef_.copy(), paths[0].intercept_.copy())

            walked = walk_C_path(self.Cs, solve)
            self.scores_, self.C_, start = walked.scores[0], walked.C[0], walked.start[0]
        else:
            self.C_ = self.default_C
        self.model_ = LogisticRegression(C=self.C_, max_iter=self.max_iter, warm_start=True,
                                         random_state=self.random_state)
        if start is not None:  # sklearn's warm start begins from whatever coef_ holds
            self.model_.classes_ = classes
            self.model_.coef_, self.model_.intercept_ = start
        self.model_.fit(X, y)
        self.classes_, self.n_iter_ = self.model_.classes_, self.model_.n_iter_
        self.best_params_ = {"C": self.C_}
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.decision_function(validate_data(self, X, reset=False))

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.predict(validate_data(self, X, reset=False))

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.predict_proba(validate_data(self, X, reset=False))
