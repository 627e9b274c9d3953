"""Issue 24, dataset names: nothing typed as (or derived as) a dataset name can destroy the cache.
A different folder never takes over a moved dataset's name, and a name that is no HDF5 group name
(a path, dots, control characters, the store's temporary suffix) is refused before the cache is touched."""

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bottleneck_features.cli import app
from bottleneck_features.datasets import check_dataset_name
from bottleneck_features.errors import BottleneckError, DatasetError, ExtractError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.sources import register_model
from bottleneck_features.store import Store
from conftest import write_image
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0)
BAD_NAMES = ["a/b", "../x", "/abs", ".", "..", "...", "", "a\x00b", "a\nb", "tab\there", "a\\b", "x.writing",
             "a~b", "\x7f"]


def one_line_error(result) -> str:  # noqa: ANN001
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def noise_folder(root: Path, seeds: range) -> Path:
    """Two classes, one image per seed, alternating classes."""
    for seed in seeds:
        write_image(root / f"c{seed % 2}" / f"{seed}.png", seed=seed, size=(24, 24))
    return root


def cli_extract(root: Path, cache: Path, *extra: str):  # noqa: ANN201
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    return CliRunner().invoke(app, ["extract", str(root), "--model", "tiny", "--cache", str(cache), "--workers", "0",
                                    "-q", *extra])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# 1. a moved dataset's name ------------------------------------------------------------------------


def test_another_folder_does_not_take_over_a_moved_datasets_name(tmp_path: Path) -> None:
    """projA moves away (its old root is gone); projB/data is another folder, not projA moved."""
    a = noise_folder(tmp_path / "projA" / "data", range(8))
    b = noise_folder(tmp_path / "projB" / "data", range(100, 110))
    cache = tmp_path / "c.h5"
    fp = extract_dataset(a, tiny_backbone(), cache, options=QUIET).fingerprint
    (tmp_path / "projA").rename(tmp_path / "archive")
    message = one_line_error(cli_extract(b, cache))
    assert "'data'" in message and "projA" in message and "--name projB-data" in message, message
    with pytest.raises(ExtractError, match=r"already holds a dataset named 'data'.*--name projB-data"):
        extract_dataset(b, tiny_backbone(), cache, options=QUIET)
    with Store.open(cache) as store:
        assert store.datasets() == ["data"] and store.dataset_root("data") == a
        assert len(store.read_manifest("data")) == 8 and store.count(fp) == 8  # no vectors of projB
    report = extract_dataset(b, tiny_backbone(), cache, name="projB-data", options=QUIET)
    assert report.computed == 10


def test_a_refused_takeover_writes_no_manifest_and_no_vectors(tmp_path: Path) -> None:
    a = noise_folder(tmp_path / "projA" / "data", range(6))
    b = noise_folder(tmp_path / "projB" / "data", range(200, 206))
    cache = tmp_path / "c.h5"
    fp = extract_dataset(a, tiny_backbone(), cache, options=QUIET).fingerprint
    with Store.open(cache) as store:
        manifest, attrs = store.read_manifest("data"), store.dataset_attrs("data")
    (tmp_path / "projA").rename(tmp_path / "gone")
    with pytest.raises(ExtractError):
        extract_dataset(b, tiny_backbone(), cache, options=QUIET)
    with Store.open(cache) as store:
        assert store.read_manifest("data") == manifest and store.dataset_attrs("data")["updated"] == attrs["updated"]
        assert store.count(fp) == 6 and store.extractors() == [fp]


def test_a_moved_folder_with_images_added_and_removed_keeps_its_name(tmp_path: Path) -> None:
    a = noise_folder(tmp_path / "projA" / "data", range(8))
    cache = tmp_path / "c.h5"
    extract_dataset(a, tiny_backbone(), cache, options=QUIET)
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    a.rename(moved)
    for seed in (0, 1, 2):
        (moved / f"c{seed % 2}" / f"{seed}.png").unlink()
    noise_folder(moved, range(50, 54))  # 5 of the 9 images now are the old ones
    report = extract_dataset(moved, tiny_backbone(), cache, options=QUIET)
    assert (report.dataset, report.computed, report.reused) == ("data", 4, 5)
    with Store.open(cache) as store:
        assert store.datasets() == ["data"] and store.dataset_root("data") == moved


def test_a_moved_folder_that_grew_keeps_its_name(tmp_path: Path) -> None:
    """Fewer than half of the new folder's images are old ones, but all the old ones are there."""
    a = noise_folder(tmp_path / "projA" / "data", range(4))
    cache = tmp_path / "c.h5"
    extract_dataset(a, tiny_backbone(), cache, options=QUIET)
    moved = tmp_path / "renamed"
    a.rename(moved)
    noise_folder(moved, range(10, 30))
    assert extract_dataset(moved, tiny_backbone(), cache, name="data", options=QUIET).reused == 4


def test_two_existing_folders_with_one_name_are_still_refused(tmp_path: Path) -> None:
    a = noise_folder(tmp_path / "projA" / "data", range(4))
    b = noise_folder(tmp_path / "projB" / "data", range(4))  # even with the same images
    cache = tmp_path / "c.h5"
    extract_dataset(a, tiny_backbone(), cache, options=QUIET)
    with pytest.raises(ExtractError, match=r"already holds a dataset named 'data', from .*projA.*--name projB-data"):
        extract_dataset(b, tiny_backbone(), cache, options=QUIET)


# 2. names that are no dataset names ----------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_name_is_refused_before_the_cache_is_created(tmp_path: Path, name: str) -> None:
    root, cache = noise_folder(tmp_path / "data", range(4)), tmp_path / "cache" / "c.h5"
    message = one_line_error(cli_extract(root, cache, "--name", name))
    assert "--name" in message and "\x00" not in message
    assert not cache.parent.exists()
    with pytest.raises(DatasetError, match="--name"):
        extract_dataset(root, tiny_backbone(), cache, name=name, options=QUIET)
    assert not cache.parent.exists()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_name_leaves_an_existing_cache_as_it_was(tmp_path: Path, name: str) -> None:
    root, cache = noise_folder(tmp_path / "data", range(4)), tmp_path / "c.h5"
    extract_dataset(root, tiny_backbone(), cache, options=QUIET)
    before = digest(cache)
    one_line_error(cli_extract(root, cache, "--name", name))
    assert digest(cache) == before
    result = CliRunner().invoke(app, ["info", "--cache", str(cache)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("folder", ["...", "x.writing"])
def test_a_folder_whose_name_is_no_dataset_name_needs_name(tmp_path: Path, folder: str) -> None:
    root, cache = noise_folder(tmp_path / folder, range(4)), tmp_path / "c.h5"
    message = one_line_error(cli_extract(root, cache))
    assert folder in message and "--name" in message
    assert not cache.exists()
    assert cli_extract(root, cache, "--name", "ok").exit_code == 0


@pytest.mark.parametrize("name", ["data", "projB-data", "a.b", ".hidden", "x y", "名前", "café_2", "x.writing2"])
def test_good_names_pass(name: str) -> None:
    assert check_dataset_name(name) == name


def test_a_bad_name_error_is_a_user_error_with_a_valid_suggestion() -> None:
    for name in BAD_NAMES:
        with pytest.raises(BottleneckError) as caught:
            check_dataset_name(name)
        message = str(caught.value)
        assert "\n" not in message and "\x00" not in message
        suggestion = message.rsplit("--name ", 1)[1].rstrip(")")
        assert check_dataset_name(suggestion) == suggestion, message
