import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bottleneck_features.cli import app
from bottleneck_features.errors import BottleneckError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.formats import export_features, spreadsheet_safe
from bottleneck_features.spec import ExtractorSpec
from bottleneck_features.store import load_features, select_extraction
from conftest import write_image
from tiny_backbone import tiny_backbone


@pytest.fixture
def features(tmp_path: Path):
    """4 images in two classes, one named like a spreadsheet formula."""
    root = tmp_path / "data"
    for i in range(2):
        write_image(root / "=HYPERLINK(1)" / f"a{i}.png", seed=i)
        write_image(root / "plain" / f"b{i}.png", seed=10 + i)
    cache = tmp_path / "cache.h5"
    extract_dataset(root, tiny_backbone(), cache, options=ExtractOptions(workers=0))
    return cache, load_features(cache, *select_extraction(cache, None, None))


def test_npz_round_trip(features, tmp_path: Path) -> None:
    cache, f = features
    with np.load(export_features(f, tmp_path / "x.npz")) as z:
        np.testing.assert_array_equal(z["X"], f.X)
        assert z["labels"].tolist() == f.labels.tolist() and z["paths"].tolist() == f.paths
        assert z["sha256"].tolist() == f.shas and z["splits"].tolist() == f.splits.tolist()
        assert ExtractorSpec.from_dict(json.loads(str(z["spec"]))) == f.spec
    assert export_features(f, tmp_path / "named.vectors", "npz").is_file()  # no .npz appended


def test_csv_cells_never_start_a_formula(features, tmp_path: Path) -> None:
    _, f = features
    with export_features(f, tmp_path / "x.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and list(rows[0])[:5] == ["path", "label", "split", "sha256", "f0"]
    assert {r["label"] for r in rows} == {"'=HYPERLINK(1)", "plain"}
    assert all(r["path"].startswith("'=") for r in rows if r["label"] != "plain")
    np.testing.assert_allclose([[float(r[f"f{i}"]) for i in range(8)] for r in rows], f.X, rtol=1e-6)
    assert [spreadsheet_safe(t) for t in ("+1", "-x", "@a", "\tb", "ok")] == ["'+1", "'-x", "'@a", "'\tb", "ok"]


def test_parquet_with_and_without_pyarrow(features, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, f = features
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        table = pq.read_table(export_features(f, tmp_path / "x.parquet"))
        np.testing.assert_array_equal(np.array(table["vector"].to_pylist(), dtype=np.float32), f.X)
        assert table["sha256"].to_pylist() == f.shas
        assert ExtractorSpec.from_dict(json.loads(table.schema.metadata[b"bottleneck.spec"])) == f.spec
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(BottleneckError, match="needs pyarrow: pip install"):
        export_features(f, tmp_path / "y.parquet")


def test_cli_export(features, tmp_path: Path) -> None:
    cache, _ = features
    runner = CliRunner()
    ok = runner.invoke(app, ["export", str(tmp_path / "out.csv"), "--cache", str(cache)])
    assert ok.exit_code == 0 and (tmp_path / "out.csv").is_file()
    bad = runner.invoke(app, ["export", str(tmp_path / "out.xlsx"), "--cache", str(cache)])
    assert bad.exit_code == 1 and "--format xlsx: use one of npz, csv, parquet" in bad.output
