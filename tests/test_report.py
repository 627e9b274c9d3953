"""Report outputs from synthetic result cells: every file written, JSON/CSV shape, figure scaling."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from bottleneck_features.evaluate import METRICS, Cell
from bottleneck_features.report import BestRun, Mistake, plot_confusion, rich_table, write_report
from conftest import write_image


def synthetic_cells(per_class: list[int | None], cv: int | None = None) -> list[Cell]:
    rng = np.random.default_rng(0)
    cells = []
    rows = [("efficientnet_lite0", ["logreg", "svm"], 0.9), ("raw8", ["logreg", "svm", "nb"], 0.6)]
    for features, heads, level in rows:
        for head in heads:
            for n in per_class:
                cell = Cell(features, head, n, cv)
                for _ in range(3):
                    value = float(level + rng.normal(0, 0.02))
                    for metric in METRICS:
                        cell.scores[metric].append(value)
                    cell.fit_seconds.append(0.01)
                    cell.predict_seconds.append(0.001)
                cells.append(cell)
    return cells


def synthetic_best(root: Path, cell: Cell, k: int = 3) -> BestRun:
    classes = [f"class{i}" for i in range(k)]
    write_image(root / "class0" / "a.jpg", seed=1)
    write_image(root / "class1" / "b.png", seed=2)
    mistakes = [Mistake("class0/a.jpg", "class0", "class1"), Mistake("class1/b.png", "class1", "class2"),
                Mistake("class2/gone.jpg", "class2", "class0")]  # a missing file shows as unreadable
    confusion = np.eye(k, dtype=int) * 8 + 1
    return BestRun(cell, classes, confusion, mistakes)


def test_write_report_writes_every_file(tmp_path: Path) -> None:
    cells = synthetic_cells([2, 4])
    best = synthetic_best(tmp_path / "data", cells[0])
    images = {m.path: str(tmp_path / "data" / m.path) for m in best.mistakes[:2]}  # gone.jpg: nowhere
    files = write_report(tmp_path / "out", cells, best, images=images, title="toy: 3 draws",
                         metric="balanced_accuracy", notes=["a note"])
    assert sorted(files) == ["confusion", "csv", "curve", "html", "json", "markdown", "mistakes"]
    for path in files.values():
        assert path.parent == tmp_path / "out" and path.stat().st_size > 0
    for kind in ("confusion", "mistakes", "curve"):
        assert Image.open(files[kind]).format == "PNG"

    rows = json.loads(files["json"].read_text())
    assert len(rows) == len(cells) * len(METRICS)
    for key in ("features", "head", "per_class", "metric", "mean", "std", "fit_seconds"):
        assert all(key in r for r in rows)
    assert {r["features"] for r in rows} == {"efficientnet_lite0", "raw8"}
    assert {r["per_class"] for r in rows} == {2, 4}
    assert {r["head"] for r in rows if r["features"] == "raw8"} == {"logreg", "svm", "nb"}

    with open(files["csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)

    md = files["markdown"].read_text()
    assert "| features | logreg N=2 |" in md and "±" in md and "**" in md and "- a note" in md
    assert md.count("| raw8 |") == 2  # score table and fit-time table
    page = files["html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [files[k].read_bytes() for k in ("confusion", "mistakes",
                                                                                              "curve")]
    assert "<table>" in page and "a note" in page and 'src="' not in page.replace('src="data:', "")


def test_cv_report_has_no_curve(tmp_path: Path) -> None:
    cells = synthetic_cells([None], cv=5)
    files = write_report(tmp_path, cells, None, images={}, title="cv", metric="accuracy")
    assert "curve" not in files and "confusion" not in files
    assert json.loads(files["json"].read_text())[0]["per_class"] is None
    assert "5-fold" in files["markdown"].read_text()


def test_rich_table_reads_at_80_columns() -> None:
    """A row per features + head, a column per N: 3 heads x 2 N no longer wrap every cell."""
    console = Console(record=True, width=80)
    console.print(rich_table(synthetic_cells([15, 30]), "accuracy", "toy"))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    header = next(line for line in lines if "N=15" in line)
    assert "N=30" in header and "head" in header
    row = next(line for line in lines if "efficientnet_lite0" in line and "svm" in line)
    assert row.count("±") == 2  # both N on one line, not wrapped
    assert "10 ms" in "\n".join(lines)


def test_confusion_figure_scales_with_class_count(tmp_path: Path) -> None:
    cell = synthetic_cells([2])[0]
    sizes = []
    for k in (3, 100):
        plot_confusion(tmp_path / f"{k}.png", synthetic_best(tmp_path / "data", cell, k))
        sizes.append(Image.open(tmp_path / f"{k}.png").size)
    assert sizes[1][0] > 3 * sizes[0][0]
