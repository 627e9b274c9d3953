import multiprocessing as mp
from pathlib import Path

import h5py
import numpy as np
import pytest

from bottleneck_features.errors import CacheBusyError, StoreError
from bottleneck_features.spec import ExtractorSpec, Preprocess
from bottleneck_features.store import ManifestRow, Store, load_features

PRE = Preprocess(32, 36, "bilinear", (0.5,) * 3, (0.5,) * 3)


def spec(dim: int = 4, **changes) -> ExtractorSpec:
    return ExtractorSpec("tiny", "random", PRE, dim, precision="fp32").replace(**changes)


def _sha(i: int) -> str:
    return f"{i:064x}"


def test_fingerprint_changes_with_anything_that_changes_vectors() -> None:
    fp = spec().fingerprint()
    assert fp.startswith("tiny-") and fp == spec().fingerprint() == spec(weights_file="/elsewhere").fingerprint()
    for key, value in [("pool", "max"), ("layer", "layer3"), ("weights", "sha256:ab"), ("precision", "bf16"),
                       ("dtype", "float16"), ("decode", "torchvision"), ("feature_dim", 5)]:
        assert spec(**{key: value}).fingerprint() != fp


def test_vectors_round_trip_in_requested_order(tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    fp = spec().fingerprint()
    vectors = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with Store.open(cache, writable=True) as st:
        st.ensure_extractor(fp, spec())
        st.add_vectors(fp, [_sha(i) for i in range(6)], vectors[:6])
        st.add_vectors(fp, [_sha(i) for i in range(4, 10)], vectors[4:])  # 4, 5 already there
        assert st.count(fp) == 10
    with Store.open(cache) as st:
        order = [9, 0, 5, 5, 2]
        np.testing.assert_array_equal(st.get_vectors(fp, [_sha(i) for i in order]), vectors[order])
        assert st.extractor_attrs(fp)["model"] == "tiny" and st.extractor_spec(fp) == spec()
        with pytest.raises(StoreError, match="no vectors"):
            st.get_vectors(fp, [_sha(99)])


def test_float16_storage(tmp_path: Path) -> None:
    fp = spec(3, dtype="float16").fingerprint()
    with Store.open(tmp_path / "c.h5", writable=True) as st:
        st.ensure_extractor(fp, spec(3, dtype="float16"))
        st.add_vectors(fp, [_sha(1)], np.array([[0.1, 0.2, 0.3]], np.float32))
        out = st.get_vectors(fp, [_sha(1)])
    assert out.dtype == np.float32 and np.allclose(out, [[0.1, 0.2, 0.3]], atol=1e-3)
    with h5py.File(tmp_path / "c.h5") as f:
        assert f[f"extractors/{fp}/vectors"].dtype == np.float16


def test_manifest_and_load_features(tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    fp = spec(2).fingerprint()
    rows = [ManifestRow("a/1.jpg", "a", "", _sha(1), "ok"), ManifestRow("b/2.jpg", "b", "", _sha(2), "ok"),
            ManifestRow("b/bad.jpg", "b", "", _sha(3), "not an image Pillow can read")]
    with Store.open(cache, writable=True) as st:
        st.ensure_extractor(fp, spec(2))
        st.add_vectors(fp, [_sha(1), _sha(2)], np.eye(2, dtype=np.float32))
        st.write_manifest("toy", tmp_path, "classes", rows, fp)
        st.write_manifest("toy", tmp_path, "classes", rows, fp)  # rewriting replaces
        assert st.read_manifest("toy") == rows
        assert st.last_run() == ("toy", fp) and st.dataset_extractors("toy") == [fp]
        st.write_manifest("pixels", tmp_path, "classes", rows, "raw8-x", remember=False)
        st.write_manifest("toy", tmp_path, "classes", rows, "raw8-x", remember=False)
        assert st.last_run() == ("toy", fp) and st.dataset_attrs("toy")["last_extractor"] == fp
    feats = load_features(cache, "toy", fp)
    assert feats.paths == ["a/1.jpg", "b/2.jpg"] and feats.labels.tolist() == ["a", "b"]
    np.testing.assert_array_equal(feats.X, np.eye(2))
    with Store.open(cache) as st, pytest.raises(StoreError, match="no dataset named 'other'"):
        st.read_manifest("other")


def test_path_index_round_trip(tmp_path: Path) -> None:
    index = {"/x/a.jpg": (10, 123, _sha(1)), "/x/b c.jpg": (20, 456, _sha(2))}
    with Store.open(tmp_path / "c.h5", writable=True) as st:
        st.write_path_index(index)
        st.write_path_index(index)
        assert st.read_path_index() == index


def test_missing_cache_and_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no cache here yet"), Store.open(tmp_path / "none.h5"):
        pass
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="not a bottleneck cache"), Store.open(tmp_path / "other.h5", writable=True):
        pass
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(StoreError, match="not a readable HDF5 cache"), Store.open(tmp_path / "junk.h5"):
        pass


def _hold_lock(cache: str, ready, release) -> None:
    with Store.open(Path(cache), writable=True):
        ready.set()
        release.wait(10)


def test_second_writer_fails_with_clear_message(tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(cache), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(CacheBusyError, match=f"in use by bottleneck pid {holder.pid}"), \
                Store.open(cache, writable=True):
            pass
    finally:
        release.set()
        holder.join(10)
    with Store.open(cache, writable=True):
        pass
