"""The evaluation protocol on arrays: draws, folds, scores, mean ± std."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bottleneck_features.evaluate import (
    METRICS,
    Cell,
    CompareError,
    Split,
    draw_per_class,
    kfold_splits,
    mean_std,
    protocol_pool,
    run_cell,
    score,
)

# 3 classes of unequal size, interleaved so that row order says nothing about the class
LABELS = np.array(["a", "b", "c"] * 8 + ["a"] * 6 + ["b"] * 2)  # a: 14, b: 10, c: 8


def per_class_counts(labels: np.ndarray, rows: np.ndarray) -> dict[str, int]:
    classes, counts = np.unique(labels[rows], return_counts=True)
    return dict(zip(classes.tolist(), counts.tolist(), strict=True))


def test_draws_take_exactly_n_per_class_and_test_on_the_rest() -> None:
    draws = draw_per_class(LABELS, 5, repeats=4, seed=0)
    assert len(draws) == 4
    for d in draws:
        assert per_class_counts(LABELS, d.train) == {"a": 5, "b": 5, "c": 5}
        assert not np.intersect1d(d.train, d.test).size
        assert np.array_equal(np.union1d(d.train, d.test), np.arange(len(LABELS)))


def test_draws_differ_across_repeats_and_reproduce_with_the_seed() -> None:
    first = draw_per_class(LABELS, 4, repeats=3, seed=7)
    again = draw_per_class(LABELS, 4, repeats=5, seed=7)  # more repeats: the first 3 do not move
    other = draw_per_class(LABELS, 4, repeats=3, seed=8)
    assert len({tuple(d.train) for d in first}) == 3
    assert all(np.array_equal(a.train, b.train) for a, b in zip(first, again, strict=False))  # 3 of 5
    assert any(not np.array_equal(a.train, b.train) for a, b in zip(first, other, strict=True))


def test_draws_are_nested_across_n() -> None:
    small = draw_per_class(LABELS, 3, repeats=2, seed=0)
    large = draw_per_class(LABELS, 6, repeats=2, seed=0)
    assert all(np.isin(s.train, g.train).all() for s, g in zip(small, large, strict=True))


def test_fixed_test_split_draws_from_the_pool_only() -> None:
    splits = np.array(["train"] * 24 + ["test"] * 8)
    pool, test = protocol_pool(splits)
    assert np.array_equal(pool, np.arange(24)) and np.array_equal(test, np.arange(24, 32))
    for d in draw_per_class(LABELS, 8, repeats=3, seed=0, pool=pool, test=test):  # a class may give all 8
        assert np.isin(d.train, pool).all() and np.array_equal(d.test, test)
        assert per_class_counts(LABELS, d.train) == {"a": 8, "b": 8, "c": 8}


def test_protocol_pool_prefers_test_then_val_and_falls_back_to_everything() -> None:
    assert protocol_pool(np.array(["train", "val", "test"]))[1].tolist() == [2]
    assert protocol_pool(np.array(["train", "val", "val"]))[1].tolist() == [1, 2]
    pool, test = protocol_pool(np.array(["", "", ""]))
    assert pool.tolist() == [0, 1, 2] and test is None
    assert protocol_pool(np.array(["train", "train"]))[1] is None  # no held-out split: test on the rest


def test_n_too_large_names_the_smallest_class_and_cap_takes_what_it_can() -> None:
    with pytest.raises(CompareError, match=r"class 'c' has only 8 images.*--per-class 7 or less.*--cap"):
        draw_per_class(LABELS, 9, repeats=1, seed=0)
    capped = draw_per_class(LABELS, 9, repeats=2, seed=0, cap=True)
    assert per_class_counts(LABELS, capped[0].train) == {"a": 9, "b": 9, "c": 7}  # one c left to test on
    with pytest.raises(CompareError, match="at least 1"):
        draw_per_class(LABELS, 0, repeats=1, seed=0)


def test_kfold_partitions_the_data_stratified() -> None:
    folds = kfold_splits(LABELS, 4, seed=0)
    tests = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tests), np.arange(len(LABELS)))  # each row tested exactly once
    for f in folds:
        assert not np.intersect1d(f.train, f.test).size
        assert per_class_counts(LABELS, f.test)["c"] == 2
    with pytest.raises(CompareError, match=r"class 'c' has only 8 images; use --cv 8"):
        kfold_splits(LABELS, 9, seed=0)


def test_score_on_known_predictions() -> None:
    y_true = np.array(["a"] * 8 + ["b"] * 2)
    y_pred = np.array(["a"] * 8 + ["a", "b"])
    scores = score(y_true, y_pred)
    assert set(scores) == set(METRICS)
    assert scores["accuracy"] == pytest.approx(0.9)
    assert scores["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert scores["mean_class_accuracy"] == scores["balanced_accuracy"]  # same number, two names


def test_mean_std_is_the_sample_std_over_draws() -> None:
    values = [0.91, 0.95, 0.93, 0.97, 0.94]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([0.8]) == (pytest.approx(0.8), 0.0)
    cell = Cell("lite0", "logreg", 15)
    for v in values:
        cell.scores["accuracy"].append(v)
    assert cell.mean_std("accuracy") == (pytest.approx(mean), pytest.approx(std))


def test_run_cell_fits_a_clone_and_times_it() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(["x", "y"], 20)
    X = rng.normal(size=(40, 3)) + (y == "y")[:, None] * 10
    split = Split(np.arange(0, 40, 2), np.arange(1, 40, 2))
    estimator = LogisticRegression()
    run = run_cell(estimator, X, y, split)
    assert not hasattr(estimator, "coef_")
    assert np.array_equal(run.y_pred, y[split.test])
    assert run.fit_seconds > 0 and run.predict_seconds > 0
    cell = Cell("f", "logreg", 10)
    cell.add(y[split.test], run)
    rows = cell.records()
    assert [r["metric"] for r in rows] == list(METRICS)
    assert rows[0]["mean"] == 1.0 and rows[0]["std"] == 0.0 and rows[0]["draws"] == 1


def test_kfold_on_a_class_of_one_image_says_to_add_images() -> None:
    labels = np.array(["a"] * 5 + ["b"])
    with pytest.raises(CompareError, match=r"^--cv 2: class 'b' has only 1 images; add images to it or remove"):
        kfold_splits(labels, 2, seed=0)
    with pytest.raises(CompareError, match=r"^--cv 1: K-fold needs at least 2 folds$"):  # compare's own check
        kfold_splits(labels, 1, seed=0)
