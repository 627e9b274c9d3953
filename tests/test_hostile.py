"""The hostile-input list of issue 10, one test (or a few) per case, so the list stays fixed:
full disks, damaged vectors, locks through links, transient read errors, link loops and FIFOs,
same-named folders, names that are code, small data, bad arguments, and reruns that grow the file."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import bottleneck_features.decode
import bottleneck_features.store._disk
from bottleneck_features.cli import app
from bottleneck_features.datasets import hash_split
from bottleneck_features.errors import CacheBusyError, DamagedVectorsError, ExtractError
from bottleneck_features.extraction import NOT_FINITE, ExtractOptions, extract_dataset
from bottleneck_features.images import READ_FAILED, ImageError, sha256_file
from bottleneck_features.registry import Backbone
from bottleneck_features.sources import load_backbone, register_model
from bottleneck_features.store import Store, compact_cache, load_features
from bottleneck_features.training import Prediction, fit_head, write_predictions
from conftest import write_image
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0, batch_size=4)


def one_line_error(result) -> str:  # noqa: ANN001
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def noise_folder(root: Path, classes: int = 2, per_class: int = 30, size: tuple[int, int] = (40, 40)) -> Path:
    for c in range(classes):
        for i in range(per_class):
            write_image(root / f"c{c}" / f"{i}.png", seed=1000 * c + i, size=size)
    return root


# 1. full disk ------------------------------------------------------------------------------------


@pytest.mark.every_host
def test_full_disk_stops_with_one_line_and_keeps_what_was_written(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills after two batches: the third is refused before HDF5 writes a byte of it."""
    root, cache = noise_folder(tmp_path / "data"), tmp_path / "cache.h5"
    real, add_vectors = shutil.disk_usage, Store.add_vectors
    batches = []

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN202
        batches.append(1)
        return add_vectors(self, *args, **kwargs)

    def filling(path):  # noqa: ANN001, ANN202 -- 3 MiB free once two batches are in
        usage = real(path)
        return usage._replace(free=usage.free if len(batches) <= 2 else 3 << 20)

    monkeypatch.setattr(Store, "add_vectors", counting)
    monkeypatch.setattr(bottleneck_features.store._disk.shutil, "disk_usage", filling)
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    result = CliRunner().invoke(app, ["extract", str(root), "--model", "tiny", "--cache", str(cache), "--workers", "0",
                                      "--batch-size", "8", "-q"])
    message = one_line_error(result)
    assert "the disk is full" in message and str(cache) in message and "everything computed so far is kept" in message
    monkeypatch.setattr(bottleneck_features.store._disk.shutil, "disk_usage", real)
    with Store.open(cache) as store:
        statuses = [r.status for r in store.read_manifest("data")]
        fp = store.dataset_extractors("data")[0]
        assert statuses.count("ok") == store.count(fp) == 16 and not store.damaged(fp)
    report = extract_dataset(root, tiny_backbone(), cache, options=QUIET)
    assert (report.computed, report.reused) == (60 - 16, 16)


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    # Some sandboxes (gVisor, as on the GPU machines) mount a tmpfs but never fill it: the tests need a
    # disk that says ENOSPC at its size.
    probe = path / "probe"
    try:
        with open(probe, "wb") as handle:
            for _ in range(int(size.rstrip("m")) + 1):
                handle.write(bytes(1 << 20))
    except OSError:
        probe.unlink()
        return
    subprocess.run(["umount", str(path)], check=False)
    pytest.skip(f"this kernel's tmpfs takes more than its size={size}: no full disk to test on")


