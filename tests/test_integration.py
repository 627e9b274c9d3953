"""The issues' acceptance checks on real weights and ../shared/datasets (skipped when absent)."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from bottleneck_features.cli import app
from bottleneck_features.store import Store, load_features
from bottleneck_features.training import fit_head, predict_files

pytestmark = pytest.mark.integration


def _fp(cache: Path, dataset: str) -> str:
    with Store.open(cache) as st:
        return st.dataset_extractors(dataset)[0]


def test_photo_vs_drawing_embeddings_separate_the_classes(lite0_cache: Path) -> None:
    feats = load_features(lite0_cache, "photo_vs_drawing", _fp(lite0_cache, "photo_vs_drawing"))
    assert feats.X.shape == (434, 1280)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    assert cross_val_score(model, feats.X, feats.labels, cv=cv).mean() >= 0.93  # reference 0.962


def test_cli_rerun_reuses_everything_and_reports_broken_files(lite0_cache: Path, shared_datasets: Path,
                                                              tmp_path: Path) -> None:
    data = tmp_path / "pvd"
    for label in ["photo", "drawing"]:
        (data / label).mkdir(parents=True)
        for f in sorted((shared_datasets / "photo_vs_drawing" / label).iterdir())[:20]:
            (data / label / f.name).symlink_to(f)
    (data / "photo" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cache = tmp_path / "c.h5"
    runner = CliRunner()
    first = runner.invoke(app, ["extract", str(data), "--cache", str(cache), "-q"])
    assert first.exit_code == 0, first.output
    assert "40 computed" in first.output and "photo/broken.jpg" in first.output
    again = runner.invoke(app, ["extract", str(data), "--cache", str(cache), "-q"])
    assert again.exit_code == 0 and "0 computed, 40 reused" in again.output


@pytest.mark.parametrize("head", ["logreg", "svm", "rf", "softmax"])
def test_heads_on_photo_vs_drawing(lite0_cache: Path, head: str, tmp_path: Path) -> None:
    meta = fit_head(lite0_cache, head=head, dataset="photo_vs_drawing", out=tmp_path / f"{head}.joblib").sidecar
    assert meta["metrics"]["test_accuracy"] >= 0.90  # reference ≈ 0.96


def test_hymenoptera_fit_on_train_score_on_val_and_predict(lite0_cache: Path, shared_datasets: Path,
                                                         tmp_path: Path) -> None:
    result = fit_head(lite0_cache, head="logreg", dataset="hymenoptera", out=tmp_path / "hym.joblib")
    assert result.sidecar["sizes"] == {"train": 244, "val": 0, "test": 153}
    assert result.sidecar["metrics"]["test_accuracy"] >= 0.90
    val = shared_datasets / "hymenoptera" / "val"
    predictions, skipped = predict_files([val], result.head_path, lite0_cache)
    assert not skipped and len(predictions) == 153
    right = np.mean([Path(p.path).parent.name == p.labels[0] for p in predictions])
    assert right >= 0.90


def test_audit_flags_junk_among_real_embeddings(lite0_cache: Path, tmp_path: Path) -> None:
    """Lite0's cosine distances are bounded and wide: the far-out fence (Q3 + 3 IQR) lay above the
    largest of them and flagged nothing, not even a noise image (benchmarks/RESULTS.md 14)."""
    from PIL import Image

    from bottleneck_features.dataset_audit import audit_features
    from bottleneck_features.extraction import ExtractOptions, extract_dataset
    from bottleneck_features.sources import load_backbone
    from bottleneck_features.store import Features

    rng = np.random.default_rng(0)
    squares = (np.indices((256, 256)).sum(0) // 32 % 2 * 255).astype(np.uint8)
    junk = {"noise": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "flat": np.full((256, 256, 3), 120, np.uint8),
            "checkerboard": np.stack([squares] * 3, axis=2)}
    for name, pixels in junk.items():
        (tmp_path / "junk" / "drawing").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "junk" / "drawing" / f"{name}.png")
    report = extract_dataset(tmp_path / "junk", load_backbone("efficientnet_lite0"), tmp_path / "junk.h5",
                             options=ExtractOptions())
    real = load_features(lite0_cache, "photo_vs_drawing", _fp(lite0_cache, "photo_vs_drawing"))
    added = load_features(tmp_path / "junk.h5", report.dataset, report.fingerprint)
    both = Features(real.root, real.paths + [f"junk/{p}" for p in added.paths],
                    np.concatenate([real.labels, added.labels]), np.concatenate([real.splits, added.splits]),
                    real.shas + added.shas, np.vstack([real.X, added.X]))
    outliers = [f.path for f in audit_features(both) if f.issue == "outlier"]
    assert len(outliers) >= 2 and all(path.startswith("junk/") for path in outliers), outliers
