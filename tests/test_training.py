import json
from pathlib import Path

import numpy as np
import pytest

from bottleneck_features.errors import BackboneError, StoreError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.heads import LinearSVMClassifier, RBFSVMClassifier
from bottleneck_features.sources import register_model, resolve_spec
from bottleneck_features.store import load_features
from bottleneck_features.training import FitError, fit_head, load_head, predict_files, split_indices, write_predictions
from conftest import write_image
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0)


def _separable_folder(root: Path, per_class: int = 12) -> Path:
    """Two classes a tiny random CNN can tell apart: dark noise vs bright noise."""
    rng = np.random.default_rng(0)
    from PIL import Image
    for label, base in [("dark", 30), ("bright", 200)]:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def trained_cache(tmp_path: Path) -> tuple[Path, Path]:
    models = {}
    register_model("tiny", lambda weights=None, layer=None, pool="avg": models.setdefault("m", tiny_backbone()))
    root = _separable_folder(tmp_path / "shades")
    cache = tmp_path / "cache.h5"
    extract_dataset(root, tiny_backbone(), cache, options=QUIET)
    return root, cache


def test_fit_writes_head_and_sidecar(trained_cache) -> None:
    root, cache = trained_cache
    result = fit_head(cache, head="logreg", test_size=0.3)
    meta = json.loads(result.head_path.with_suffix(".json").read_text())
    assert result.head_path == cache.parent / "heads" / "shades-logreg.joblib"
    assert meta["classes"] == ["bright", "dark"] and meta["metrics"]["test_accuracy"] == 1.0
    assert set(meta["metrics"]) >= {"test_accuracy", "balanced_accuracy", "macro_f1", "per_class"}
    assert meta["sizes"]["train"] + meta["sizes"]["test"] == 24
    assert meta["extractor"]["fingerprint"].startswith("tiny-") and len(meta["sha256"]) == 64
    assert {"scikit-learn", "torch", "bottleneck-features"} <= set(meta["versions"])


def test_fit_svm_on_raw_pixels_is_rbf(trained_cache) -> None:
    root, cache = trained_cache
    embedding = fit_head(cache, head="svm", test_size=0.3)
    assert isinstance(load_head(embedding.head_path)[0][-1].estimator, LinearSVMClassifier)
    extract_dataset(root, resolve_spec("raw8"), cache, options=QUIET)
    pixels = fit_head(cache, head="svm", test_size=0.3)
    assert isinstance(load_head(pixels.head_path)[0][-1].estimator, RBFSVMClassifier)
    assert json.loads(pixels.head_path.with_suffix(".json").read_text())["metrics"]["test_accuracy"] == 1.0


def test_hash_split_is_stable_when_images_are_added(trained_cache, tmp_path: Path) -> None:
    root, cache = trained_cache
    feats = load_features(cache, "shades", load_head_fp(cache))
    _, _, test_before = split_indices(feats, 0.3, seed=0)
    before = {feats.shas[i] for i in test_before}
    for i in range(8):
        write_image(root / "dark" / f"extra{i}.png", seed=900 + i)
    extract_dataset(root, tiny_backbone(), cache, options=QUIET)
    feats = load_features(cache, "shades", load_head_fp(cache))
    train, _, test = split_indices(feats, 0.3, seed=0)
    assert before <= {feats.shas[i] for i in test}
    assert not before & {feats.shas[i] for i in train}


def load_head_fp(cache: Path) -> str:
    from bottleneck_features.store import Store
    with Store.open(cache) as st:
        return st.last_run()[1]


def test_split_folders_are_used(tmp_path: Path) -> None:
    for split in ["train", "val"]:
        _separable_folder(tmp_path / "hym" / split, per_class=6)
    cache = tmp_path / "c.h5"
    extract_dataset(tmp_path / "hym", tiny_backbone(), cache, options=QUIET)
    meta = fit_head(cache, head="knn").sidecar
    assert meta["sizes"] == {"train": 12, "val": 0, "test": 12} and meta["split"]["from_folders"]