@pytest.mark.every_host
def test_full_tmpfs_never_serves_unwritten_vectors(tmp_path: Path) -> None:
    """A real full disk: raw64 vectors (48 KiB each) into a 9 MiB tmpfs. The run stops with one line
    (no segfault), the cache opens, and every vector it serves is one that was computed."""
    root, disk = noise_folder(tmp_path / "data", per_class=60), tmp_path / "disk"
    _tmpfs(disk, "9m")
    try:
        cache = disk / "cache.h5"
        run = subprocess.run([sys.executable, "-m", "bottleneck_features", "extract", str(root), "--model", "raw64",
                              "--cache", str(cache), "-q"], capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 1 and "the disk is full" in run.stderr, run.stderr[-2000:]
        with Store.open(cache) as store:
            fp = store.dataset_extractors("data")[0]
        features = load_features(cache, "data", fp)
        expected = load_backbone("raw64")
        assert 0 < len(features.paths) < 120 and np.isfinite(features.X).all()
        first = root / features.paths[0]
        from bottleneck_features.decode import normalize, resize_crop
        from bottleneck_features.images import decode_rgb

        pixels = resize_crop(decode_rgb(first.read_bytes(), draft_to=64), expected.preprocess)[None]
        np.testing.assert_allclose(features.X[0], expected.model(normalize(pixels, expected.preprocess))[0].numpy(),
                                   atol=1e-6)
        moved = tmp_path / "cache.h5"
        shutil.copy(cache, moved)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    report = extract_dataset(root, load_backbone("raw64"), moved, options=QUIET)
    assert report.computed == 120 - len(features.paths) and report.reused == len(features.paths)


# 2. integrity ------------------------------------------------------------------------------------


def _corrupt_chunk(cache: Path, fp: str, chunk: int) -> None:
    with h5py.File(cache, "r") as f:
        info = f[f"extractors/{fp}/vectors"].id.get_chunk_info(chunk)
    with open(cache, "r+b") as handle:
        handle.seek(info.byte_offset + 64)
        handle.write(np.random.default_rng(0).bytes(min(4096, info.size - 64)))


def test_damaged_vectors_are_named_found_and_computed_again(tmp_path: Path) -> None:
    """raw128 rows are 192 KiB: 5 to a chunk. One damaged chunk costs those 5 images, not the cache."""
    root, cache = noise_folder(tmp_path / "data", per_class=9), tmp_path / "cache.h5"
    raw = load_backbone("raw128")
    first = extract_dataset(root, raw, cache, options=QUIET)
    _corrupt_chunk(cache, first.fingerprint, 1)
    with pytest.raises(DamagedVectorsError, match=r"the vectors of 5 images of 'data' are damaged \(c[01]/") as info:
        fit_head(cache, head="knn")
    assert "\n" not in str(info.value) and "bottleneck extract" in str(info.value)
    again = extract_dataset(root, raw, cache, options=QUIET)
    assert (again.repaired, again.computed, again.reused) == (5, 5, 13)
    assert fit_head(cache, head="knn").sidecar["sizes"]["train"] > 0

    _corrupt_chunk(cache, first.fingerprint, 2)
    result = CliRunner().invoke(app, ["info", "--verify", "--cache", str(cache)])
    assert result.exit_code == 1 and "5 damaged (data/c" in result.output
    assert extract_dataset(root, raw, cache, options=QUIET).computed == 5
    assert CliRunner().invoke(app, ["info", "--verify", "--cache", str(cache)]).exit_code == 0


class NaNForFirstRow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.mean(dim=(2, 3))
        out[0] = float("nan")
        return out


def test_nan_vectors_are_never_stored(image_folder: Path, tmp_path: Path) -> None:
    backbone = Backbone(NaNForFirstRow(), tiny_backbone().spec.replace(model="nanny", feature_dim=3))
    report = extract_dataset(image_folder, backbone, tmp_path / "c.h5", options=QUIET)
    nan_skips = [path for path, reason in report.skipped if reason == NOT_FINITE]
    assert len(nan_skips) == 5 and report.computed == 13  # the first of each batch of 4
    features = load_features(tmp_path / "c.h5", "data", report.fingerprint)
    assert np.isfinite(features.X).all() and len(features.paths) == 13


# 3. one writer, whatever the path -----------------------------------------------------------------


def test_the_lock_belongs_to_the_file_not_the_path(image_folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache, link = tmp_path / "cache.h5", tmp_path / "link.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    link.symlink_to(cache)
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")  # as on NFS and clusters: only our lock is left
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from bottleneck_features.store import Store\n"
        f"with Store.open({str(cache)!r}, writable=True):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for writable in (True, False):
            with pytest.raises(CacheBusyError, match=f"in use by bottleneck pid {holder.pid}"), \
                    Store.open(link, writable=writable):
                pass
        with pytest.raises(CacheBusyError):
            extract_dataset(image_folder, tiny_backbone(), Path(os.path.relpath(cache)), options=QUIET)
    finally:
        holder.kill()
        holder.wait()
    assert extract_dataset(image_folder, tiny_backbone(), link, options=QUIET).computed == 0


# 4. transient read errors are not remembered --------------------------------------------------------


def test_a_read_error_is_tried_again_next_run(image_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache, victim = tmp_path / "c.h5", str(image_folder / "cat" / "cat1.jpg")
    real = bottleneck_features.decode.read

    def vanished(address: str) -> bytes:  # deleted between hashing and decoding
        if address == victim:
            raise ImageError(f"{READ_FAILED} (No such file or directory)")
        return real(address)

    monkeypatch.setattr(bottleneck_features.decode, "read", vanished)
    report = extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    assert [reason for _, reason in report.skipped] == [f"{READ_FAILED} (No such file or directory)"]
    monkeypatch.setattr(bottleneck_features.decode, "read", real)
    again = extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    assert (again.computed, again.skipped) == (1, [])


# 5. link loops and special files ------------------------------------------------------------------


def test_a_directory_link_loop_is_walked_once(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "cat" / "loop").symlink_to(image_folder)
    report = extract_dataset(image_folder, tiny_backbone(), tmp_path / "c.h5", options=QUIET)
    assert report.found == 18


def test_a_fifo_named_jpg_is_skipped_not_waited_on(image_folder: Path, tmp_path: Path) -> None:
    os.mkfifo(image_folder / "cat" / "pipe.jpg")
    signal.alarm(60)  # a regression would block on opening the FIFO
    try:
        report = extract_dataset(image_folder, tiny_backbone(), tmp_path / "c.h5", options=QUIET)
    finally:
        signal.alarm(0)
    assert report.skipped == [("cat/pipe.jpg", "not a regular file (a pipe, device or socket); skipped")]


# 6. same-named folders ---------------------------------------------------------------------------


def test_two_folders_named_alike_do_not_replace_each_other(tmp_path: Path) -> None:
    a, b = noise_folder(tmp_path / "projA" / "data", per_class=2), noise_folder(tmp_path / "projB" / "data", per_class=3)
    cache = tmp_path / "c.h5"
    extract_dataset(a, tiny_backbone(), cache, options=QUIET)
    with pytest.raises(ExtractError, match=r"already holds a dataset named 'data', from .*projA.*--name projB-data"):
        extract_dataset(b, tiny_backbone(), cache, options=QUIET)
    extract_dataset(b, tiny_backbone(), cache, name="projB-data", options=QUIET)
    with Store.open(cache) as store:
        assert store.datasets() == ["data", "projB-data"] and len(store.read_manifest("data")) == 4
    moved = tmp_path / "projA" / "renamed"
    a.rename(moved)  # a folder that moved keeps its dataset
    assert extract_dataset(moved, tiny_backbone(), cache, name="data", options=QUIET).computed == 0


# 7. names that are code ----------------------------------------------------------------------------


def test_class_names_are_text_everywhere(tmp_path: Path) -> None:
    root, cache = tmp_path / "data", tmp_path / "c.h5"
    for c, label in enumerate(["$\\frac{$", "<i>it", "[bold]x", "=cmd"]):
        for i in range(5):
            write_image(root / label / f"{i}.png", seed=100 * c + i)
    extract_dataset(root, load_backbone("raw8"), cache, options=QUIET)
    runner = CliRunner()
    fitted = runner.invoke(app, ["fit", "--head", "knn", "--cache", str(cache)])
    assert fitted.exit_code == 0 and "[bold]x" in fitted.output
    compared = runner.invoke(app, ["compare", "--cache", str(cache), "--models", "raw8", "--heads", "knn", "--per-class", "9", "--cap",
                                   "--repeats", "1", "--pixels", "8", "--out", str(tmp_path / "r"), "-q"])
    assert compared.exit_code == 0, compared.output
    md = (tmp_path / "r" / "results.md").read_text()
    assert "&lt;i&gt;it" in md and "<i>" not in md
    assert (tmp_path / "r" / "confusion.png").stat().st_size > 0 and (tmp_path / "r" / "report.html").is_file()
    rows = write_predictions([Prediction("=A1/x.png", ["=cmd", "+1"], [0.6, 0.4])], "csv", top_k=2).splitlines()
    assert rows[1].startswith("'=A1/x.png,'=cmd,0.600000,'=cmd,0.600000,'+1,")


# 8. small data -------------------------------------------------------------------------------------


def _all_train(label_dir: Path, count: int, seed: int) -> None:
    """`count` images whose content hash puts them all in train (at test_size 0.25)."""
    made = 0
    while made < count:
        path = write_image(label_dir / f"{made}.png", seed=seed)
        seed += 1
        if hash_split(sha256_file(path), 0.25, 0) == "train":
            made += 1


def test_a_class_without_test_images_is_reported_not_a_traceback(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = tmp_path / "data", tmp_path / "c.h5"
    _all_train(root / "lonely", 6, seed=0)
    for c in range(3):
        for i in range(6):
            write_image(root / f"c{c}" / f"{i}.png", seed=500 + 10 * c + i)
    extract_dataset(root, tiny_backbone(), cache, options=QUIET)
    result = fit_head(cache, head="knn")
    assert result.sidecar["metrics"]["per_class"]["lonely"]["support"] == 0
    assert re.search(r"no test images for .*lonely", result.report)

    def crash(path: Path) -> str:
        raise OSError("disk gone while writing the sidecar")

    monkeypatch.setattr("bottleneck_features.training.sha256_file", crash)
    out = tmp_path / "heads" / "new.joblib"
    with pytest.raises(OSError):
        fit_head(cache, head="knn", out=out)
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith("new")]


# 9. arguments are checked before any work -----------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["extract", "DATA", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["extract", "DATA", "--threads", "0"], "--threads 0: must be at least 1"),
    (["extract", "DATA", "--workers", "-1"], "--workers -1: must be at least 0"),
    (["extract", "DATA", "--device", "tpu"], "--device tpu: use one of"),
    (["fit", "--test-size", "1.5"], "--test-size 1.5: give a fraction"),
    (["compare", "--cv", "0"], "--cv 0: K-fold needs at least 2 folds"),
    (["compare", "--jobs", "0"], "--jobs 0:"),
    (["predict", "DATA", "--head", "h.joblib", "--top-k", "0"], "--top-k 0: must be at least 1"),
    (["predict", "DATA", "--head", "h.joblib", "--format", "xml"], "--format xml: use csv or json"),
])
def test_bad_arguments_fail_before_any_work(image_folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    cache = tmp_path / "c.h5"
    if args[0] in ("fit", "compare"):
        extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    before = cache.stat().st_mtime_ns if cache.exists() else None
    args = [str(image_folder) if a == "DATA" else a for a in args]
    result = CliRunner().invoke(app, [*args, "--cache", str(cache)])
    assert message in one_line_error(result)
    assert (cache.stat().st_mtime_ns if cache.exists() else None) == before


def test_per_class_abc_and_a_sidecar_that_is_not_json(image_folder: Path, tmp_path: Path) -> None:
    runner, cache = CliRunner(), tmp_path / "c.h5"
    assert runner.invoke(app, ["compare", "--per-class", "abc", "--cache", str(cache)]).exit_code == 2
    extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    head = fit_head(cache, head="knn").head_path
    head.with_suffix(".json").write_text("{not json")
    message = one_line_error(runner.invoke(app, ["predict", str(image_folder), "--head", str(head), "--cache",
                                                 str(cache), "-q"]))
    assert str(head.with_suffix(".json")) in message and "not a JSON sidecar" in message


def test_predict_fails_when_every_input_is_skipped(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    head = fit_head(cache, head="knn").head_path
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not an image")
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    result = CliRunner().invoke(app, ["predict", str(broken), "--head", str(head), "--cache", str(cache), "-q"])
    assert result.exit_code == 1 and "none of the 1 inputs could be used" in result.output


# 10. reruns that compute nothing write nothing -------------------------------------------------------


def test_a_noop_rerun_does_not_grow_the_file_and_compact_shrinks_it(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    sizes = []
    for _ in range(3):
        extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
        sizes.append(cache.stat().st_size)
    assert sizes[0] == sizes[1] == sizes[2]
    for i in range(5):  # new images rewrite the manifest and the path index, leaving free space behind
        write_image(image_folder / "owl" / f"new{i}.png", seed=900 + i)
        extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    before_X = load_features(cache, "data", extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET).fingerprint).X
    before, after = compact_cache(cache)
    assert after < before
    again = extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    assert again.computed == 0
    np.testing.assert_array_equal(load_features(cache, "data", again.fingerprint).X, before_X)


# 11. issue 24: damage anywhere, a truncated file, disk space that comes and goes ---------------------


def _raw32_cache(tmp_path: Path, name: str = "cache.h5") -> tuple[Path, Path, str]:
    """200 images as raw32 (3,072-d, 85 rows a chunk: two full chunks and a partly filled third)."""
    root, cache = noise_folder(tmp_path / "data", classes=4, per_class=50), tmp_path / name
    report = extract_dataset(root, load_backbone("raw32"), cache, options=QUIET)
    return root, cache, report.fingerprint


def _cli(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, list(args))


def test_damage_in_the_last_partly_filled_chunk_is_computed_again(tmp_path: Path) -> None:
    """Appending reads the last chunk first: left in place, its damage failed every later extract."""
    root, cache, fp = _raw32_cache(tmp_path)
    _corrupt_chunk(cache, fp, 2)
    assert "30 damaged" in _cli("info", "--verify", "--cache", str(cache)).output
    again = extract_dataset(root, load_backbone("raw32"), cache, options=QUIET)
    assert (again.computed, again.reused) == (30, 170)
    verified = _cli("info", "--verify", "--cache", str(cache))
    assert verified.exit_code == 0 and "200 vectors checked, 0 damaged" in verified.output
    assert len(load_features(cache, "data", fp).paths) == 200


def test_a_truncated_cache_is_damaged_not_busy_and_repair_keeps_what_is_before_the_cut(tmp_path: Path) -> None:
    root, cache, fp = _raw32_cache(tmp_path)
    os.truncate(cache, cache.stat().st_size * 3 // 5)
    for args in (["info"], ["fit", "--head", "knn"], ["extract", str(root), "--model", "raw32"]):
        message = one_line_error(_cli(*args, "--cache", str(cache)))
        assert "not a readable HDF5 cache" in message and f"bottleneck repair --cache {cache}" in message
        assert "in use" not in message
    repaired = _cli("repair", "--cache", str(cache))
    assert repaired.exit_code == 0 and len(repaired.output.strip().splitlines()) == 1, repaired.output
    kept = int(re.search(r"kept (\d+) vectors", repaired.output).group(1))
    assert 0 < kept < 200 and (tmp_path / "cache.h5.damaged").is_file()
    again = extract_dataset(root, load_backbone("raw32"), cache, options=QUIET)
    assert (again.computed, again.reused) == (200 - kept, kept)


def _scribble(cache: Path, offset: int, size: int = 4096) -> None:
    with open(cache, "r+b") as handle:
        handle.seek(offset)
        handle.write(np.random.default_rng(offset).bytes(size))


@pytest.mark.parametrize("group", ["extractors", "extractors/{fp}", "datasets"])
def test_a_damaged_group_is_one_line_and_repair_recovers_every_vector_below_it(tmp_path: Path, group: str) -> None:
    """Noise over a group's own header: info, fit and extract say one line naming `bottleneck
    repair`, which finds the datasets below the group by address and keeps all 200 vectors."""
    root, cache, fp = _raw32_cache(tmp_path)
    with h5py.File(cache, "r") as f:
        address = h5py.h5o.get_info(f[group.format(fp=fp)].id).addr
    _scribble(cache, address, 64)
    for args in (["info", "--verify"], ["fit", "--head", "knn"], ["extract", str(root), "--model", "raw32"]):
        message = one_line_error(_cli(*args, "--cache", str(cache)))
        assert "damaged" in message and f"bottleneck repair --cache {cache}" in message
    repaired = _cli("repair", "--cache", str(cache))
    assert repaired.exit_code == 0 and "kept 200 vectors of 1 extractions and 1 datasets" in repaired.output
    again = extract_dataset(root, load_backbone("raw32"), cache, options=QUIET)
    assert (again.computed, again.reused) == (0, 200)
    assert _cli("fit", "--head", "knn", "--cache", str(cache), "--out", str(tmp_path / "h.joblib")).exit_code == 0


@pytest.mark.parametrize("offset", [4096, 12000])
def test_noise_over_the_files_first_blocks_is_one_line_and_repair_keeps_what_is_readable(tmp_path: Path,
                                                                                       offset: int) -> None:
    """4 KiB of noise where HDF5 keeps its own structures (which ones depends on the file's layout):
    every command ends in a result or one line, and after `repair` extract computes exactly the
    vectors that were lost."""
    root, cache, fp = _raw32_cache(tmp_path)
    _scribble(cache, offset)
    for args in (["info", "--verify"], ["fit", "--head", "knn"]):
        result = _cli(*args, "--cache", str(cache))
        if result.exit_code:
            assert "bottleneck repair" in one_line_error(result) or "damaged" in result.output
    repaired = _cli("repair", "--cache", str(cache))
    assert repaired.exit_code == 0 and len(repaired.output.strip().splitlines()) == 1, repaired.output
    kept = int(re.search(r"kept (\d+) vectors", repaired.output).group(1))
    again = extract_dataset(root, load_backbone("raw32"), cache, options=QUIET)
    assert (again.computed, again.reused) == (200 - kept, kept)
    assert _cli("info", "--verify", "--cache", str(cache)).exit_code == 0


def test_repair_of_a_file_hdf5_cannot_open_at_all_is_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    cache.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    message = one_line_error(_cli("repair", "--cache", str(cache)))
    assert "nothing to salvage" in message and cache.read_bytes().startswith(b"\x89HDF")


_SPACE_TAKEN_AFTER_THE_CHECK = """
import shutil, sys
import bottleneck_features.store as store
from bottleneck_features.cli import app
disk, real, add_vectors, batches = sys.argv[1], shutil.disk_usage, store.Store.add_vectors, []
store._disk.shutil.disk_usage = lambda path: real(path)._replace(free=1 << 40)  # the check sees room...


def taking(self, *args, **kwargs):  # ...which another process takes before HDF5 writes the third batch
    batches.append(1)
    if len(batches) == 3:
        with open(disk + "/filler", "wb") as filler:
            try:
                while True:
                    filler.write(bytes(1 << 16))
                    filler.flush()
            except OSError:
                pass
    return add_vectors(self, *args, **kwargs)


store.Store.add_vectors = taking
app(sys.argv[2:])
"""


@pytest.mark.parametrize("freed", [False, True])
def test_disk_space_taken_between_the_check_and_the_write_never_breaks_the_cache(tmp_path: Path,
                                                                                 freed: bool) -> None:
    """Another process takes the disk after extract checked for room: the write, not just the
    check, is refused (the room is held first), so the run ends in one line (no segfault), and
    the cache opens and serves only vectors of images it calls ok, at once or once space is freed."""
    root, disk = noise_folder(tmp_path / "data", per_class=60), tmp_path / "disk"
    _tmpfs(disk, "12m")
    try:
        cache = disk / "cache.h5"
        run = subprocess.run([sys.executable, "-c", _SPACE_TAKEN_AFTER_THE_CHECK, str(disk), "extract", str(root),
                              "--model", "raw64", "--cache", str(cache), "--batch-size", "8", "-q", "--workers", "0"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr[-3000:]
        assert "the disk is full" in run.stderr
        if freed:
            (disk / "filler").unlink()
        assert _cli("info", "--cache", str(cache)).exit_code == 0
        with Store.open(cache) as store:
            fp = store.dataset_extractors("data")[0]
            ok = [r for r in store.read_manifest("data") if r.status == "ok"]
        features = load_features(cache, "data", fp)
        assert 16 <= len(features.paths) == len(ok) < 120 and np.isfinite(features.X).all()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_compact_of_a_missing_cache_creates_nothing(tmp_path: Path) -> None:
    message = one_line_error(_cli("compact", "--cache", str(tmp_path / "missing.h5")))
    assert "no cache here" in message and not (tmp_path / "missing.h5").exists()


def test_the_disk_full_line_never_says_it_needs_what_it_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bottleneck_features.errors import DiskFullError
    from bottleneck_features.store import check_room

    real = shutil.disk_usage
    monkeypatch.setattr(bottleneck_features.store._disk.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=(6 << 20) + (500 << 10)))
    with pytest.raises(DiskFullError) as info:
        check_room(tmp_path / "c.h5", (2 << 20) + (600 << 10))
    free, needed = re.search(r"\((.+) free; the next write needs (.+)\)", str(info.value)).groups()
    assert free != needed, str(info.value)
