"""Label files (CSV, JSON, JSON Lines, Parquet; paths or ids) give the manifest a folder gives; unusable
rows are reported, never fatal; paths leaving the folder are refused."""

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bottleneck_features.cli import app
from bottleneck_features.datasets import scan_dataset
from bottleneck_features.errors import DatasetError, ExtractError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.label_files import LabelColumns, read_label_file, source_from_json
from bottleneck_features.sources import register_model
from bottleneck_features.store import Store, load_features
from conftest import write_image
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0, batch_size=8)
FORMATS = ["csv", "json", "jsonl", "parquet"]


def write_labels(file: Path, rows: list[dict]) -> Path:
    """`rows` as a label file in the format its suffix names."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if file.suffix == ".csv":
        with open(file, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
    elif file.suffix == ".json":
        file.write_text(json.dumps(rows))
    elif file.suffix == ".jsonl":
        file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), file)
    return file


def folder_rows(root: Path) -> list[dict]:
    return [{"path": e.path, "label": e.label} for e in scan_dataset(root).entries]


def _extract(data: Path, cache: Path, backbone=None, **kw):
    backbone = backbone or tiny_backbone()
    report = extract_dataset(data, backbone, cache, options=kw.pop("options", QUIET), **kw)
    return report, backbone.model.images_seen


def _by_path(cache: Path, name: str) -> dict[str, tuple[str, np.ndarray]]:
    with Store.open(cache) as store:
        fp = store.dataset_extractors(name)[0]
    f = load_features(cache, name, fp)
    return {p: (label, x) for p, label, x in zip(f.paths, f.labels, f.X, strict=True)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_label_file_gives_the_folder_s_vectors_and_labels_computing_nothing(
        image_folder: Path, tmp_path: Path, fmt: str) -> None:
    cache = tmp_path / "c.h5"
    folder, seen = _extract(image_folder, cache)
    assert seen == 18
    labels = write_labels(image_folder / f"labels.{fmt}", folder_rows(image_folder))
    report, seen = _extract(labels, cache)
    assert (report.dataset, report.found, report.computed, report.reused, seen) == ("labels", 18, 0, 18, 0)
    assert report.left_out == [] and report.unlabelled == 0
    a, b = _by_path(cache, "data"), _by_path(cache, "labels")
    assert a.keys() == b.keys()
    for path, (label, x) in a.items():
        assert b[path][0] == label and np.array_equal(b[path][1], x)


def test_splits_paths_spelt_loosely_and_names(image_folder: Path, tmp_path: Path) -> None:
    rows = [{"path": f"./{r['path']}", "label": f" {r['label']} ", "split": "Validation" if i % 3 else "train"}
            for i, r in enumerate(folder_rows(image_folder))]
    dataset = read_label_file(write_labels(image_folder / "my sheet.csv", rows))
    assert dataset.name == "my_sheet" and dataset.layout == "labels" and dataset.root == image_folder.resolve()
    assert {e.split for e in dataset.entries} == {"train", "val"}
    assert dataset.entries[0].path == "cat/cat0.png" and dataset.entries[0].label == "cat"
    assert read_label_file(image_folder / "my sheet.csv", name="other").name == "other"


def test_id_only_sheets_look_up_the_extension(image_folder: Path, tmp_path: Path) -> None:
    sheet = write_labels(tmp_path / "ids.jsonl", [
        {"id": "cat/cat0", "species": "cat"},  # cat0.png
        {"id": "dog/dog1", "species": "dog"},  # dog1.jpg
        {"id": "owl/owl2.jpg", "species": "owl"},  # an extension given
        {"id": "owl/nope", "species": "owl"},
    ])
    columns = LabelColumns(images=image_folder, id_column="id", label_column="species")
    dataset = read_label_file(sheet, columns=columns)
    assert [(e.path, e.label) for e in dataset.entries] == [
        ("cat/cat0.png", "cat"), ("dog/dog1.jpg", "dog"), ("owl/owl2.jpg", "owl")]
    assert dataset.root == image_folder.resolve()
    assert len(dataset.problems) == 1 and "no image named owl/nope.*" in dataset.problems[0][1]
    assert source_from_json(dataset.source) == (sheet.resolve(), columns)
    report, seen = _extract(sheet, tmp_path / "c.h5", columns=columns)
    assert (report.found, seen, len(report.left_out)) == (3, 3, 1)


def test_duplicates_missing_files_and_empty_labels_are_counted_not_fatal(image_folder: Path, tmp_path: Path) -> None:
    rows = folder_rows(image_folder)
    rows += [{"path": "cat/cat1.jpg", "label": "dog"}, {"path": "cat/../cat/cat2.jpg", "label": "cat"},
             {"path": "cat/gone.jpg", "label": "cat"}, {"path": "", "label": "cat"},
             {"path": "new/h.jpg", "label": "dog", "split": "holdout"}]
    for r in rows[:2]:
        r["label"] = ""
    write_image(image_folder / "new" / "n.jpg", seed=999)
    write_image(image_folder / "new" / "h.jpg", seed=998)
    rows.append({"path": "new/n.jpg", "label": ""})  # unlabelled: extracted, for predict
    sheet = write_labels(image_folder / "labels.csv", rows)
    cache = tmp_path / "c.h5"
    report, seen = _extract(sheet, cache)
    assert (report.found, seen, report.unlabelled, len(report.left_out)) == (19, 19, 3, 5)
    reasons = dict(report.left_out)
    assert reasons["line 20 (cat/cat1.jpg)"] == "a duplicate of line 3, which says ''"
    assert reasons["line 21 (cat/../cat/cat2.jpg)"] == "a duplicate of line 4"
    assert reasons["line 22 (cat/gone.jpg)"] == "missing: no such file"
    assert reasons["line 23 (empty)"] == "no image path"
    assert reasons["line 24 (new/h.jpg)"].startswith("split 'holdout'")
    assert "3 without a label (for predict; fit leaves them out)" in report.summary()
    assert "5 rows of the label file left out" in report.summary()
    features = load_features(cache, "labels", report.fingerprint)
    assert len(features.paths) == 16 and "" not in set(features.labels)  # fit, compare, audit: labelled rows only


def test_paths_leaving_the_folder_are_refused(image_folder: Path, tmp_path: Path) -> None:
    outside = write_image(tmp_path / "secret" / "s.jpg", seed=5)
    (image_folder / "link").symlink_to(outside.parent, target_is_directory=True)
    (image_folder / "cat" / "out.jpg").symlink_to(outside)
    write_image(image_folder / "inside" / "real.jpg", seed=6)
    (image_folder / "cat" / "in.jpg").symlink_to(image_folder / "inside" / "real.jpg")
    rows = [{"path": "../../etc/passwd", "label": "x"}, {"path": "/etc/passwd", "label": "x"},
            {"path": "link/s.jpg", "label": "x"}, {"path": "cat/out.jpg", "label": "x"},
            {"path": "cat/in.jpg", "label": "cat"}, {"path": "cat/\x00x.jpg", "label": "x"},
            {"path": str(outside), "label": "abs"}, {"path": "..", "label": "x"}]
    dataset = read_label_file(write_labels(image_folder / "h.json", rows))
    assert [(e.path, e.label) for e in dataset.entries] == [("/etc/passwd", "x"), ("cat/in.jpg", "cat"),
                                                          (str(outside), "abs")]
    reasons = dict(dataset.problems)
    assert reasons["item 1 (../../etc/passwd)"].startswith("outside ")
    assert "through a symlink" in reasons["item 3 (link/s.jpg)"]
    assert "through a symlink" in reasons["item 4 (cat/out.jpg)"]
    assert "control characters" in reasons["item 6 (cat/\x00x.jpg)"]
    assert reasons["item 8 (..)"].startswith("outside ")
    # an absolute path is the user's explicit choice: /etc/passwd is then just a file that is not an image
    report, _ = _extract(image_folder / "h.json", tmp_path / "c.h5")
    assert [p for p, _ in report.skipped] == ["/etc/passwd"] and report.found == 3


def test_formulas_and_markup_in_labels_are_text(image_folder: Path, tmp_path: Path) -> None:
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    rows = [{"path": "cat/cat0.png", "label": "=cmd|' /C calc'!A0"}, {"path": "dog/dog1.jpg", "label": "[red]x[/red]"},
            {"path": "dog/dog1.jpg", "label": "[bold]y"}]
    sheet = write_labels(image_folder / "m.csv", rows)
    assert [e.label for e in read_label_file(sheet).entries] == ["=cmd|' /C calc'!A0", "[red]x[/red]"]
    out = CliRunner().invoke(app, ["extract", str(sheet), "--model", "tiny", "--cache", str(tmp_path / "c.h5"), "-q"])
    assert out.exit_code == 0, out.output
    assert "left out line 4 (dog/dog1.jpg): a duplicate of line 3, which says '[red]x[/red]'" in out.output


def test_cli_errors_are_one_line(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    cache = tmp_path / "c.h5"

    def run(*args: str) -> str:
        out = CliRunner().invoke(app, ["extract", *args, "--model", "tiny", "--cache", str(cache), "-q"])
        assert out.exit_code == 1 and out.output.startswith("error: ") and out.output.count("\n") == 1, out.output
        return out.output

    (image_folder / "cols.csv").write_text("file,class\ncat/cat0.png,cat\n")
    assert "no 'path' or 'label' column (its columns: 'file', 'class')" in run(str(image_folder / "cols.csv"))
    assert "no 'image' column (its columns: 'file', 'class')" in run(
        str(image_folder / "cols.csv"), "--id-column", "image", "--label-column", "class")
    (image_folder / "bad.json").write_text('[{"path": "cat/cat0.png",')
    assert "not valid JSON (line 1" in run(str(image_folder / "bad.json"))
    (image_folder / "obj.json").write_text('{"path": "cat/cat0.png"}')
    assert "expected a JSON list of objects" in run(str(image_folder / "obj.json"))
    (image_folder / "bin.csv").write_bytes(b"\xff\xfe\x00path,label\n")
    assert "not UTF-8 text" in run(str(image_folder / "bin.csv"))
    (image_folder / "junk.parquet").write_text("not parquet")
    assert "not a readable Parquet file" in run(str(image_folder / "junk.parquet"))
    assert "no such label file" in run(str(tmp_path / "absent.csv"))
    (image_folder / "gone.csv").write_text("path,label\ncat/none.jpg,cat\n")
    assert "none of its 1 rows names a usable image; first: line 2 (cat/none.jpg): missing" in \
        run(str(image_folder / "gone.csv"))
    assert "go with a label file" in run(str(image_folder), "--label-column", "x")
    if os.geteuid() != 0:
        (image_folder / "locked.csv").write_text("path,label\n")
        (image_folder / "locked.csv").chmod(0)
        assert "cannot read it (Permission denied)" in run(str(image_folder / "locked.csv"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert "pip install 'bottleneck-features[parquet]'" in run(str(image_folder / "junk.parquet"))
    assert not cache.exists()  # refused before the cache is created


def test_a_label_file_is_bound_to_its_file(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    rows = folder_rows(image_folder)
    first = write_labels(image_folder / "a.csv", rows[:9])
    second = write_labels(image_folder / "b.csv", rows[9:])
    _extract(first, cache, name="sheet")
    with pytest.raises(ExtractError, match="already holds a dataset named 'sheet', from .*a.csv"):
        _extract(second, cache, name="sheet")
    with pytest.raises(ExtractError, match="already holds a dataset named 'sheet'"):
        _extract(image_folder, cache, name="sheet")
    from bottleneck_features.dataset_identity import dataset_input

    with Store.open(cache) as store:
        assert dataset_input(store, "sheet") == (first.resolve(), LabelColumns())
        assert store.dataset_root("sheet") == image_folder.resolve()
    with pytest.raises(DatasetError, match="a label file ends in"):
        read_label_file(image_folder / "cat" / "cat0.png")


def test_photo_vs_drawing_from_a_csv_reuses_the_folder_s_vectors(shared_datasets: Path, tmp_path: Path) -> None:
    root = shared_datasets / "photo_vs_drawing"
    cache = tmp_path / "c.h5"
    folder, seen = _extract(root, cache, options=ExtractOptions(batch_size=64))
    sheet = write_labels(tmp_path / "pvd.csv", folder_rows(root))  # beside a read-only dataset: --images
    report, seen = _extract(sheet, cache, options=ExtractOptions(batch_size=64), columns=LabelColumns(images=root))
    assert (report.found, report.computed, report.reused, seen) == (folder.found, 0, folder.found, 0)
    a, b = _by_path(cache, "photo_vs_drawing"), _by_path(cache, "pvd")
    assert a.keys() == b.keys() and len(a) == 434
    assert all(b[p][0] == label and np.array_equal(b[p][1], x) for p, (label, x) in a.items())


def test_compare_brings_a_label_file_s_dataset_up_to_date_from_the_file(image_folder: Path, tmp_path: Path) -> None:
    from bottleneck_features.comparison import run_compare

    cache = tmp_path / "c.h5"
    sheet = write_labels(image_folder / "some.csv", [r for r in folder_rows(image_folder) if not r["path"].endswith("5.jpg")])
    _extract(sheet, cache)
    run_compare(cache, heads=["logreg"], per_class=[3], repeats=1, pixels=8, out=tmp_path / "r")
    with Store.open(cache) as store:
        assert len(store.dataset_extractors("some")) == 2  # raw8 added, read from the label file's 15 rows
        assert len(store.read_manifest("some")) == 15 and store.dataset_source("some")
