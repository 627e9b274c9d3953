"""`--head auto`: the head and its key parameter chosen by cross-validation on the training data alone,
within a time budget; in compare, chosen again inside every draw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import VotingClassifier
from test_compare import colour_cache  # noqa: F401  (the fixture: 25 images of 3 colours, raw8 extracted)
from typer.testing import CliRunner

from bottleneck_features import api
from bottleneck_features.cli import app
from bottleneck_features.comparison import run_compare
from bottleneck_features.errors import FitError
from bottleneck_features.heads import AutoHeadClassifier, make_head
from bottleneck_features.heads._auto import (
    CANDIDATES,
    ET_WEIGHT,
    ET_WEIGHT_TWO_CLASSES,
    cv_standard_error,
    first_within_one_se,
    preference,
    soft_votes,
)
from bottleneck_features.heads._tuning import _StratifiedKFoldUpTo
from bottleneck_features.sources import register_model
from bottleneck_features.training import load_head
from tiny_backbone import tiny_backbone


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 20)
    return rng.normal(y[:, None] * 3.0, 1.0, size=(60, 6)), y


def test_auto_scores_every_candidate_and_refits_the_best() -> None:
    X, y = _blobs()
    auto = make_head("auto", random_state=0).fit(X, y)
    assert isinstance(auto, AutoHeadClassifier)
    assert len(auto.results_) == sum(len(values) for _, _, values in CANDIDATES) + len(soft_votes(3))
    top = max(auto.results_, key=lambda r: r["cv_accuracy"])
    assert auto.cv_score_ >= top["cv_accuracy"] - top["cv_se"]
    # separable: every candidate ties, and the vote of the tuned logreg and the trees comes first
    assert auto.choice_ == {"head": "logreg+et", "params": {"logreg": {"tune": True}, "et": {"min_samples_leaf": 1}},
                            "weights": [1.0, ET_WEIGHT]}
    assert isinstance(auto.estimator_, VotingClassifier) and auto.estimator_.weights == [1.0, ET_WEIGHT]
    assert auto.predict(X).shape == (60,) and auto.predict_proba(X).shape == (60, 3)
    assert list(auto.classes_) == [0, 1, 2] and clone(auto).get_params()["budget"] is None


def test_a_vote_is_scored_from_its_members_out_of_fold_probabilities_the_trees_weighing_more() -> None:
    X, y = _blobs(3)
    X = X + np.random.default_rng(3).normal(0, 2.5, X.shape)  # overlapping: the folds' scores differ
    auto = AutoHeadClassifier().fit(X, y)
    vote = next(r for r in auto.results_ if r["head"] == "logreg+et")
    splits = list(_StratifiedKFoldUpTo(5, 0).split(X, y))
    expected = []
    for train, held in splits:
        members = [make_head("logreg", tune=True).fit(X[train], y[train]), make_head("et").fit(X[train], y[train])]
        mean = (members[0].predict_proba(X[held]) + ET_WEIGHT * members[1].predict_proba(X[held])) / (1 + ET_WEIGHT)
        expected.append(np.mean(mean.argmax(1) == y[held]))
    assert vote["cv_accuracy"] == pytest.approx(np.mean(expected)) and vote["seconds"] == 0
    assert vote["weights"] == [1.0, ET_WEIGHT] and ET_WEIGHT > 1
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"the trees weighing {ET_WEIGHT:g} times a linear head ({ET_WEIGHT_TWO_CLASSES:g} on two classes" in readme


def test_on_two_classes_the_trees_weigh_more() -> None:
    X, y = _blobs()
    auto = AutoHeadClassifier().fit(X[y < 2], y[y < 2])
    assert [r["weights"] for r in auto.results_ if "weights" in r] == [[1.0, ET_WEIGHT_TWO_CLASSES],
                                                                       [1.0, 1.0, ET_WEIGHT_TWO_CLASSES]]
    assert auto.estimator_.weights == [1.0, ET_WEIGHT_TWO_CLASSES] and ET_WEIGHT_TWO_CLASSES > ET_WEIGHT
    assert [weights for _, weights in soft_votes(3)] == [(1.0, ET_WEIGHT), (1.0, 1.0, ET_WEIGHT)]


def test_a_lead_beyond_the_noise_leaves_the_default() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 60)
    angle = rng.uniform(0, 2 * np.pi, 120)
    X = (1 + 2 * y)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # two rings: no line parts them
    auto = AutoHeadClassifier().fit(X, y)
    default = auto.results_[0]
    assert default["head"] == "logreg" and auto.choice_["head"] != "logreg"
    assert auto.cv_score_ > default["cv_accuracy"] + default["cv_se"]


def test_the_rule_takes_views_then_votes_best_first_then_the_order_scored_within_one_standard_error() -> None:
    accuracies = [0.90, 0.95, 0.92, 0.93]  # logreg, et, two votes
    votes = [False, False, True, True]
    order = preference(accuracies, votes, [False] * 4)
    assert order == [3, 2, 0, 1]
    assert first_within_one_se(accuracies, [0.0, 0.03, 0.0, 0.0], order) == 3  # the best vote, within the noise
    assert first_within_one_se(accuracies, [0.0, 0.01, 0.0, 0.0], order) == 1  # a lead beyond it: the best
    assert preference(accuracies, votes, [False, True, False, False])[0] == 1  # trained on views
    assert cv_standard_error([1.0] * 5, 30) == pytest.approx(5 / 30)  # one image of a fold at least
    assert cv_standard_error([0.5, 0.7], 1000) == pytest.approx(0.1)


def test_the_budget_stops_the_search_but_one_fold_of_the_default_is_always_scored() -> None:
    X, y = _blobs()
    auto = AutoHeadClassifier(budget=1e-9).fit(X, y)
    assert [(r["head"], r["folds"]) for r in auto.results_] == [("logreg", 1)] and auto.choice_["head"] == "logreg"
    assert auto.results_[0]["refit_seconds"] > 0


def test_views_of_one_image_stay_in_one_fold() -> None:
    """Near copies of each image (its views) on random labels: folds that split rows, not images, would let
    the nearest neighbour score its own copies."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 6)), np.repeat(np.arange(3), 20)
    views = np.repeat(X, 3, axis=0) + rng.normal(scale=1e-3, size=(180, 6))
    views[::3] = X  # each image's plain vector first
    auto = AutoHeadClassifier(views=3, try_plain=True).fit(views, np.repeat(y, 3))
    assert {r["views"] for r in auto.results_} == {False, True}
    assert max(r["cv_accuracy"] for r in auto.results_) < 0.7  # chance is 1/3
    assert auto.predict(X).shape == (60,)
    assert {r["views"] for r in AutoHeadClassifier(views=3).fit(views, np.repeat(y, 3)).results_} == {True}
    with pytest.raises(ValueError, match="179 rows are not 3 views of each image"):
        AutoHeadClassifier(views=3).fit(views[:179], np.repeat(y, 3)[:179])


