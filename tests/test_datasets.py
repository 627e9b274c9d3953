from pathlib import Path

import pytest

from bottleneck_features.datasets import DatasetError, hash_split, scan_dataset
from conftest import write_image


def test_class_layout(image_folder: Path) -> None:
    ds = scan_dataset(image_folder)
    assert ds.layout == "classes" and ds.name == "data"
    assert ds.classes == ["cat", "dog", "owl"] and len(ds.entries) == 18
    assert {e.split for e in ds.entries} == {""}
    assert ds.entries[0].path == "cat/cat0.png"


def test_split_layout_normalises_split_names(tmp_path: Path) -> None:
    for split in ["train", "Validation", "test"]:
        for label in ["ants", "bees"]:
            write_image(tmp_path / split / label / "a b.jpg", seed=hash((split, label)) % 1000, fmt="JPEG")
    ds = scan_dataset(tmp_path, name="hym")
    assert ds.layout == "splits" and ds.name == "hym"
    assert sorted({e.split for e in ds.entries}) == ["test", "train", "val"]
    assert ds.classes == ["ants", "bees"]


def test_nested_folders_take_the_top_class(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "sub" / "deep.png", seed=1)
    write_image(tmp_path / "loose.png", seed=2)
    ds = scan_dataset(tmp_path)
    assert [(e.path, e.label) for e in ds.entries] == [("cat/sub/deep.png", "cat")]
    assert ds.ignored == ("loose.png",)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no images found"),
    (lambda p: write_image(p / "x.png", seed=1), "no class folders"),
])
def test_unusable_folders(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        scan_dataset(tmp_path)


def test_missing_folder() -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        scan_dataset(Path("/nonexistent/data"))


def test_hash_split_is_stable_and_near_the_requested_fraction() -> None:
    shas = [f"{i:064x}" for i in range(4000)]
    splits = [hash_split(s, 0.25, seed=1) for s in shas]
    assert abs(splits.count("test") / len(shas) - 0.25) < 0.03
    assert splits[:100] == [hash_split(s, 0.25, seed=1) for s in shas[:100]]
    assert splits != [hash_split(s, 0.25, seed=2) for s in shas]
