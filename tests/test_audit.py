"""bottleneck audit: duplicates, leakage, label issues and outliers from cached embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bottleneck_features.cli import app
from bottleneck_features.dataset_audit import audit_features
from bottleneck_features.errors import AuditError
from bottleneck_features.sources import register_model
from bottleneck_features.store import Features
from conftest import write_image
from tiny_backbone import tiny_backbone


def _features(n_per_class: int = 30, seed: int = 0) -> Features:
    """Three well separated classes in 64-d, the first 80 % of each in train, the rest in test."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 64)) * 2
    labels = np.repeat(["ant", "bee", "cat"], n_per_class)
    X = (centres[np.repeat(np.arange(3), n_per_class)] + rng.normal(size=(3 * n_per_class, 64))).astype(np.float32)
    splits = np.array(["train" if i % n_per_class < 0.8 * n_per_class else "test" for i in range(len(X))])
    paths = [f"{s}/{c}/{i}.jpg" for i, (s, c) in enumerate(zip(splits, labels, strict=True))]
    return Features(Path("/data"), paths, labels, splits, [f"{i:064x}" for i in range(len(X))], X)


def _replace(f: Features, row: int, *, like: int | None = None, label: str | None = None,
             x: np.ndarray | None = None, same_file: bool = False) -> None:
    if like is not None:
        f.X[row] = f.X[like] if same_file else f.X[like] + np.random.default_rng(row).normal(scale=0.01, size=64)
        if same_file:
            f.shas[row] = f.shas[like]
    if label is not None:
        f.labels[row] = label
    if x is not None:
        f.X[row] = x


def test_each_fault_is_found_and_flagged() -> None:
    f = _features()
    _replace(f, 85, like=3, same_file=True)  # a train image of ant copied into test (as cat): leakage
    _replace(f, 40, like=5)  # a near-duplicate of a train ant among train bees
    _replace(f, 10, label="bee", x=f.X[:24].mean(axis=0))  # a typical ant labelled bee
    _replace(f, 70, x=np.full(64, 40.0, dtype=np.float32))  # far from every class
    found = audit_features(f, threshold=0.99, folds=5)
    by_issue = {issue: [x for x in found if x.issue == issue] for issue in ("duplicate", "near-duplicate",
                                                                           "label-issue", "outlier")}
    [duplicate] = by_issue["duplicate"]
    assert (duplicate.path, duplicate.related, duplicate.flag) == (f.paths[3], [f.paths[85]], "leakage")
    [near] = by_issue["near-duplicate"]
    assert {near.path, *near.related} == {f.paths[5], f.paths[40]} and near.flag == "labels differ"
    assert near.score > 0.99
    top = {x.path: (x.label, x.suggested) for x in by_issue["label-issue"][:4]}  # ants under other labels
    assert top.items() >= {f.paths[10]: ("bee", "ant"), f.paths[40]: ("bee", "ant"), f.paths[85]: ("cat", "ant")}.items()
    assert by_issue["outlier"][0].path == f.paths[70]  # the most isolated first (Gaussian tails may follow)


def test_clean_data_has_no_duplicates_or_outliers() -> None:
    found = audit_features(_features(), folds=5)
    assert not [x for x in found if x.issue in ("duplicate", "near-duplicate", "outlier")]


def test_bad_input_is_one_line_that_says_what_to_do() -> None:
    f = _features(4)
    with pytest.raises(AuditError, match=r"^--folds 5: class 'ant' has only 4 images; use --folds 4 or less$"):
        audit_features(f, folds=5)
    with pytest.raises(AuditError, match=r"^--folds 1: K-fold needs at least 2 folds$"):  # compare --cv's rule
        audit_features(f, folds=1)
    f.labels[:] = "ant"
    with pytest.raises(AuditError, match="one class .*two or more class folders"):
        audit_features(f, folds=2)


