"""`--head auto`: the head and its key parameter chosen by cross-validation on the training data alone,
within a time budget; in compare, chosen again inside every draw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from test_compare import colour_cache  # noqa: F401  (the fixture: 25 images of 3 colours, raw8 extracted)
from typer.testing import CliRunner

from bottleneck_features import api
from bottleneck_features.cli import app
from bottleneck_features.comparison import run_compare
from bottleneck_features.errors import FitError
from bottleneck_features.heads import AutoHeadClassifier, make_head
from bottleneck_features.heads._factory import CANDIDATES


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 20)
    return rng.normal(y[:, None] * 3.0, 1.0, size=(60, 6)), y


def test_auto_scores_every_candidate_and_refits_the_best() -> None:
    X, y = _blobs()
    auto = make_head("auto", random_state=0).fit(X, y)
    assert isinstance(auto, AutoHeadClassifier)
    assert len(auto.results_) == sum(len(values) for _, _, values in CANDIDATES)
    top = max(auto.results_, key=lambda r: r["cv_accuracy"])
    assert auto.cv_score_ >= top["cv_accuracy"] - top["cv_se"]
    assert auto.choice_ == {"head": "logreg", "params": {"tune": True}}  # separable: every candidate ties the default
    assert auto.predict(X).shape == (60,) and auto.predict_proba(X).shape == (60, 3)
    assert list(auto.classes_) == [0, 1, 2] and clone(auto).get_params()["budget"] is None


def test_a_lead_beyond_the_noise_leaves_the_default() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 60)
    angle = rng.uniform(0, 2 * np.pi, 120)
    X = (1 + 2 * y)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # two rings: no line parts them
    auto = AutoHeadClassifier().fit(X, y)
    default = auto.results_[0]
    assert default["head"] == "logreg" and auto.choice_["head"] != "logreg"
    assert auto.cv_score_ > default["cv_accuracy"] + default["cv_se"]


def test_the_budget_stops_the_search_but_one_candidate_is_always_scored() -> None:
    X, y = _blobs()
    auto = AutoHeadClassifier(budget=1e-9).fit(X, y)
    assert [r["head"] for r in auto.results_] == ["logreg"] and auto.choice_["head"] == "logreg"


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
    assert list(api.predict(image_folder / "cat", tmp_path / "auto.joblib", cache=cache).items)
    with pytest.raises(FitError, match="--budget 5: a positive number of seconds, for --head auto"):
        api.fit("logreg", cache=cache, budget=5)
    with pytest.raises(FitError, match="--budget soon"):
        api.fit("auto", cache=cache, budget="soon")


def test_auto_is_a_column_of_compare(colour_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    cache = tmp_path / "cache.h5"
    shutil.copy(colour_cache, cache)
    result = run_compare(cache, models=[], heads=["logreg", "auto"], per_class=[3], repeats=2, pixels=8,
                         out=tmp_path / "r", jobs=1)
    assert {c.head for c in result.cells} == {"logreg", "auto", "nb"}
    auto = next(c for c in result.cells if c.head == "auto")
    assert len(auto.scores["accuracy"]) == 2
