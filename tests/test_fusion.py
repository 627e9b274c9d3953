"""Fused extractions (`compare --models a+b`): blocks side by side, each standardised and weighted to the
same total variance, in the scikit-learn heads and in the batched torch logreg alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.preprocessing import StandardScaler
from test_compare import colour_cache  # noqa: F401  (the fixture: 25 images of 3 colours, raw8 extracted)

from bottleneck_features.batched_logreg import BatchedLogReg, fit_draws
from bottleneck_features.comparison import CompareError, run_compare
from bottleneck_features.heads import BlockScaler, block_weights, make_head
from bottleneck_features.store import fusion_parts


def test_each_block_carries_the_same_total_variance() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 10)) * rng.uniform(0.1, 50, size=10) + 7
    Z = BlockScaler(blocks=(2, 8)).fit(X).transform(X)
    assert np.allclose(Z[:, :2].var(0).sum(), 5) and np.allclose(Z[:, 2:].var(0).sum(), 5)
    assert np.allclose(BlockScaler(blocks=(5, 5)).fit(X).transform(X), StandardScaler().fit(X).transform(X))
    assert np.allclose(block_weights((1, 3)), [np.sqrt(2), *[np.sqrt(2 / 3)] * 3])
    assert clone(BlockScaler(blocks=(2, 8))).get_params()["blocks"] == (2, 8)
    with pytest.raises(Exception, match="sum to 3 columns, the features have 10"):
        BlockScaler(blocks=(1, 2)).fit(X)
    assert isinstance(make_head("logreg", blocks=(2, 8))[0], BlockScaler)
    assert type(make_head("logreg")[0]) is StandardScaler


def test_the_batched_logreg_weights_blocks_as_the_pipeline_does() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    X = np.hstack([rng.normal(y[:, None], 1.0, size=(60, 3)), rng.normal(size=(60, 40)) * 100])  # a wide noise block
    train, test = np.arange(0, 60, 2), np.arange(1, 60, 2)
    for blocks in ((3, 40), ()):
        ours = fit_draws(BatchedLogReg(C=0.1, blocks=blocks, tol=1e-8, max_iter=5000), X, y, [train], [test], "cpu")
        theirs = make_head("logreg", blocks=blocks).fit(X[train], y[train]).predict(X[test])
        assert (ours.y_pred[0] == theirs).mean() >= 0.95
    weighted = make_head("logreg", blocks=(3, 40)).fit(X[train], y[train]).score(X[test], y[test])
    plain = make_head("logreg").fit(X[train], y[train]).score(X[test], y[test])
    assert weighted > plain  # the 3 informative columns are not drowned by the 40 wide ones


def test_fusion_parts_split_outside_brackets() -> None:
    assert fusion_parts("a+b") == ["a", "b"]
    assert fusion_parts("lite0[crop=0.35+flip]+raw8") == ["lite0[crop=0.35+flip]", "raw8"]
    assert fusion_parts("raw8") == ["raw8"]


def test_a_fused_row_in_compare(colour_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    cache = tmp_path / "cache.h5"
    shutil.copy(colour_cache, cache)
    kwargs = dict(models=["raw8", "raw8+raw16"], heads=["logreg", "knn"], per_class=[3], repeats=2, pixels=None,
                  jobs=1)
    results = {device: run_compare(cache, out=tmp_path / device, device=device, **kwargs) for device in ("sklearn", "cpu")}
    for result in results.values():
        assert [(c.features, c.head) for c in result.cells if c.head != "nb"] == [  # nb: the raw pixels' own head
            ("raw8", "logreg"), ("raw8", "knn"), ("raw8+raw16", "logreg"), ("raw8+raw16", "knn")]
        assert any("a+b rows" in note for note in result.notes)
    assert [c.scores for c in results["cpu"].cells if c.head == "knn"] == \
        [c.scores for c in results["sklearn"].cells if c.head == "knn"]
    with pytest.raises(CompareError, match="raw32: not extracted for .colours.; run `bottleneck extract"):
        run_compare(cache, out=tmp_path / "x", update=False, **kwargs | {"models": ["raw8+raw32"]})


def test_fit_and_predict_a_fused_head(image_folder: Path, tmp_path: Path) -> None:
    from bottleneck_features import api
    from bottleneck_features.errors import FitError
    from bottleneck_features.training import head_spec, load_head, sidecar_path

    cache = tmp_path / "c.h5"
    for size in (8, 16):
        api.extract(image_folder, f"raw{size}", cache=cache, workers=0)
    fused = api.fit("logreg", model="raw8+raw16", cache=cache, out=tmp_path / "fused.joblib")
    head, meta = load_head(fused.head_path)
    assert [b["label"] for b in meta["fused"]] == ["raw8", "raw16"] and meta["left_out"] == 0
    assert head[0].blocks == (192, 768) and head.n_features_in_ == 960
    result = api.predict([image_folder / "cat"], fused.head_path, cache=cache)
    predictions = result.items
    assert len(predictions) == 6 and result.skipped == []
    X = np.hstack([api.load_features(cache=cache, model=m).X for m in ("raw8", "raw16")])
    paths = api.load_features(cache=cache, model="raw8").paths
    expected = dict(zip(paths, head.predict(X), strict=True))
    assert all(p.labels[0] == expected[str(Path(p.path).relative_to(image_folder))] for p in predictions)
    with pytest.raises(FitError, match="a head on fused extractions"):
        head_spec(meta, sidecar_path(fused.head_path))
    with np.load(api.export(tmp_path / "fused.npz", model="raw8+raw16", cache=cache)) as exported:
        assert np.array_equal(exported["X"], X) and list(exported["paths"]) == paths
        assert [s["model"] for s in json.loads(str(exported["spec"]))] == ["raw8", "raw16"]
