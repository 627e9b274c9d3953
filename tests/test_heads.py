"""Classifier heads: accuracy on separable embeddings, the scikit-learn contract, tuning,
persistence, reproducibility."""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest.mock import patch

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from bottleneck_features.errors import FitError, UnknownHeadError
from bottleneck_features.heads import (
    HEADS,
    FastGaussianNB,
    LinearSVMClassifier,
    MLPHeadClassifier,
    PathTunedLogisticRegression,
    RBFSVMClassifier,
    SmallCNNClassifier,
    SoftmaxClassifier,
    input_params,
    make_head,
    param_grid,
    tuning_splits,
)

LABELS = np.array(["cat", "dog", "eel"])


def embeddings(n_per_class: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 separable classes in 48-d (blobs; 3 x 4 x 4, so the cnn head reads them as tiny images),
    float32 like the store, string labels."""
    X, y = make_blobs(
        n_samples=3 * n_per_class, centers=3, n_features=48, cluster_std=8.0, random_state=seed
    )
    return X.astype(np.float32), LABELS[y]


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = embeddings()
    return train_test_split(X, y, train_size=120, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def fitted(split) -> dict[str, Pipeline]:
    X_train, _, y_train, _ = split
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # defaults must converge quietly
        return {name: make_head(name).fit(X_train, y_train) for name in HEADS}


PIPELINES = [name for name in HEADS if name != "auto"]  # auto chooses among these (tests/test_auto_head.py)


@pytest.mark.parametrize("name", PIPELINES)
def test_head_learns_separable_embeddings(name, split, fitted):
    _, X_test, _, y_test = split
    head = fitted[name]
    assert [step for step, _ in head.steps] == ["scale", "clf"]
    assert list(head.classes_) == list(LABELS)
    assert head.score(X_test, y_test) >= 0.9
    proba = head.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)  # float32 input, float32 sums
    np.testing.assert_array_equal(head.classes_[proba.argmax(axis=1)], head.predict(X_test))


@pytest.mark.parametrize("name", list(HEADS))
def test_joblib_round_trip_predicts_identically(name, split, fitted, tmp_path: Path):
    _, X_test, _, _ = split
    joblib.dump(fitted[name], tmp_path / "head.joblib")
    loaded = joblib.load(tmp_path / "head.joblib")
    np.testing.assert_array_equal(loaded.predict(X_test), fitted[name].predict(X_test))
    np.testing.assert_array_equal(
        loaded.predict_proba(X_test), fitted[name].predict_proba(X_test)
    )


@pytest.mark.parametrize("name", PIPELINES)
def test_clone_and_params_round_trip(name):
    head = make_head(name, l2_normalize=True)
    assert [step for step, _ in head.steps] == ["scale", "l2", "clf"]
    copy = clone(head)
    assert repr(copy) == repr(head)
    key, values = next(iter(param_grid(name).items()))
    original = head.get_params()[key]
    copy.set_params(**{key: values[-1]})
    assert copy.get_params()[key] == values[-1]
    assert head.get_params()[key] == original
    assert clone(copy).get_params()[key] == values[-1]
    assert repr(clone(make_head(name, tune=True))) == repr(make_head(name, tune=True))


def test_params_go_to_the_classifier():
    assert make_head("logreg", C=3.0)[-1].C == 3.0
    assert make_head("svm", kernel="linear", C=2.0)[-1].estimator.get_params()["C"] == 2.0
    assert make_head("softmax", random_state=7)[-1].random_state == 7
    with pytest.raises(TypeError):
        make_head("nb", C=1.0)


def test_unknown_head_lists_known_names():
    with pytest.raises(UnknownHeadError) as info:
        make_head("xgboost")
    message = str(info.value)
    assert "xgboost" in message and "\n" not in message
    assert all(name in message for name in HEADS)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownHeadError):
        param_grid("xgboost")


@pytest.mark.parametrize("name", PIPELINES)
def test_param_grid_names_real_pipeline_params(name):
    grid = param_grid(name)
    assert grid and all(values for values in grid.values())
    assert set(grid) <= set(make_head(name).get_params())


def test_svm_linear_grid_has_no_gamma():
    assert set(param_grid("svm", kernel="linear")) == {"clf__estimator__C"}


@pytest.mark.parametrize("name", ["svm", "softmax"])
def test_tune_searches_the_grid_with_folds_from_the_fit_data(name):
    X, y = embeddings(n_per_class=20)
    keep = np.r_[np.flatnonzero(y != "eel"), np.flatnonzero(y == "eel")[:3]]  # smallest class: 3
    head = make_head(name, tune=True, **({"max_epochs": 30} if name == "softmax" else {}))
    assert isinstance(head, GridSearchCV)
    head.fit(X[keep], y[keep])
    assert head.n_splits_ == 3
    grid = param_grid(name)
    assert head.param_grid == grid
    for key, value in head.best_params_.items():
        assert value in grid[key]
    assert head.predict(X[:5]).dtype == y.dtype


@pytest.mark.parametrize(("name", "tune"), [("svm", False), ("svm", True)])
def test_cross_validation_needs_two_samples_per_class(name, tune):
    X, y = embeddings(n_per_class=1)
    with pytest.raises(ValueError, match="at least 2 samples of every class"):
        make_head(name, tune=tune).fit(X, y)


def test_tuned_logreg_chooses_c_on_a_held_out_part_and_refits_on_everything():
    X, y = embeddings(n_per_class=20)
    head = make_head("logreg", tune=True).fit(X, y)
    tuned = head[-1]
    assert isinstance(tuned, PathTunedLogisticRegression) and tuned.C_ in tuned.Cs
    assert set(tuned.scores_) <= set(tuned.Cs) and tuned.scores_[tuned.C_] == max(tuned.scores_.values())
    plain = make_head("logreg", C=tuned.C_).fit(X, y)
    np.testing.assert_allclose(head.predict_proba(X), plain.predict_proba(X), atol=1e-3)  # the same model
    assert head.predict(X[:5]).dtype == y.dtype
    one = make_head("logreg", tune=True).fit(*embeddings(n_per_class=1))  # nothing to hold out
    assert one[-1].C_ == 0.1 and not one[-1].scores_


def test_default_svm_is_linear_and_matches_logreg_on_embeddings():
    X, y = embeddings(n_per_class=30)
    train = np.r_[[np.flatnonzero(y == c)[:15] for c in np.unique(y)]].ravel()
    test = np.setdiff1d(np.arange(len(y)), train)
    svm, logreg = make_head("svm").fit(X[train], y[train]), make_head("logreg").fit(X[train], y[train])
    assert isinstance(svm[-1].estimator, LinearSVMClassifier)
    assert (svm.predict(X[test]) == y[test]).mean() >= (logreg.predict(X[test]) == y[test]).mean() - 0.05
    assert isinstance(make_head("svm", kernel="rbf")[-1].estimator, RBFSVMClassifier)
    assert isinstance(make_head("svm", kernel="rbf", class_weight="balanced")[-1].estimator, SVC)
    assert isinstance(make_head("svm", kernel="poly")[-1].estimator, SVC)
    assert set(param_grid("svm", kernel="rbf")) == {"clf__estimator__C", "clf__estimator__gamma"}


def test_svm_probabilities_keep_the_svms_own_predictions():
    """Temperature scaling keeps the SVM's ranking, so compare's uncalibrated SVM (4-5x cheaper)
    predicts what the fitted head does. Platt's per-class sigmoids did not (openclipart22: -13 points)."""
    X, y = make_blobs(n_samples=400, centers=8, n_features=32, cluster_std=12.0, random_state=1)
    train, test = np.arange(0, 400, 2), np.arange(1, 400, 2)
    head = make_head("svm").fit(X[train], y[train])
    bare = make_head("svm", probabilities=False).fit(X[train], y[train])
    assert isinstance(bare[-1], LinearSVMClassifier)
    proba = head.predict_proba(X[test])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(head.predict(X[test]), bare.predict(X[test]))
    np.testing.assert_array_equal(head.classes_[proba.argmax(axis=1)], bare.predict(X[test]))
    assert 0.2 < (bare.predict(X[test]) == y[test]).mean() < 1.0  # a test with mistakes to agree on


@pytest.mark.parametrize("classes", [2, 7])
def test_linear_svm_is_libsvm_one_vs_rest(classes: int):
    X, y = make_blobs(n_samples=classes * 30, centers=classes, n_features=24, cluster_std=8.0, random_state=0)
    ours = LinearSVMClassifier(C=0.01).fit(X[::2], y[::2])
    libsvm = SVC(kernel="linear", C=0.01)
    reference = (OneVsRestClassifier(libsvm) if classes > 2 else libsvm).fit(X[::2], y[::2])
    np.testing.assert_allclose(ours.decision_function(X[1::2]), reference.decision_function(X[1::2]), atol=1e-8)
    np.testing.assert_array_equal(ours.predict(X[1::2]), reference.predict(X[1::2]))
    ours.gram_max_rows = 10  # past it: libsvm's own linear kernel, the same solution
    np.testing.assert_allclose(ours.fit(X[::2], y[::2]).decision_function(X[1::2]),
                               reference.decision_function(X[1::2]), atol=1e-6)


@pytest.mark.parametrize("classes", [2, 7])
@pytest.mark.parametrize("gamma", ["scale", "auto", 0.01])
def test_rbf_svm_is_libsvms_rbf_svc(classes: int, gamma: str | float):
    X, y = make_blobs(n_samples=classes * 30, centers=classes, n_features=24, cluster_std=8.0, random_state=0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)  # as make_head's scaler leaves it
    ours = RBFSVMClassifier(C=2.0, gamma=gamma).fit(X[::2], y[::2])
    libsvm = SVC(kernel="rbf", C=2.0, gamma=gamma, break_ties=classes > 2).fit(X[::2], y[::2])
    # equal up to libsvm's stopping tolerance (1e-3): its kernel sums round differently from BLAS's
    np.testing.assert_allclose(ours.decision_function(X[1::2]), libsvm.decision_function(X[1::2]), atol=1e-3)
    np.testing.assert_array_equal(ours.predict(X[1::2]), libsvm.predict(X[1::2]))
    assert 0.3 < (ours.predict(X[1::2]) == y[1::2]).mean() < 1.0  # a test with mistakes to agree on
    ours.gram_max_rows = 10  # past it: libsvm's own RBF kernel, the same solution
    np.testing.assert_allclose(ours.fit(X[::2], y[::2]).decision_function(X[1::2]),
                               libsvm.decision_function(X[1::2]), atol=1e-6)


def test_rbf_svm_predicts_in_blocks():
    X, y = make_blobs(n_samples=300, centers=3, n_features=8, random_state=0)
    head = RBFSVMClassifier().fit(X[:100], y[:100])
    whole = head.decision_function(X)
    with patch.object(RBFSVMClassifier, "_block_elements", 100 * 7):  # blocks of 7 test rows
        np.testing.assert_allclose(head.decision_function(X), whole, rtol=1e-12)
        np.testing.assert_array_equal(head.predict(X), whole.argmax(axis=1))


def test_parameters_for_raw_pixels():
    assert input_params("svm", raw_pixels=True) == {"kernel": "rbf"}
    assert input_params("et", raw_pixels=True) == {"max_features": "log2"}
    assert input_params("svm", raw_pixels=False) == {} == input_params("et", raw_pixels=False)
    assert input_params("logreg", raw_pixels=True) == {}


def test_tuning_splits_use_five_folds_below_250_images():
    y = np.repeat(np.arange(10), 24)  # 240 images
    assert len(tuning_splits(y, "auto", 0.2, 0)) == 5
    one = tuning_splits(np.repeat(np.arange(10), 25), "auto", 0.2, 0)
    assert len(one) == 1 and len(one[0][1]) == 50
    assert len(tuning_splits(np.repeat(np.arange(10), 3), "auto", 0.2, 0)) == 3  # the smallest class: 3 images
    assert len(tuning_splits(y, 1, 0.2, 0)) == 1


def test_tune_uses_at_most_five_folds():
    X, y = embeddings(n_per_class=20)
    assert make_head("nb", tune=True).fit(X, y).n_splits_ == 5


@pytest.mark.parametrize("cls", [SoftmaxClassifier, MLPHeadClassifier])
def test_torch_head_is_reproducible_and_leaves_global_torch_state_alone(cls):
    X, y = embeddings(n_per_class=30)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = cls(random_state=3, max_epochs=20).fit(X, y).predict_proba(X)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    b = cls(random_state=3, max_epochs=20).fit(X, y).predict_proba(X)
    c = cls(random_state=4, max_epochs=20).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("cls", [SoftmaxClassifier, MLPHeadClassifier, SmallCNNClassifier])
def test_torch_head_fitted_attributes(cls):
    X, y = embeddings(n_per_class=30)
    head = cls(random_state=0, max_epochs=5).fit(X, y)
    assert head.n_features_in_ == 48
    assert list(head.classes_) == list(LABELS)
    assert head.n_iter_ <= 5
    assert not head.module_.training
    assert all(p.device.type == "cpu" for p in head.module_.parameters())


def test_cnn_reads_raw_pixels_as_images_and_refuses_embeddings():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(60, 3, 8, 8)).astype(np.float32)
    y = np.repeat(np.array(["left", "right"]), 30)
    images[:30, :, :, :4] += 1.5  # a bright left half, wherever the pixel noise falls
    images[30:, :, :, 4:] += 1.5
    X = images.reshape(60, -1)  # rawN's layout: channel, row, column
    head = make_head("cnn", max_epochs=40).fit(X[::2], y[::2])
    assert (head.predict(X[1::2]) == y[1::2]).mean() >= 0.9
    with pytest.raises(FitError, match="the cnn head trains on raw pixels.*--model raw32"):
        SmallCNNClassifier().fit(np.zeros((6, 50), np.float32), LABELS[[0, 1, 2] * 2])


