"""The embedding map without a browser: the projection kept in the cache under its key, the page's
data escaped and sampled, the reports and `bottleneck map` with and without the projection library.
tests/test_map_browser.py drives the pages in Chromium."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import bottleneck_features.map_layout as map_layout
import bottleneck_features.map_page as map_page
from bottleneck_features import api
from bottleneck_features.cli import app
from bottleneck_features.errors import OutputError
from bottleneck_features.map_layout import (
    MapUnavailableError,
    ProjectionParams,
    cached_projection,
    check_available,
    project,
)
from bottleneck_features.map_page import EmbeddingMap, MapView, map_document, map_section, mark_bits, payload
from bottleneck_features.sources import register_model
from bottleneck_features.store import Store, load_features, select_extraction
from conftest import write_image
from tiny_backbone import tiny_backbone

INSTALL = "pip install 'bottleneck-features[map]'"
HOSTILE = "<img src=x onerror=alert(1)>"


def _tiny(tmp_path: Path, image_folder: Path) -> Path:
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    cache = tmp_path / "c.h5"
    api.extract(image_folder, "tiny", cache=cache, workers=0)
    return cache


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = map_layout.project

    def counting(X: np.ndarray, params: ProjectionParams) -> np.ndarray:
        calls.append(len(X))
        return real(X, params)

    monkeypatch.setattr(map_layout, "project", counting)
    return calls


def test_projection_separates_clusters_and_keeps_neighbours() -> None:
    pytest.importorskip("openTSNE")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 256)) * 4
    X = np.maximum(centres[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 256)), 0).astype(np.float32)
    xy = project(X)
    assert xy.shape == (120, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    labels = np.repeat(np.arange(3), 40)
    distance = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    assert (labels[distance.argmin(axis=1)] == labels).mean() > 0.95  # each point's nearest is of its cluster
    assert np.array_equal(project(X), xy)  # seeded
    assert project(X[:3]).shape == (3, 2)  # too few for t-SNE: principal components


def test_the_layout_is_kept_in_the_cache_under_its_key(image_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openTSNE")
    cache = _tiny(tmp_path, image_folder)
    dataset, fp = select_extraction(cache, None, None)
    f = load_features(cache, dataset, fp)
    calls = _counting(monkeypatch)
    shas = [*f.shas, f.shas[0]]  # a copy of an image (same sha256) shares its point
    X = np.vstack([f.X, f.X[:1]])
    before = cache.read_bytes()
    unstored, cached = cached_projection(cache, fp, shas, X, write=False)
    assert not cached and calls == [18] and cache.read_bytes() == before  # computed, not written
    first, cached = cached_projection(cache, fp, shas, X)
    assert not cached and calls == [18, 18] and np.array_equal(first, unstored)
    assert np.array_equal(first[-1], first[0])
    again, cached = cached_projection(cache, fp, list(reversed(shas)), X[::-1])
    assert cached and calls == [18, 18] and np.array_equal(again, first[::-1])  # the same set: free
    with Store.open(cache) as store:
        assert list(store.h5["projections"][fp]) and store.extractors() == [fp]
    _, cached = cached_projection(cache, fp, f.shas[:12], f.X[:12])  # another set of images
    assert not cached and calls[-1] == 12
    _, cached = cached_projection(cache, fp, f.shas, f.X, params=ProjectionParams(perplexity=3))
    assert not cached  # other parameters
    _, cached = cached_projection(cache, "other-0123456789abcdef", f.shas, f.X)
    assert not cached  # another extraction


def test_without_the_library_one_line_names_the_extra(image_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _tiny(tmp_path, image_folder)
    monkeypatch.setitem(sys.modules, "openTSNE", None)  # import openTSNE raises ImportError
    with pytest.raises(MapUnavailableError, match=re.escape(INSTALL)):
        check_available()
    run = CliRunner().invoke(app, ["map", "--cache", str(cache), "--out", str(tmp_path / "m.html")])
    assert run.exit_code == 1 and INSTALL in run.output and len(run.output.strip().splitlines()) == 1
    audit = api.audit(cache=cache, folds=2, out=tmp_path / "audit")  # the report goes on without the map
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert audit.files and "no embedding map: the embedding map needs openTSNE: " + html.escape(INSTALL) in page
    assert "bn-map-data" not in page
    result = api.compare(heads=["knn"], per_class=[3], repeats=1, pixels=8, cache=cache, out=tmp_path / "r", jobs=1)
    assert any(INSTALL in note for note in result.notes)
    assert html.escape(INSTALL) in result.files["html"].read_text()


def _data(page: str) -> list[dict]:
    return [json.loads(block) for block in re.findall(r'<script type="application/json" class="bn-map-data">(.*?)'
                                                     r"</script>", page, flags=re.S)]


def at(root: Path, paths: list[str]) -> list[str]:
    """The addresses of `paths` under the folder `root`."""
    return [str(root / p) for p in paths]


def test_hostile_names_stay_inside_the_data(tmp_path: Path) -> None:
    paths = [f"{HOSTILE}/a.png", "b/x</script><script>alert(2)</script>.png", "c/&amp;.png"]
    labels = [HOSTILE, "b</script>", "c&d"]
    xy = np.array([[0, 0], [1, 1], [2, 0]], dtype=np.float32)
    section = map_section(EmbeddingMap(paths, at(tmp_path, paths), labels, [MapView("view <b>", xy, notes=["", "<i>", ""])]))
    assert section.count("</script>") == 2  # the data's and the script's own
    assert "<img" not in section and "<i>" not in section and "<b>" not in section
    [data] = _data(section)
    assert data["path"] == paths and data["classes"] == sorted(labels) and data["views"][0]["title"] == "view <b>"
    assert [data["classes"][c] for c in data["label"]] == labels
    assert data["url"][1].startswith("file://") and "<" not in data["url"][1]  # percent-encoded
    assert "innerHTML" not in map_page.SCRIPT and "textContent" in map_page.SCRIPT
    page = map_document(f"title {HOSTILE}", None, note=HOSTILE)
    assert "<img" not in page and html.escape(HOSTILE) in page


def test_a_thousand_images_make_a_page_small_enough_to_mail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    paths = [f"c{i % 4}/{i}.jpg" for i in range(1000)]
    for i, path in enumerate(paths):
        write_image(root / path, seed=i, size=(96, 80))  # noise: the worst case for JPEG
    xy = np.random.default_rng(0).normal(size=(1000, 2))
    marks = [mark_bits(["outlier"]) if i % 100 == 0 else 0 for i in range(1000)]
    page = map_document("1,000", EmbeddingMap(paths, at(root, paths), [p[:2] for p in paths], [MapView("v", xy, marks)]))
    [data] = _data(page)
    assert len(data["path"]) == 1000 and all(t.startswith("data:image/jpeg;base64,") for t in data["thumb"])
    assert len(page.encode()) < 4_000_000, len(page.encode())
    print(f"1,000 images: {len(page.encode()) / 1e6:.2f} MB")
    monkeypatch.setattr(map_page, "POINTS_CAP", 300)
    monkeypatch.setattr(map_page, "THUMBNAILS_CAP", 100)
    [data] = _data(map_document("sample", EmbeddingMap(paths, at(root, paths), [p[:2] for p in paths], [MapView("v", xy, marks)])))
    assert len(data["path"]) == 300 and sum(1 for t in data["thumb"] if t) == 100
    assert "a sample of 300 of the 1,000 images (every marked one that fits first)" in data["notes"]
    assert "thumbnails for 100 of the 300 points" in data["notes"]
    kept = {paths.index(p) for p in data["path"]}
    assert {i for i in range(1000) if marks[i]} <= kept  # every marked point is drawn
    marked = [j for j, i in enumerate(sorted(kept)) if marks[i]]
    assert all(data["thumb"][j] for j in marked)  # and has its thumbnail
    assert [m for m in data["views"][0]["marks"] if m] == [mark_bits(["outlier"])] * 10


def test_payload_coordinates_fill_the_unit_square(tmp_path: Path) -> None:
    xy = np.array([[10, -5], [20, 5], [15, 0]], dtype=np.float32)
    data = payload(EmbeddingMap(["a/1.png", "b/2.png", "a/3.png"], at(tmp_path, ["a/1.png", "b/2.png", "a/3.png"]), ["a", "b", "a"], [MapView("v", xy)]))
    assert data["views"][0]["xy"] == [0, 0, 1, 1, 0.5, 0.5] and data["label"] == [0, 1, 0]
    assert data["thumb"] == ["", "", ""]  # no such files: no thumbnails, no error


def test_bottleneck_map_writes_one_page_and_checks_its_output(image_folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openTSNE")
    cache = _tiny(tmp_path, image_folder)
    calls = _counting(monkeypatch)
    runner = CliRunner()
    out = tmp_path / "map.html"
    run = runner.invoke(app, ["map", "data", "--cache", str(cache), "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert f"wrote {out}" in run.output and calls == [18]
    page = out.read_text()
    [data] = _data(page)
    assert len(data["path"]) == 18 and data["classes"] == ["cat", "dog", "owl"] and sum(map(bool, data["thumb"])) == 18
    assert "http://" not in page and "https://" not in page  # nothing from the network
    again = runner.invoke(app, ["map", "--cache", str(cache), "--out", str(tmp_path / "again.html")])
    assert again.exit_code == 0 and calls == [18]  # the layout came from the cache
    for bad, why in ((cache, "would overwrite the cache"), (image_folder / "cat", "is a folder"),
                     (image_folder / "cat" / "new.png", "would write an image into the dataset folder")):
        refused = runner.invoke(app, ["map", "--cache", str(cache), "--out", str(bad)])
        assert refused.exit_code == 1 and why in refused.output and "--out" in refused.output
    with pytest.raises(OutputError, match="would overwrite the cache"):
        api.embedding_map(cache=cache, out=cache)
    unknown = runner.invoke(app, ["map", "nope", "--cache", str(cache)])
    assert unknown.exit_code == 1 and "no dataset named 'nope'" in unknown.output


def test_compare_and_audit_reports_carry_the_map(image_folder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openTSNE")
    cache = _tiny(tmp_path, image_folder)
    calls = _counting(monkeypatch)
    result = api.compare(heads=["knn"], per_class=[3], repeats=1, pixels=8, cache=cache, out=tmp_path / "r", jobs=1)
    [data] = _data(result.files["html"].read_text())
    assert [v["title"] for v in data["views"]] == list(dict.fromkeys(c.features for c in result.cells))  # tiny, raw8
    assert calls == [18, 18] and len(data["path"]) == 18
    best = result.cells[0]
    view = data["views"][0]
    test = [i for i, note in enumerate(view["notes"]) if note.startswith("predicted: ")]
    assert len(test) == 18 - 3 * 3 and all("(knn, N=3, draw 1)" in view["notes"][i] for i in test)
    wrong = [i for i in test if view["notes"][i].split()[1] != data["classes"][data["label"][i]]]
    assert [i for i, m in enumerate(view["marks"]) if m] == wrong
    assert len(wrong) == round((1 - best.scores["accuracy"][0]) * len(test))
    audit = api.audit(cache=cache, folds=2, out=tmp_path / "audit")
    [data] = _data((tmp_path / "audit" / "audit.html").read_text())
    assert calls == [18, 18] and data["views"][0]["title"] == audit.extractor  # the compare's layout, reused
    label_issues = {f.path for f in audit.findings if f.issue == "label-issue"}
    bit = mark_bits(["label-issue"])
    assert {p for p, m in zip(data["path"], data["views"][0]["marks"], strict=True) if m & bit} == label_issues
    plain = api.audit(cache=cache, folds=2, out=tmp_path / "plain", embedding_map=False)
    assert plain.files and "bn-map" not in (tmp_path / "plain" / "audit.html").read_text()