def test_block_sets_try_each_extraction_and_their_fusion() -> None:
    X, y = _blobs()
    noise = np.random.default_rng(1).normal(size=(60, 10))
    auto = AutoHeadClassifier(blocks=(6, 10), block_sets=((1,), (0,), (0, 1))).fit(np.hstack([noise, X][::-1]), y)
    assert {tuple(r["blocks"]) for r in auto.results_} == {(1,), (0,), (0, 1)}
    assert next(r for r in auto.results_ if r["blocks"] == [1])["cv_accuracy"] < 0.6  # the noise block alone
    assert auto.chosen_.blocks in ((0,), (0, 1)) and auto.results_[0]["blocks"] == [1]
    if auto.chosen_.blocks == (0,):
        assert auto.narrow().n_features_in_ == 6 and auto.predict(X).shape == (60,)


def test_fit_head_auto_writes_its_choice(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    api.extract(image_folder, "raw8", cache=cache, workers=0)
    result = CliRunner().invoke(app, ["fit", "--head", "auto", "--budget", "1m", "--cache", str(cache),
                                      "--out", str(tmp_path / "auto.joblib")])
    assert result.exit_code == 0, result.output
    assert "auto chose" in result.output and "cross-validated accuracy" in result.output
    meta = json.loads((tmp_path / "auto.json").read_text())
    assert meta["auto"]["budget"] == 60 and meta["auto"]["candidates_scored"] >= 1
    assert {"head", "params"} <= set(meta["auto"]["choice"])
    if "weights" in meta["auto"]["choice"]:  # a vote: its weights printed, the trees' last
        weights = meta["auto"]["choice"]["weights"]
        assert weights[-1] == ET_WEIGHT and f"weighted {':'.join(f'{w:g}' for w in weights)}" in result.output
    assert list(api.predict(image_folder / "cat", tmp_path / "auto.joblib", cache=cache).items)
    with pytest.raises(FitError, match="--budget 5: a positive number of seconds, for --head auto"):
        api.fit("logreg", cache=cache, budget=5)
    with pytest.raises(FitError, match="--budget soon"):
        api.fit("auto", cache=cache, budget="soon")


def test_fit_head_auto_searches_the_extractions_and_keeps_the_chosen(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    for name, dim in (("tinya", 8), ("tinyb", 4)):
        register_model(name, lambda *_, name=name, dim=dim, **__: tiny_backbone(dim=dim, name=name))
    for model in ("raw8", "tinya", "tinyb"):  # raw pixels: compare's baseline, not a candidate
        api.extract(image_folder, model, cache=cache, workers=0)
    labels = {m: api.load_features(cache=cache, model=m).spec.label() for m in ("tinya", "tinyb")}  # bf16 on some hosts
    result = api.fit("auto", cache=cache, out=tmp_path / "auto.joblib")
    auto = result.sidecar["auto"]
    tried = {r["model"] for r in auto["runners_up"]} | {auto["choice"]["model"]}
    assert tried <= {labels["tinyb"], labels["tinya"], f"{labels['tinyb']}+{labels['tinya']}"} and len(tried) > 1
    estimator, meta = load_head(result.head_path)
    kept = meta["fused"] if "fused" in meta else [meta["extractor"]]
    assert "+".join(e["label"] for e in kept) == auto["choice"]["model"]
    assert estimator.n_features_in_ == sum(e["spec"]["feature_dim"] for e in kept)
    assert len(api.predict(image_folder / "cat", result.head_path, cache=cache).items) == 6


def test_auto_is_a_column_of_compare(colour_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    cache = tmp_path / "cache.h5"
    shutil.copy(colour_cache, cache)
    result = run_compare(cache, models=[], heads=["logreg", "auto"], per_class=[3], repeats=2, pixels=8,
                         out=tmp_path / "r", jobs=1)
    assert {c.head for c in result.cells} == {"logreg", "auto", "nb"}
    auto = next(c for c in result.cells if c.head == "auto")
    assert len(auto.scores["accuracy"]) == 2