def test_predict_reuses_cache_and_writes_topk(trained_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = trained_cache
    head = fit_head(cache, head="logreg").head_path
    backbone = tiny_backbone()
    register_model("tiny", lambda weights=None, layer=None, pool="avg": backbone)
    predictions, skipped = predict_files([root / "dark"], head, cache, top_k=2, options=QUIET)
    assert backbone.model.images_seen == 0 and not skipped
    assert [p.labels[0] for p in predictions] == ["dark"] * 12
    csv_text = write_predictions(predictions, "csv", top_k=2)
    assert csv_text.splitlines()[0] == "path,prediction,probability,label_1,probability_1,label_2,probability_2"
    assert json.loads(write_predictions(predictions, "json", 2))[0]["prediction"] == "dark"
    new = write_image(tmp_path / "new" / "x.png", seed=77)
    monkeypatch.chdir(tmp_path)
    predictions, _ = predict_files([Path("new")], head, cache, options=QUIET)  # relative paths work too
    assert backbone.model.images_seen == 1 and predictions[0].path == str(new)


def test_predict_refuses_tampered_head_and_other_extractor(trained_cache, tmp_path: Path) -> None:
    root, cache = trained_cache
    head = fit_head(cache, head="logreg").head_path
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone(dim=4))
    predict_files([root / "dark"], head, cache, options=QUIET)  # cached: the head's spec needs no model
    new = write_image(tmp_path / "new" / "x.png", seed=77)
    with pytest.raises(BackboneError, match="differs from the one its vectors were made with"):
        predict_files([new], head, cache, options=QUIET)
    head.write_bytes(head.read_bytes() + b"x")
    with pytest.raises(FitError, match="sha256 does not match"):
        load_head(head)


def test_clear_errors(trained_cache, tmp_path: Path) -> None:
    root, cache = trained_cache
    with pytest.raises(StoreError, match="no cache here yet"):
        fit_head(tmp_path / "none.h5", head="logreg")
    with pytest.raises(ValueError, match="logreg"):
        fit_head(cache, head="nope")
    with pytest.raises(StoreError, match="has no resnet50 features"):
        fit_head(cache, head="logreg", model="resnet50")
    one = tmp_path / "one"
    write_image(one / "only" / "a.png", seed=1)
    write_image(one / "only" / "b.png", seed=2)
    extract_dataset(one, tiny_backbone(), cache, options=QUIET)
    with pytest.raises(FitError, match="only one class"):
        fit_head(cache, head="logreg", dataset="one")


def test_fit_defaults_to_the_datasets_own_last_extract(trained_cache, tmp_path: Path) -> None:
    from bottleneck_features.sources import load_backbone
    root, cache = trained_cache
    extract_dataset(root, load_backbone("raw8"), cache, options=QUIET, remember=False)  # as compare does
    other = tmp_path / "other"
    write_image(other / "a" / "1.png", seed=1)
    extract_dataset(other, tiny_backbone(), cache, options=QUIET)  # "shades" is no longer the last run
    assert fit_head(cache, head="knn", dataset="shades").sidecar["extractor"]["spec"]["model"] == "tiny"


def test_cli_extract_fit_predict_with_device_decode(tmp_path: Path) -> None:
    """`--decode torchvision --threads 1` through the CLI; predict follows the head's decoder."""
    from typer.testing import CliRunner

    from bottleneck_features.cli import app

    models = {}
    register_model("tiny", lambda weights=None, layer=None, pool="avg": models.setdefault("m", tiny_backbone()))
    root, cache = _separable_folder(tmp_path / "shades"), tmp_path / "cache.h5"
    for i in range(3):  # JPEGs too, which take the device path
        write_image(root / "dark" / f"j{i}.jpg", seed=i, size=(40, 40))
    runner = CliRunner()
    args = ["--cache", str(cache), "-q"]
    result = runner.invoke(app, ["extract", str(root), "--model", "tiny", "--decode", "torchvision", "--threads", "1",
                                 "--workers", "0", *args])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["fit", "--head", "logreg", "--cache", str(cache)]).exit_code == 0
    seen = models["m"].model.images_seen
    result = runner.invoke(app, ["predict", str(root / "dark"), "--head", str(cache.parent / "heads" / "shades-logreg.joblib"),
                                 *args])
    assert result.exit_code == 0, result.output
    assert models["m"].model.images_seen == seen  # same extractor: every vector came from the cache
    bad = runner.invoke(app, ["extract", str(root), "--model", "tiny", "--decode", "gpu", *args])
    assert bad.exit_code == 1 and "--decode gpu: use one of pil, torchvision" in bad.output


def test_fit_checks_the_head_name_before_any_work(tmp_path: Path) -> None:
    from bottleneck_features.errors import UnknownHeadError

    with pytest.raises(UnknownHeadError, match="^unknown head 'xgboost'; known heads: softmax"):
        fit_head(tmp_path / "none.h5", head="xgboost")  # not even the missing cache is looked at
    assert not (tmp_path / "none.h5").exists()


def test_write_predictions_takes_the_formats_predict_checks() -> None:
    with pytest.raises(FitError, match="^--format xml: use csv or json$"):
        write_predictions([], "xml")
    assert write_predictions([], "csv").startswith("path,prediction,probability")
