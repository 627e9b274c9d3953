"""Augmented views that stay cached (`extract --views K --augment SPEC`) and their compare rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import bottleneck_features as bf
import bottleneck_features.compare_fits as compare_fits
import bottleneck_features.comparison as compare
from bottleneck_features.augment import DEFAULT_AUGMENT, Augment, augmented_view, parse_augment
from bottleneck_features.cli import app
from bottleneck_features.errors import ExtractError, SpecError, StoreError
from bottleneck_features.extraction import extract_files
from bottleneck_features.registry import Backbone
from bottleneck_features.sources import register_model
from bottleneck_features.store import Store, load_views, view_key
from bottleneck_features.training import load_head
from conftest import on_host, write_image
from tiny_backbone import PREPROCESS, tiny_backbone


@pytest.fixture
def counting() -> dict:
    """`tiny` in the registry, one network per (layer, pool), so tests can count forward passes."""
    built: dict = {}
    register_model("tiny", lambda weights=None, layer=None, pool="avg":
                   built.setdefault((layer, pool), tiny_backbone().using(layer=layer, pool=pool)))
    return built


def seen(built: dict) -> int:
    return sum(b.model.images_seen for b in built.values())


@pytest.mark.parametrize("text, canonical", [
    ("flip", "flip"), ("jitter=0.3,flip,crop=0.5", "crop=0.5+flip+jitter=0.3"), (DEFAULT_AUGMENT, DEFAULT_AUGMENT)])
def test_augment_spec_is_canonical(text: str, canonical: str) -> None:
    assert parse_augment(text).canonical() == canonical


@pytest.mark.parametrize("text, message", [
    ("rotate", "unknown augmentation 'rotate'"), ("crop=0", "bad value in 'crop=0'"), ("crop=big", "bad value"),
    ("flip=1", "bad value in 'flip=1'"), ("jitter=1.5", "bad value"), ("", "no augmentation given")])
def test_bad_augment_specs_name_the_part_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as error:
        parse_augment(text)
    assert "e.g. crop=0.35+flip+jitter=0.2" in str(error.value)


def test_a_view_depends_only_on_the_image_the_index_and_the_spec() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    augment = parse_augment(DEFAULT_AUGMENT)
    first = [augmented_view(img, augment, PREPROCESS, "ab" * 32, v) for v in range(6)]
    again = [augmented_view(img.copy(), augment, PREPROCESS, "ab" * 32, v) for v in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(t.shape == (3, 32, 32) and t.dtype == torch.uint8 for t in first)
    assert len({t.numpy().tobytes() for t in first}) == 6  # views differ from each other
    other = augmented_view(img, augment, PREPROCESS, "cd" * 32, 0)
    assert not torch.equal(other, first[0])  # and between images
    flipped = augmented_view(img, Augment(flip=True), PREPROCESS, "ab" * 32, 0)
    plain = augmented_view(img, Augment(), PREPROCESS, "ab" * 32, 0)
    assert torch.equal(flipped, plain) or torch.equal(flipped, plain.flip(2))


@pytest.mark.every_host
def test_views_are_computed_once_and_only_what_is_missing(image_folder: Path, tmp_path: Path,
                                                          counting: dict, host: str) -> None:
    cache = tmp_path / "c.h5"
    report = bf.extract(image_folder, "tiny", cache=cache, views=2, workers=0)
    assert (report.found, report.computed, report.views) == (18, 36, 2)
    assert seen(counting) == 18 + 36  # the plain view, then 2 augmented views of each image
    assert bf.extract(image_folder, "tiny", cache=cache, views=2, workers=0).computed == 0
    assert seen(counting) == 54
    assert bf.extract(image_folder, "tiny", cache=cache, views=3, workers=0).computed == 18  # view 2 only
    write_image(image_folder / "cat" / "new.png", seed=999)
    grown = bf.extract(image_folder, "tiny", cache=cache, views=3, workers=0)
    assert grown.computed == 3 and seen(counting) == 54 + 18 + 1 + 3
    with Store.open(cache) as store:
        (fp,) = [fp for fp in store.dataset_extractors("data") if store.extractor_spec(fp).augment]
        spec = store.extractor_spec(fp)
        assert spec.augment == DEFAULT_AUGMENT and spec.label() == on_host(f"tiny[augment={DEFAULT_AUGMENT}]", host)
        assert store.dataset_views("data") == {fp: 3}
        shas = [r.sha256 for r in store.read_manifest("data")]
        plain = store.get_vectors(spec.replace(augment=None).fingerprint(), shas)
    views = load_views(cache, "data", fp, shas)
    assert views.shape == (19, 3, 8)
    assert not np.allclose(views[:, 0], plain) and not np.allclose(views[:, 0], views[:, 1])
    # the same vectors when computed afresh in another cache: a view is a pure function of the image
    fresh = tmp_path / "fresh.h5"
    bf.extract(image_folder, "tiny", cache=fresh, views=3, workers=0)
    np.testing.assert_allclose(load_views(fresh, "data", fp, shas), views, rtol=1e-5, atol=1e-6)


@pytest.mark.every_host
def test_fit_on_an_augmented_extraction_trains_on_its_views_and_predicts_from_plain_vectors(
        image_folder: Path, tmp_path: Path, counting: dict, host: str) -> None:
    cache = tmp_path / "c.h5"
    bf.extract(image_folder, "tiny", cache=cache, views=2, workers=0)
    plain = bf.fit(head="knn", cache=cache, out=tmp_path / "plain.joblib").sidecar
    assert plain["extractor"]["label"] == on_host("tiny", host) and "views" not in plain  # the last run: the plain one
    named = bf.fit(head="knn", model="tiny", cache=cache, out=tmp_path / "named.joblib").sidecar  # the model's name:
    assert named["extractor"] == plain["extractor"] and "views" not in named  # its plain extraction, not its views
    augmented = on_host(f"tiny[augment={DEFAULT_AUGMENT}]", host)
    fitted = bf.fit(head="knn", model=augmented, cache=cache, out=tmp_path / "views.joblib")
    meta = fitted.sidecar
    assert meta["extractor"] == plain["extractor"]  # what predict extracts from a new image
    assert meta["views"]["per_image"] == 2 and meta["views"]["extractions"] == [augmented]
    head, _ = load_head(fitted.head_path)
    assert head[-1].n_samples_fit_ == 3 * meta["sizes"]["train"]  # every view of each training image
    before = seen(counting)
    assert len(bf.predict(image_folder / "cat", fitted.head_path, cache=cache).items) == 6
    assert seen(counting) == before  # the plain vectors, cached: no view computed again
    with pytest.raises(StoreError, match="run `bottleneck extract .* --views 2"):
        with Store.open(cache, writable=True) as store:
            fp = store.extraction_named("data", augmented)
            store.h5["datasets/data"].attrs["extractors"] = json.dumps([fp])  # the plain twin forgotten
        bf.fit(head="knn", model=augmented, cache=cache, out=tmp_path / "views.joblib")


def test_fit_head_auto_tries_the_cached_views(image_folder: Path, tmp_path: Path, counting: dict, host: str) -> None:
    cache = tmp_path / "c.h5"
    bf.extract(image_folder, "tiny", cache=cache, views=2, workers=0)
    auto = bf.fit(head="auto", cache=cache, out=tmp_path / "auto.joblib").sidecar["auto"]
    tried = [r["model"] for r in [auto["choice"], *auto["runners_up"]]]
    assert any(m.endswith(" and its views") for m in tried) and any(not m.endswith("views") for m in tried)
    named = bf.fit(head="auto", model=on_host(f"tiny[augment={DEFAULT_AUGMENT}]", host), cache=cache,
                   out=tmp_path / "views.joblib")
    auto = named.sidecar["auto"]  # views asked for: every candidate trains on them, as a fixed head would
    assert all(r["model"].endswith(" and its views") for r in [auto["choice"], *auto["runners_up"]])
    assert named.sidecar["views"]["per_image"] == 2


def test_view_keys_are_distinct_hex_keys() -> None:
    keys = {view_key("ab" * 32, v) for v in range(100)}
    assert len(keys) == 100 and all(len(k) == 64 and set(k) <= set("0123456789abcdef") for k in keys)


@pytest.mark.parametrize("args, message", [
    (["--views", "0"], "--views 0: give the number of augmented views per image, 1 or more"),
    (["--views", "-2"], "--views -2"),
    (["--views", "2", "--augment", "rotate"], "unknown augmentation 'rotate'"),
    (["--augment", "flip"], "--augment needs --views K"),
    (["--views", "2", "--decode", "torchvision"], "--views works with --decode pil only"),
])
def test_bad_views_options_are_one_line_errors_before_any_work(image_folder: Path, tmp_path: Path, counting: dict,
                                                               args: list[str], message: str) -> None:
    cache = tmp_path / "c.h5"
    result = CliRunner().invoke(app, ["extract", str(image_folder), "--model", "tiny", "--cache", str(cache), *args])
    assert result.exit_code == 1 and result.output.strip().startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert seen(counting) == 0 and not cache.exists()


@pytest.mark.every_host
def test_compare_has_a_views_row_and_its_tta_twin(image_folder: Path, tmp_path: Path, counting: dict,
                                                  monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    cache = tmp_path / "c.h5"
    bf.extract(image_folder, "tiny", cache=cache, views=4, workers=0)
    trained: dict[str, set] = {}
    real_run_cell = compare_fits.run_cell

    def recording(estimator, X, y, split, tta=False):  # noqa: ANN001, ANN202
        trained.setdefault(f"{X.ndim}-{tta}", set()).add(X.shape[1] if X.ndim == 3 else 1)
        return real_run_cell(estimator, X, y, split, tta)

    monkeypatch.setattr(compare_fits, "run_cell", recording)
    kwargs = dict(heads=["logreg", "svm"], per_class=[2, 3], repeats=2, pixels=None, jobs=1, out=tmp_path / "r")
    result = compare.run_compare(cache, **kwargs)
    rows = sorted({c.features for c in result.cells})
    tiny = on_host("tiny", host)
    assert rows == [tiny, f"{tiny}+views4", f"{tiny}+views4+tta"]
    assert trained == {"2-False": {1}, "3-False": {5}, "3-True": {5}}  # the plain view + 4 augmented ones
    assert any("+tta rows" in note for note in result.notes)
    assert seen(counting) == 18 * 5  # compare computed nothing
    again = compare.run_compare(cache, **kwargs)  # every cell from cache/cells
    assert [c.scores for c in again.cells] == [c.scores for c in result.cells]
    only_views = compare.run_compare(cache, models=[on_host(f"tiny[augment={DEFAULT_AUGMENT}]", host)], **kwargs)
    assert sorted({c.features for c in only_views.cells}) == rows  # a views row brings its plain row


@pytest.mark.every_host
def test_a_fused_views_row_joins_each_view_with_the_other_block(image_folder: Path, tmp_path: Path, counting: dict,
                                                                monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    cache = tmp_path / "c.h5"
    bf.extract(image_folder, "tiny", cache=cache, views=3, workers=0)
    bf.extract(image_folder, "raw8", cache=cache, workers=0)
    trained: dict[bool, np.ndarray] = {}
    real_run_cell = compare_fits.run_cell

    def recording(estimator, X, y, split, tta=False):  # noqa: ANN001, ANN202
        trained[tta] = X
        return real_run_cell(estimator, X, y, split, tta)

    monkeypatch.setattr(compare_fits, "run_cell", recording)
    views = on_host(f"tiny[augment={DEFAULT_AUGMENT}]", host)
    result = compare.run_compare(cache, models=[f"{views}+raw8"], heads=["logreg"], per_class=[2], repeats=1,
                                 pixels=None, jobs=1, out=tmp_path / "r")
    tiny = on_host("tiny", host)
    assert sorted({c.features for c in result.cells}) == [f"{tiny}+views3+raw8", f"{tiny}+views3+raw8+tta"]
    X = trained[False]
    assert X.shape == (18, 4, 8 + 192) and trained[True] is X  # the plain view + 3, the blocks side by side
    assert np.array_equal(X[:, 0, :8], bf.load_features(cache=cache, model=tiny).X)
    assert np.array_equal(X[:, 0, 8:], bf.load_features(cache=cache, model="raw8").X)
    assert (X[:, 1:, 8:] == X[:, :1, 8:]).all()  # raw8 has no views: its one vector beside each


@pytest.mark.every_host
def test_compare_auto_on_a_views_row_splits_its_folds_by_image(image_folder: Path, tmp_path: Path, counting: dict,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "c.h5"
    bf.extract(image_folder, "tiny", cache=cache, views=2, workers=0)
    views_of: dict[int, set] = {}
    real_run_cell = compare_fits.run_cell

    def recording(estimator, X, y, split, tta=False):  # noqa: ANN001, ANN202
        views_of.setdefault(X.shape[1] if X.ndim == 3 else 1, set()).add(estimator.views)
        return real_run_cell(estimator, X, y, split, tta)

    monkeypatch.setattr(compare_fits, "run_cell", recording)
    compare.run_compare(cache, heads=["auto"], per_class=[3], repeats=1, pixels=None, jobs=1, out=tmp_path / "r")
    assert views_of == {1: {1}, 3: {3}}  # the views row's auto knows each image's 3 rows


def test_compare_brings_views_up_to_date_for_new_images(image_folder: Path, tmp_path: Path, counting: dict,
                                                        host: str) -> None:
    cache = tmp_path / "c.h5"
    bf.extract(image_folder, "tiny", cache=cache, views=2, workers=0)
    for i in range(2):
        write_image(image_folder / "owl" / f"late{i}.png", seed=500 + i)
    before = seen(counting)
    result = compare.run_compare(cache, heads=["knn"], per_class=[2], repeats=1, pixels=None, out=tmp_path / "r")
    assert seen(counting) - before == 2 * 3  # the new images' plain view and 2 augmented views
    tiny = on_host("tiny", host)
    assert {c.features for c in result.cells} == {tiny, f"{tiny}+views2", f"{tiny}+views2+tta"}


def test_loose_files_have_no_views(tmp_path: Path) -> None:
    tiny = tiny_backbone()
    with pytest.raises(ExtractError, match="augmented views are extracted per dataset"):
        extract_files([write_image(tmp_path / "a.png", 1)], Backbone(tiny.model, tiny.spec.replace(augment="flip")),
                      tmp_path / "c.h5")


def test_raw_pixel_views(tmp_path: Path) -> None:
    root = tmp_path / "px"
    for c, label in enumerate("ab"):
        for i in range(3):
            write_image(root / label / f"{i}.png", seed=10 * c + i)
    assert bf.extract(root, "raw8", cache=tmp_path / "c.h5", views=2, augment="flip").computed == 12
    with Store.open(tmp_path / "c.h5") as store:
        ((fp, views),) = store.dataset_views("px").items()
        shas = [r.sha256 for r in store.read_manifest("px")]
    X = load_views(tmp_path / "c.h5", "px", fp, shas)
    assert views == 2 and X.shape == (6, 2, 3 * 8 * 8) and X.min() >= 0 and X.max() <= 1