def test_early_stopping_stops_when_validation_loss_stalls():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(120, 64)).astype(np.float32)
    y = LABELS[rng.randint(3, size=120)]  # noise labels: validation loss rises as it memorises
    head = SoftmaxClassifier(max_epochs=500, patience=5, learning_rate=1e-2, random_state=0)
    assert head.fit(X, y).n_iter_ < 500


@pytest.mark.parametrize("cls", [SoftmaxClassifier, MLPHeadClassifier])
def test_too_small_to_split_trains_without_early_stopping(cls):
    X, y = embeddings(n_per_class=2)  # 6 rows: no stratified 10% validation split exists
    head = cls(max_epochs=7, random_state=0).fit(X, y)
    assert head.n_iter_ == 7
    assert set(head.predict(X)) <= set(LABELS)


# Every check applies and passes, so there is no expected_failed_checks. Small max_epochs and a
# larger learning rate keep the ~70 fits per estimator fast while still clearing the accuracy bar.
@parametrize_with_checks(
    [
        SoftmaxClassifier(max_epochs=15, learning_rate=0.05, device="cpu"),
        MLPHeadClassifier(max_epochs=15, learning_rate=0.05, device="cpu"),
        PathTunedLogisticRegression(),
        LinearSVMClassifier(),
        RBFSVMClassifier(),
        FastGaussianNB(),
    ]
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)
