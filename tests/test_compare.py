"""`run_compare` end to end on a tiny synthetic folder with raw pixels (no weights needed), its
errors, and an integration run on the real photo_vs_drawing set."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bottleneck_features.compare_fits as compare_fits
import bottleneck_features.comparison as compare
from bottleneck_features.comparison import CompareError, run_compare
from bottleneck_features.errors import BackboneError, BottleneckError, DeviceError, StoreError, UnknownHeadError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.sources import load_backbone
from bottleneck_features.store import Store
from conftest import on_host

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


@pytest.fixture(scope="module")
def colour_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 colour classes × 9 noisy images (blue has 7), extracted as raw8: raw pixels separate them."""
    tmp = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        for i in range(7 if label == "blue" else 9):
            pixels = np.clip(rng.normal(colour, 60, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            path = tmp / "colours" / label / f"{label}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    cache = tmp / "cache.h5"
    extract_dataset(tmp / "colours", load_backbone("raw8"), cache, options=ExtractOptions())
    return cache


def test_compare_end_to_end_with_raw_pixels(colour_cache: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
    real_run_cell = compare_fits.run_cell

    def recording_run_cell(estimator, X, y, split, tta=False):  # noqa: ANN001, ANN202
        seen.append((X.shape[1], tuple(split.train), tuple(split.test)))
        return real_run_cell(estimator, X, y, split, tta)

    monkeypatch.setattr(compare_fits, "run_cell", recording_run_cell)
    result = run_compare(colour_cache, models=["raw16"], heads=["logreg", "knn"], per_class=[2, 4], repeats=2,
                         pixels=8, out=tmp_path / "out", jobs=1)  # in this process, where run_cell is recorded
    assert result.dataset == "colours"
    assert {(c.features, c.head, c.per_class) for c in result.cells} == {
        (f, h, n) for f in ("raw16", "raw8") for h in ("logreg", "knn", "nb") for n in (2, 4)}
    assert all(len(c.scores["accuracy"]) == 2 for c in result.cells)
    assert max(c.mean_std("accuracy")[0] for c in result.cells) >= 0.9
    # every feature set and head saw exactly the same draws
    by_dim = {dim: sorted((train, test) for d, train, test in seen if d == dim) for dim in (3 * 8 * 8, 3 * 16 * 16)}
    assert by_dim[192] == by_dim[768] and len(set(by_dim[192])) == 4  # 2 N × 2 draws, 3 heads each

    assert {"markdown", "csv", "json", "confusion", "mistakes", "curve", "html"} <= set(result.files)
    assert all(p.stat().st_size > 0 for p in result.files.values())
    rows = json.loads(result.files["json"].read_text())
    assert {r["features"] for r in rows} == {"raw8", "raw16"} and len(rows) == 12 * 3
    assert result.best is not None and result.best.confusion.sum() > 0
    assert "colours" in str(result.table().title)


def test_svm_rows_on_raw_pixels_are_rbf(colour_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kinds: set[str] = set()
    real_run_cell = compare_fits.run_cell

    def recording_run_cell(estimator, X, y, split, tta=False):  # noqa: ANN001, ANN202
        kinds.add(type(estimator[-1]).__name__)
        return real_run_cell(estimator, X, y, split, tta)

    monkeypatch.setattr(compare_fits, "run_cell", recording_run_cell)
    result = run_compare(colour_cache, models=[], heads=["svm"], per_class=[3], repeats=1, pixels=8, tune=[],
                         out=tmp_path, jobs=1)
    assert kinds == {"RBFSVMClassifier", "FastGaussianNB"}
    assert "on raw pixels, settings that suit pixels better than the embedding rows' (README, heads): " \
        "svm kernel=rbf" in result.notes


def test_fitted_cells_are_reused_by_the_next_compare(colour_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    shutil.copy(colour_cache, cache)  # its own cells/ folder
    starts: list[tuple[int, int]] = []

    def progress(task: str, done: int, total: int) -> None:
        if task == "fits" and (not starts or starts[-1][1] != total or done < starts[-1][0]):
            starts.append((done, total))

    kwargs = dict(models=[], per_class=[3], repeats=2, pixels=8, tune=[], jobs=1, progress=progress)
    first = run_compare(cache, heads=["logreg"], out=tmp_path / "a", **kwargs)
    again = run_compare(cache, heads=["logreg", "knn"], out=tmp_path / "b", **kwargs)
    assert starts == [(0, 4), (4, 6)]  # logreg and nb (2 draws each) fitted once, then only knn
    assert [c.scores for c in again.cells if c.head != "knn"] == [c.scores for c in first.cells]
    assert len(list((tmp_path / "cells").glob("*.npz"))) == 6


def test_parallel_jobs_give_the_same_numbers(colour_cache: Path, tmp_path: Path) -> None:
    kwargs = dict(models=[], heads=["logreg"], per_class=[3], repeats=2, pixels=8)
    results = []
    for jobs in (1, 2):  # each in a cache folder of its own, so neither reads the other's fitted cells
        cache = tmp_path / f"jobs{jobs}" / "cache.h5"
        cache.parent.mkdir()
        shutil.copy(colour_cache, cache)
        results.append(run_compare(cache, out=tmp_path / f"out{jobs}", jobs=jobs, **kwargs))
    assert [c.scores for c in results[0].cells] == [c.scores for c in results[1].cells]


def test_logreg_cells_batched_in_torch_match_scikit_learn(colour_cache: Path, tmp_path: Path) -> None:
    """--device cpu runs the CUDA code path (every draw of a cell in one torch solve) on the CPU."""
    kwargs = dict(models=["raw16"], heads=["logreg"], per_class=[2, 4], repeats=3, pixels=8, jobs=1)
    results = {}
    for device in ("sklearn", "cpu"):
        cache = tmp_path / device / "cache.h5"
        cache.parent.mkdir()
        shutil.copy(colour_cache, cache)
        results[device] = run_compare(cache, out=tmp_path / f"out-{device}", device=device, **kwargs)
    assert [(c.features, c.head, c.per_class) for c in results["cpu"].cells] == \
        [(c.features, c.head, c.per_class) for c in results["sklearn"].cells]
    for ours, theirs in zip(results["cpu"].cells, results["sklearn"].cells, strict=True):
        assert len(ours.scores["accuracy"]) == 3
        if ours.head == "logreg":
            assert abs(ours.mean_std("accuracy")[0] - theirs.mean_std("accuracy")[0]) <= 0.05
        else:  # nb is not batched: the very same fits
            assert ours.scores == theirs.scores


@pytest.mark.parametrize("device, message", [("tpu", r"--device tpu: .*sklearn"),
                                             ("cuda:7", r"--device cuda:7: no CUDA GPU .*sklearn")])
def test_device_errors(colour_cache: Path, device: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """compare's own word (sklearn) on top of runtime.resolve_device's, which checks every other device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=message):
        run_compare(colour_cache, models=[], heads=["logreg"], per_class=[2], pixels=8, device=device)
    assert compare._linear_device("sklearn") is None and compare._linear_device("auto") is None  # no CUDA here
    assert compare._linear_device("cpu") == "cpu"


def test_progress_names_the_cell_being_fitted(colour_cache: Path, tmp_path: Path) -> None:
    heard: list[tuple[str, int, int, str]] = []
    three: list[tuple[str, int, int]] = []
    kwargs = dict(models=[], heads=["logreg", "knn"], per_class=[2, 3], repeats=2, pixels=8, jobs=1, tune=[])
    caches = []
    for name in ("a", "b"):  # fresh cells/ folders: every cell is fitted
        caches.append(tmp_path / name / "cache.h5")
        caches[-1].parent.mkdir()
        shutil.copy(colour_cache, caches[-1])
    run_compare(caches[0], out=tmp_path / "a", progress=lambda *a, detail="": heard.append((*a, detail)), **kwargs)
    fits = [h for h in heard if h[0] == "fits"]
    assert fits[0] == ("fits", 0, 12, "raw8 + logreg, N=2") and fits[-1] == ("fits", 12, 12, "")
    assert {h[3] for h in fits} >= {"raw8 + knn, N=3", "raw8 + nb, N=2"}
    run_compare(caches[1], out=tmp_path / "b", progress=lambda task, done, total: three.append((task, done, total)),
                **kwargs)  # the documented three-argument callback still works
    assert ("fits", 12, 12) in three


def test_cnn_cells_only_on_raw_pixel_rows(colour_cache: Path, tmp_path: Path) -> None:
    result = run_compare(colour_cache, models=["raw16"], heads=["cnn"], per_class=[3], repeats=1, pixels=8,
                         out=tmp_path, jobs=1)
    assert sorted((c.features, c.head) for c in result.cells) == [
        ("raw16", "cnn"), ("raw16", "nb"), ("raw8", "cnn"), ("raw8", "nb")]
    assert compare._heads_for("efficientnet_lite0", ["logreg", "cnn"]) == ["logreg"]


def test_cv_protocol(colour_cache: Path, tmp_path: Path) -> None:
    result = run_compare(colour_cache, models=[], heads=["knn"], cv=3, pixels=8, out=tmp_path)
    assert [(c.head, c.per_class, c.cv, len(c.fit_seconds)) for c in result.cells] == [("knn", None, 3, 3),
                                                                                     ("nb", None, 3, 3)]
    assert "curve" not in result.files


def test_n_too_large_names_the_class(colour_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=r"--per-class 8: class 'blue' has only 7 images.*--cap"):
        run_compare(colour_cache, models=[], heads=["knn"], per_class=[8], pixels=8, out=tmp_path)
    capped = run_compare(colour_cache, models=[], heads=["knn"], per_class=[8], repeats=1, pixels=8, cap=True,
                         out=tmp_path)
    assert any("capped" in n and "blue (6)" in n for n in capped.notes)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(heads=["logreg", "xgboost"]), UnknownHeadError, "^unknown head 'xgboost'; known heads: softmax, logreg"),
    (dict(tune=["xgboost"]), UnknownHeadError, "unknown head 'xgboost'"),
    (dict(per_class=[5], cv=3), CompareError, "not both"),
    (dict(per_class=[5, 0]), CompareError, "^--per-class 0: need at least 1 training image per class$"),
    (dict(cv=1), CompareError, "^--cv 1: K-fold needs at least 2 folds$"),
    (dict(metric="f1"), CompareError, "unknown metric 'f1'"),
    (dict(models=[], pixels=None), CompareError, "nothing to compare"),
])
def test_option_errors(colour_cache: Path, kwargs: dict, error: type[BottleneckError], message: str) -> None:
    """Each option has one check, shared with the code that uses it (heads._factory, evaluate)."""
    with pytest.raises(error, match=message):
        run_compare(colour_cache, **kwargs)


def test_unknown_model_and_dataset(colour_cache: Path) -> None:
    with pytest.raises(BackboneError, match="unknown model 'nosuchnet'"):
        run_compare(colour_cache, models=["nosuchnet"])
    with pytest.raises(StoreError, match="no dataset named 'other'"):
        run_compare(colour_cache, dataset="other")


def test_empty_or_missing_cache(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no cache here yet"):
        run_compare(tmp_path / "none.h5")
    with Store.open(tmp_path / "empty.h5", writable=True):
        pass
    with pytest.raises(StoreError, match="no dataset extracted yet"):
        run_compare(tmp_path / "empty.h5")


@pytest.mark.integration
def test_photo_vs_drawing_reference(lite0_cache: Path, tmp_path: Path, host: str) -> None:
    """Reference (datasets README): Lite0 + logreg 0.947 / 0.957 at 30 / 60 per class; raw pixels ≤ 0.71."""
    cache = lite0_cache
    start = time.perf_counter()
    result = run_compare(cache, dataset="photo_vs_drawing", models=["efficientnet_lite0"], heads=["logreg", "svm", "et"], per_class=[30, 60],
                         repeats=5, out=tmp_path / "report", jobs=2)
    print(f"\ncompare took {time.perf_counter() - start:.1f} s")
    scores = {(c.features, c.head, c.per_class): c.mean_std("accuracy") for c in result.cells}
    for key, (mean, std) in sorted(scores.items()):
        print(key, f"{mean:.3f} ± {std:.3f}")
    lite0 = on_host("efficientnet_lite0", host)  # lite0_cache was extracted as the default host
    assert scores[lite0, "logreg", 30][0] >= 0.93
    assert scores[lite0, "logreg", 60][0] >= 0.93
    assert all(mean <= 0.85 for (features, _, _), (mean, _) in scores.items() if features == "raw32")


def _spy_on_opens(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each Store.open from now on asks to write."""
    opened: list[bool] = []
    real = Store.open

    def spying(path, writable=False):  # noqa: ANN001, ANN202
        opened.append(writable)
        return real(path, writable)

    monkeypatch.setattr(Store, "open", staticmethod(spying))
    return opened


def test_the_comparison_itself_opens_the_cache_read_only(image_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Extracting what rows lack is the step before (update=True, what the command runs); the
    comparison never writes the cache, and without that step a missing row is one line."""
    from tiny_backbone import tiny_backbone

    cache = tmp_path / "c.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=ExtractOptions(workers=0))
    kwargs = dict(heads=["logreg"], per_class=[3], repeats=1, out=tmp_path / "r")
    with pytest.raises(CompareError, match=r"^raw8: not extracted for 'data'; run `bottleneck extract"):
        run_compare(cache, pixels=8, update=False, **kwargs)
    opened = _spy_on_opens(monkeypatch)
    updated = run_compare(cache, pixels=8, **kwargs)
    assert True in opened  # the update step extracted raw8
    before, opened[:] = cache.read_bytes(), []
    again = run_compare(cache, pixels=8, update=False, **kwargs)
    assert opened and not any(opened) and cache.read_bytes() == before
    assert [c.scores for c in again.cells] == [c.scores for c in updated.cells]


def test_a_compare_opens_the_cache_twice(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read only, twice: to choose the rows, then to read them all. The update step between opens it only
    through extract_dataset (the spec as stored comes with the row's vectors)."""
    import bottleneck_features.compare_plan as compare_plan
    from tiny_backbone import tiny_backbone

    cache = tmp_path / "c.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=ExtractOptions(workers=0))
    kwargs = dict(heads=["logreg"], per_class=[3], repeats=1, pixels=8, out=tmp_path / "r")
    run_compare(cache, **kwargs)  # raw8 extracted: two rows
    extracting = [False]
    real_extract = compare_plan.extract_dataset

    def extract(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        extracting[0] = True
        try:
            return real_extract(*args, **kw)
        finally:
            extracting[0] = False

    monkeypatch.setattr(compare_plan, "extract_dataset", extract)
    opened: list[tuple[bool, bool]] = []
    real = Store.open
    monkeypatch.setattr(Store, "open", staticmethod(lambda path, writable=False: opened.append(
        (writable, extracting[0])) or real(path, writable)))
    for update in (False, True):
        opened.clear()
        run_compare(cache, update=update, **kwargs)
        assert [writable for writable, inside in opened if not inside] == [False, False]
        assert all(inside for writable, inside in opened if writable)  # writes only through extract_dataset
        assert ((True, True) in opened) == update
