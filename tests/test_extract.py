import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bottleneck_features import decode
from bottleneck_features.extraction import ExtractError, ExtractOptions, extract_dataset, extract_files
from bottleneck_features.images import find_images
from bottleneck_features.store import Store, load_features
from conftest import write_image
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0, batch_size=4)


def _run(root: Path, cache: Path, backbone=None, **kw):
    backbone = backbone or tiny_backbone()
    report = extract_dataset(root, backbone, cache, options=kw.pop("options", QUIET), **kw)
    return report, backbone.model.images_seen


def test_first_run_computes_all_rerun_computes_nothing(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    report, seen = _run(image_folder, cache)
    assert (report.found, report.computed, report.reused, seen) == (18, 18, 0, 18)
    report, seen = _run(image_folder, cache)
    assert (report.found, report.computed, report.reused, seen) == (18, 0, 18, 0)
    feats = load_features(cache, "data", report.fingerprint)
    assert feats.X.shape == (18, 8) and sorted(set(feats.labels)) == ["cat", "dog", "owl"]


def test_new_edited_moved_and_deleted_files(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    _run(image_folder, cache)
    for i in range(10):
        write_image(image_folder / "dog" / f"new{i}.jpg", seed=1000 + i, fmt="JPEG")
    report, seen = _run(image_folder, cache)
    assert (report.computed, seen, report.found) == (10, 10, 28)

    write_image(image_folder / "cat" / "cat1.jpg", seed=555, fmt="JPEG")  # edited in place
    (image_folder / "owl" / "owl2.jpg").rename(image_folder / "owl" / "renamed.jpg")
    (image_folder / "dog" / "dog1.jpg").unlink()
    report, seen = _run(image_folder, cache)
    assert (report.computed, seen, report.found) == (1, 1, 27)
    with Store.open(cache) as st:
        paths = {r.path for r in st.read_manifest("data")}
    assert "owl/renamed.jpg" in paths and "dog/dog1.jpg" not in paths and "owl/owl2.jpg" not in paths


def test_datasets_sharing_images_share_embeddings(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    _run(image_folder, cache)
    copy = tmp_path / "copy"
    shutil.copytree(image_folder / "cat", copy / "kitten")
    report, seen = _run(copy, cache)
    assert (report.computed, seen, report.reused) == (0, 0, 6)
    with Store.open(cache) as st:
        assert st.datasets() == ["copy", "data"]


def test_different_extractor_never_returns_stale_vectors(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    first, _ = _run(image_folder, cache)
    second, seen = _run(image_folder, cache, tiny_backbone().using(pool="max"))
    assert second.fingerprint != first.fingerprint and seen == 18
    f16, seen = _run(image_folder, cache, tiny_backbone().using(dtype="float16"))
    assert f16.fingerprint != first.fingerprint and seen == 18


@pytest.mark.parametrize("workers", [0, 2])
def test_broken_files_are_skipped_and_reported(image_folder: Path, tmp_path: Path, workers: int) -> None:
    cache = tmp_path / "cache.h5"
    (image_folder / "cat" / "empty.jpg").write_bytes(b"")
    (image_folder / "dog" / "text.png").write_text("hello, not a picture")
    good = (image_folder / "owl" / "owl1.jpg").read_bytes()
    (image_folder / "owl" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    report, seen = _run(image_folder, cache, options=ExtractOptions(workers=workers, batch_size=4))
    reasons = dict(report.skipped)
    assert set(reasons) == {"cat/empty.jpg", "dog/text.png", "owl/truncated.jpg"}
    assert "empty" in reasons["cat/empty.jpg"] and "not an image" in reasons["dog/text.png"]
    assert (report.computed, seen) == (18, 18)
    report, seen = _run(image_folder, cache)  # known-bad content is not decoded again
    assert (len(report.skipped), report.computed, seen) == (3, 0, 0)


def test_no_usable_image_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(ExtractError, match="none of the 1 images could be used"):
        _run(tmp_path, tmp_path / "c.h5")


def test_workers_give_the_same_vectors(image_folder: Path, tmp_path: Path) -> None:
    a, _ = _run(image_folder, tmp_path / "a.h5")
    b, _ = _run(image_folder, tmp_path / "b.h5", options=ExtractOptions(workers=2, batch_size=4))
    fa, fb = load_features(tmp_path / "a.h5", "data", a.fingerprint), load_features(tmp_path / "b.h5", "data", b.fingerprint)
    np.testing.assert_allclose(fa.X, fb.X, rtol=1e-6)


def test_gpu_loader_and_cpu_decode_threads_give_the_same_batches(image_folder: Path) -> None:
    """The DataLoader processes that feed a GPU and the threads that take turns with a CPU model."""
    (image_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    todo = [(str(i), str(p)) for i, p in enumerate(find_images(image_folder))]
    dataset = decode.DecodeDataset(todo, tiny_backbone().preprocess)
    processes = list(decode.loader_batches(dataset, decode.collate, 4, 2, torch.device("cpu")))
    for threads in (0, 2):
        batches = list(decode.alternating_batches(dataset, 4, threads))
        assert len(batches) == len(processes) == 5
        for (i, x, bad), (j, y, worse) in zip(batches, processes, strict=True):
            assert i == j and bad == worse and torch.equal(x, y)
            assert x.is_contiguous(memory_format=torch.channels_last)


def test_extract_files_for_prediction(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    _run(image_folder, cache)
    backbone = tiny_backbone()
    new = write_image(tmp_path / "new.png", seed=4242)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"junk")
    files = [image_folder / "cat" / "cat0.png", new, junk]
    result = extract_files(files, backbone, cache, QUIET)
    assert result.computed == 1 and backbone.model.images_seen == 1
    assert set(result.shas) == {str(files[0]), str(new)}
    assert [p for p, _ in result.skipped] == [str(junk)]


_KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from tiny_backbone import tiny_backbone
backbone = tiny_backbone(delay={delay}, log=Path({log!r}))
extract_dataset(Path({root!r}), backbone, Path({cache!r}), options=ExtractOptions(workers=0, batch_size=2))
"""


def _start_slow_run(script: str, tmp_path: Path, **popen) -> tuple[subprocess.Popen, Path, Path, Path]:
    """Run `script` on 40 JPEGs with a slow tiny model in a subprocess; return once it has seen 12 images."""
    root = tmp_path / "data"
    for i in range(40):
        write_image(root / ("a" if i % 2 else "b") / f"{i}.jpg", seed=i, fmt="JPEG")
    cache, log = tmp_path / "interrupted.h5", tmp_path / "seen.txt"
    script = script.format(tests=str(Path(__file__).parent), delay=0.15, log=str(log), root=str(root), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", script], **popen)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or int(log.read_text() or 0) < 12):
        time.sleep(0.02)
    return proc, root, cache, log


def _saved(cache: Path) -> tuple[str, int]:
    with Store.open(cache) as st:
        fp = st.extractors()[0]
        return fp, st.count(fp)


def test_sigkill_mid_run_loses_nothing_written(tmp_path: Path) -> None:
    proc, root, cache, _ = _start_slow_run(_KILL_SCRIPT, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fp, saved = _saved(cache)
    assert 8 <= saved < 40
    report, seen = _run(root, cache)
    assert report.fingerprint == fp and (report.computed, seen) == (40 - saved, 40 - saved)
    clean, _ = _run(root, tmp_path / "clean.h5")
    resumed = load_features(cache, "data", fp)
    fresh = load_features(tmp_path / "clean.h5", "data", clean.fingerprint)
    assert resumed.paths == fresh.paths
    np.testing.assert_allclose(resumed.X, fresh.X, rtol=1e-6)


_CTRL_C_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from tiny_backbone import tiny_backbone
from bottleneck_features.sources import register_model
from bottleneck_features.cli import app
register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone(delay={delay}, log=Path({log!r})))
sys.argv = ["bottleneck", "extract", {root!r}, "--model", "tiny", "--cache", {cache!r}, "-q", "--workers", "2",
            "--batch-size", "2"]
app()
"""


@pytest.mark.every_host
def test_ctrl_c_exits_130_and_keeps_what_was_computed(tmp_path: Path) -> None:
    proc, root, cache, log = _start_slow_run(_CTRL_C_SCRIPT, tmp_path, stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted: everything computed so far is saved" in err
    fp, saved = _saved(cache)
    # Every batch the model finished is saved; only one cut off mid-forward (2 images) can be lost.
    assert 10 <= int(log.read_text()) - 2 <= saved < 40
    report, seen = _run(root, cache)
    assert report.fingerprint == fp and (report.computed, seen) == (40 - saved, 40 - saved)
