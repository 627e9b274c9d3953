"""Batched torch logistic regression (compare's logreg cells on a GPU), run on the CPU: the same
code path, the same answers as scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest

from bottleneck_features.batched_logreg import BatchedLogReg, fit_draws
from bottleneck_features.evaluate import draw_per_class, run_cell
from bottleneck_features.heads import make_head


def clusters(classes: int = 12, per_class: int = 40, dim: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian clusters: logreg scores well below 1, so disagreements would show."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    X = rng.normal(size=(classes, dim))[y] + rng.normal(scale=3.0, size=(len(y), dim))
    return (X * rng.uniform(0.1, 10, size=dim)).astype(np.float32), np.array([f"k{c:02d}" for c in y])


@pytest.mark.parametrize("tune, per_class", [(False, 10), (True, 10), (True, 25)])  # tuned on 5 folds, 1 part
def test_matches_scikit_learn_within_half_a_point(tune: bool, per_class: int) -> None:
    X, y = clusters()
    draws = draw_per_class(y, per_class, 4, seed=0)
    result = fit_draws(BatchedLogReg(tune=tune), X, y, [d.train for d in draws], [d.test for d in draws], "cpu")
    ours = np.mean([np.mean(p == y[d.test]) for p, d in zip(result.y_pred, draws, strict=True)])
    theirs = [run_cell(make_head("logreg", tune=tune), X, y, d) for d in draws]
    reference = np.mean([np.mean(r.y_pred == y[d.test]) for r, d in zip(theirs, draws, strict=True)])
    assert 0.4 < reference < 0.95
    assert abs(ours - reference) <= 0.005
    agreement = np.mean([np.mean(p == r.y_pred) for p, r in zip(result.y_pred, theirs, strict=True)])
    assert agreement >= 0.97
    if tune:  # the same held-out parts and path: the same C, but for a held-out image that float32 flips
        chosen = [make_head("logreg", tune=True).fit(X[d.train], y[d.train])[-1].C_ for d in draws]
        assert sum(a == b for a, b in zip(result.C, chosen, strict=True)) >= 3
    else:
        assert result.C == [0.1] * 4


def test_draws_of_different_sizes_and_labels_it_never_saw_in_one_draw() -> None:
    X, y = clusters(classes=4, per_class=12)
    rows = np.arange(len(y))
    trains = [rows[::2], rows[y != "k03"][::3]]  # the second draw has 3 classes and fewer rows
    tests = [rows[1::2], rows[1::2]]
    result = fit_draws(BatchedLogReg(), X, y, trains, tests, "cpu")
    assert [len(p) for p in result.y_pred] == [len(t) for t in tests]
    assert set(result.y_pred[0]) <= set(y) and result.fit_seconds > 0
    for train, test, pred in zip(trains, tests, result.y_pred, strict=True):
        reference = make_head("logreg").fit(X[train], y[train]).predict(X[test])
        assert np.mean(pred == reference) >= 0.95


def test_one_image_per_class_tunes_nothing() -> None:
    X, y = clusters(classes=3, per_class=5)
    draws = draw_per_class(y, 1, 2, seed=0)
    result = fit_draws(BatchedLogReg(tune=True), X, y, [d.train for d in draws], [d.test for d in draws], "cpu")
    assert result.C == [0.1, 0.1]