def test_cli_writes_csv_json_and_html_safe_for_hostile_names(tmp_path: Path) -> None:
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    root = tmp_path / "data"
    for label in ("a", "=2+5"):  # a class name that a spreadsheet would run as a formula
        for i in range(6):
            write_image(root / label / f"{i}.png", seed=i + (0 if label == "a" else 100), fmt="PNG")
    shutil.copy(root / "a" / "0.png", root / "=2+5" / "copy.png")  # a copy under the other label
    shutil.copy(root / "a" / "1.png", root / "a" / "<img src=x onerror=alert(1)>.png")
    runner, cache = CliRunner(), str(tmp_path / "c.h5")
    none = runner.invoke(app, ["audit", "--cache", cache])
    assert none.exit_code == 1 and "no cache here yet; run `bottleneck extract DATA" in none.output
    assert runner.invoke(app, ["extract", str(root), "--model", "tiny", "--cache", cache, "-q"]).exit_code == 0
    out = tmp_path / "report"
    run = runner.invoke(app, ["audit", "--cache", cache, "--folds", "3", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "duplicate [labels differ]" in run.output
    records = json.loads((out / "audit.json").read_text())["findings"]
    duplicates = {(frozenset([r["path"], *r["related"]]), r["flag"]) for r in records if r["issue"] == "duplicate"}
    assert duplicates == {(frozenset({"a/0.png", "=2+5/copy.png"}), "labels differ"),
                          (frozenset({"a/1.png", "a/<img src=x onerror=alert(1)>.png"}), "")}
    table = (out / "audit.csv").read_text()
    assert ",'=2+5," in table and ",=2+5" not in table  # label and path cells start with a quote
    page = (out / "audit.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("data:image/jpeg;base64,") >= 4
    too_many = runner.invoke(app, ["audit", "--cache", cache, "--folds", "9"])
    assert too_many.exit_code == 1 and "use --folds 7 or less" in too_many.output


def test_thumbnails_confirm_a_near_duplicate_below_the_threshold() -> None:
    f = _features()
    rng = np.random.default_rng(3)
    f.X[40] = f.X[5] + rng.normal(scale=0.9, size=64)  # similar, not near-identical, embeddings
    similarity = float(f.X[40] @ f.X[5] / np.linalg.norm(f.X[40]) / np.linalg.norm(f.X[5]))
    assert 0.8 < similarity < 0.95
    pixels = rng.uniform(0, 1, size=(len(f.X), 48)).astype(np.float32)
    assert not [x for x in audit_features(f, pixels=pixels) if x.issue == "near-duplicate"]
    pixels[40] = pixels[5] * 0.9 + 0.05  # the same thumbnail, darker: correlation 1
    [near] = [x for x in audit_features(f, pixels=pixels) if x.issue == "near-duplicate"]
    assert {near.path, *near.related} == {f.paths[5], f.paths[40]} and near.score == pytest.approx(similarity)
    pixels[40] = np.nan  # no thumbnail: no confirmation
    assert not [x for x in audit_features(f, pixels=pixels) if x.issue == "near-duplicate"]


def test_an_audit_without_update_opens_the_cache_read_only(image_folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from bottleneck_features.dataset_audit import run_audit
    from bottleneck_features.extraction import ExtractOptions, extract_dataset
    from bottleneck_features.store import Store

    cache = tmp_path / "c.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=ExtractOptions(workers=0))
    run_audit(cache, folds=2)  # extracts the raw32 thumbnails first
    before, opened = cache.read_bytes(), []
    real = Store.open
    monkeypatch.setattr(Store, "open", staticmethod(lambda path, writable=False: opened.append(writable)
                                                    or real(path, writable)))
    audit = run_audit(cache, folds=2, update=False)
    assert opened and not any(opened) and cache.read_bytes() == before and audit.dataset == "data"


def test_the_api_resolves_the_audited_extraction_once(image_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import bottleneck_features.dataset_audit as audit_module
    import bottleneck_features.store as store
    from bottleneck_features import api

    cache = tmp_path / "c.h5"
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    api.extract(image_folder, "tiny", cache=cache, workers=0)
    calls = []
    real = store.select_extraction

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "select_extraction", counting)
    monkeypatch.setattr(audit_module, "select_extraction", counting)
    result = api.audit(folds=2, cache=cache, out=tmp_path / "report")
    assert len(calls) == 1 and result.dataset == "data" and (tmp_path / "report" / "audit.json").is_file()
