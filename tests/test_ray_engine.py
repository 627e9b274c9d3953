"""extract --engine ray: Ray Data fills the same cache as the local engine (a local Ray instance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bottleneck_features.errors import ExtractError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.store import Store, load_features
from conftest import write_image
from tiny_backbone import tiny_backbone

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    # the workers import tiny_backbone, as the driver does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": TESTS}})
    yield
    ray.shutdown()


def _images(root: Path, count: int) -> Path:
    for i in range(count):
        write_image(root / ("a" if i % 2 else "b") / f"{i}.jpg", seed=i, fmt="JPEG")
    return root


@pytest.mark.every_host
def test_ray_fills_the_cache_as_the_local_engine_does(ray_instance: None, tmp_path: Path, host: str) -> None:
    root = _images(tmp_path / "data", 12)
    (root / "a" / "broken.jpg").write_bytes(b"<b>not a jpeg</b>")
    ray_run = extract_dataset(root, tiny_backbone(), tmp_path / "ray.h5",
                              options=ExtractOptions(engine="ray", actors=2, batch_size=4))
    local = extract_dataset(root, tiny_backbone(), tmp_path / "local.h5", options=ExtractOptions(workers=0))
    assert (ray_run.fingerprint, ray_run.computed, ray_run.skipped) == (local.fingerprint, 12, local.skipped)
    assert ray_run.skipped == [("a/broken.jpg", local.skipped[0][1])]
    precision = {"no-bf16": "fp32", "bf16": "bf16"}[host]  # the node said what it computes natively
    assert ray_run.precision.startswith(f"{precision}, auto: the Ray node: this CPU ")
    on_ray, here = (load_features(tmp_path / f"{n}.h5", "data", local.fingerprint) for n in ("ray", "local"))
    assert on_ray.paths == here.paths
    np.testing.assert_allclose(on_ray.X, here.X, rtol=1e-5, atol=1e-6)
    again = extract_dataset(root, tiny_backbone(), tmp_path / "ray.h5", options=ExtractOptions(engine="ray"))
    assert again.computed == 0  # nothing sent to the cluster


def test_ray_actors_read_tar_shards_by_byte_range(ray_instance: None, tmp_path: Path) -> None:
    from test_shards import folder_to_shards, write_shards

    root = _images(tmp_path / "data", 12)
    pattern = write_shards(tmp_path / "shards", folder_to_shards(root, 4))
    ray_run = extract_dataset(pattern, tiny_backbone(), tmp_path / "ray.h5",
                              options=ExtractOptions(engine="ray", actors=2, batch_size=4))
    local = extract_dataset(root, tiny_backbone(), tmp_path / "local.h5", options=ExtractOptions(workers=0))
    assert (ray_run.dataset, ray_run.computed, ray_run.skipped, ray_run.fingerprint) == ("shards", 12, [], local.fingerprint)
    on_ray, here = (load_features(tmp_path / f"{n}.h5", d, local.fingerprint) for n, d in (("ray", "shards"), ("local", "data")))
    assert on_ray.paths[0] == "train-000000.tar/000000" and sorted(on_ray.shas) == sorted(here.shas)
    order = [on_ray.shas.index(s) for s in here.shas]
    assert list(on_ray.labels[order]) == list(here.labels)
    np.testing.assert_allclose(on_ray.X[order], here.X, rtol=1e-5, atol=1e-6)


def test_a_lost_actor_is_restarted_and_its_batch_retried(ray_instance: None, tmp_path: Path) -> None:
    root = _images(tmp_path / "data", 12)
    died = tmp_path / "died"
    run = extract_dataset(root, tiny_backbone(die_once=died), tmp_path / "ray.h5",
                          options=ExtractOptions(engine="ray", actors=2, batch_size=4))
    assert died.exists() and (run.computed, run.skipped) == (12, [])
    local = extract_dataset(root, tiny_backbone(), tmp_path / "local.h5", options=ExtractOptions(workers=0))
    np.testing.assert_allclose(load_features(tmp_path / "ray.h5", "data", run.fingerprint).X,
                               load_features(tmp_path / "local.h5", "data", local.fingerprint).X, rtol=1e-5, atol=1e-6)


_KILLED_DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
import ray
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from tiny_backbone import tiny_backbone
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
         runtime_env={{"env_vars": {{"PYTHONPATH": {tests!r}}}}})
log = Path({log!r})
extract_dataset(Path({root!r}), tiny_backbone(delay=0.3), Path({cache!r}),
                options=ExtractOptions(engine="ray", batch_size=2, progress=lambda t, done, n: log.write_text(str(done))))
"""


def test_a_killed_driver_keeps_what_reached_the_cache(ray_instance: None, tmp_path: Path) -> None:
    root = _images(tmp_path / "data", 30)
    cache, log = tmp_path / "cache.h5", tmp_path / "done.txt"
    script = _KILLED_DRIVER.format(tests=TESTS, log=str(log), root=str(root), cache=str(cache))
    driver = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or int(log.read_text() or 0) < 6):
        assert driver.poll() is None, "the driver ended before it was killed"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    driver.wait()
    with Store.open(cache) as store:
        saved = store.count(store.extractors()[0])
    assert 6 <= saved < 30
    resumed = extract_dataset(root, tiny_backbone(), cache, options=ExtractOptions(engine="ray", batch_size=4))
    assert (resumed.computed, resumed.reused) == (30 - saved, saved)
    fresh = extract_dataset(root, tiny_backbone(), tmp_path / "fresh.h5", options=ExtractOptions(workers=0))
    np.testing.assert_allclose(load_features(cache, "data", fresh.fingerprint).X,
                               load_features(tmp_path / "fresh.h5", "data", fresh.fingerprint).X, rtol=1e-5, atol=1e-6)


def test_an_unreachable_address_fails_in_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    root = _images(tmp_path / "data", 2)
    start = time.perf_counter()
    with pytest.raises(ExtractError, match=r"^--address 127\.0\.0\.1:9: cannot reach 127\.0\.0\.1:9 .*ray start --head"):
        extract_dataset(root, tiny_backbone(), tmp_path / "c.h5", options=ExtractOptions(engine="ray",
                                                                                          address="127.0.0.1:9"))
    assert time.perf_counter() - start < 10
    with pytest.raises(ExtractError, match="give auto, HOST:PORT or ray://HOST:PORT"):
        extract_dataset(root, tiny_backbone(), tmp_path / "c.h5", options=ExtractOptions(engine="ray",
                                                                                          address="nowhere"))
    assert not (tmp_path / "c.h5").exists()  # before any work


def test_without_ray_installed_the_error_says_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ExtractError, match=r"needs Ray, which is not installed: pip install 'bottleneck-features\[ray\]'"):
        extract_dataset(_images(tmp_path / "data", 2), tiny_backbone(), tmp_path / "c.h5",
                        options=ExtractOptions(engine="ray"))


def test_ray_options_without_the_ray_engine_are_refused() -> None:
    with pytest.raises(ExtractError, match="go with --engine ray"):
        ExtractOptions(actors=2)
    with pytest.raises(ExtractError, match="--engine spark: use local or ray"):
        ExtractOptions(engine="spark")
