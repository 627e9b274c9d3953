"""One ExtractorSpec from extract to fit, predict and compare: named extractions are compared and
predicted with exactly the extractor that made them, and nothing is built when nothing is missing."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import bottleneck_features.extraction
from bottleneck_features.cli import app
from bottleneck_features.comparison import run_compare
from bottleneck_features.decode import normalize, resize_crop
from bottleneck_features.errors import FitError, StoreError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.images import decode_rgb, sha256_file
from bottleneck_features.sources import load_backbone, packaged, register_model, resolve_spec
from bottleneck_features.spec import ExtractorSpec
from bottleneck_features.store import Store
from bottleneck_features.training import fit_head, predict_files, sidecar_path
from conftest import on_host, write_image
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0)
OLD_RELEASE = Path(__file__).parent / "data" / "release_0_1_0"


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build a network fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built although every vector was cached")

    monkeypatch.setattr(bottleneck_features.extraction, "build", refuse)


@pytest.fixture
def two_tiny_extractions(image_folder: Path, tmp_path: Path) -> tuple[Path, dict]:
    """`tiny` extracted twice into one cache: stored as float16, and at layer conv with max pooling."""
    built: dict = {}

    def factory(weights=None, layer=None, pool="avg"):  # noqa: ANN001, ANN202
        return built.setdefault((layer, pool), tiny_backbone().using(layer=layer, pool=pool))

    register_model("tiny", factory)
    cache = tmp_path / "cache.h5"
    extract_dataset(image_folder, resolve_spec("tiny", dtype="float16"), cache, options=QUIET)
    extract_dataset(image_folder, resolve_spec("tiny", layer="conv", pool="max"), cache, options=QUIET)
    return cache, built


def test_compare_rows_are_the_datasets_extractions_and_run_no_forward_pass(
        two_tiny_extractions: tuple[Path, dict], tmp_path: Path, no_build: None, host: str) -> None:
    cache, built = two_tiny_extractions
    float16, conv = on_host("tiny[float16]", host), on_host("tiny[conv,max]", host)
    seen = sum(b.model.images_seen for b in built.values())
    result = run_compare(cache, heads=["logreg"], tune=[], per_class=[2], repeats=1, pixels=None, out=tmp_path / "r")
    assert {c.features for c in result.cells} == {float16, conv}
    assert sum(b.model.images_seen for b in built.values()) == seen
    one = run_compare(cache, models=[conv], heads=["logreg"], tune=[], per_class=[2], repeats=1, pixels=None,
                      out=tmp_path / "r")
    assert {c.features for c in one.cells} == {conv}
    with Store.open(cache) as store:
        fp = store.match_extractors("data", conv)[0]
    by_fp = run_compare(cache, models=[fp], heads=["logreg"], tune=[], per_class=[2], repeats=1, pixels=None, out=tmp_path / "r")
    assert [c.scores for c in by_fp.cells] == [c.scores for c in one.cells]
    with pytest.raises(StoreError, match=rf"--models tiny: .* 2 extractions of tiny: {re.escape(conv)} \(tiny-.*"
                                         rf"{re.escape(float16)}"):
        run_compare(cache, models=["tiny"], heads=["logreg"], tune=[], per_class=[2], pixels=None)


def test_fit_takes_a_label_and_refuses_an_ambiguous_model_name(two_tiny_extractions: tuple[Path, dict],
                                                               host: str) -> None:
    cache, _ = two_tiny_extractions
    conv = on_host("tiny[conv,max]", host)
    with pytest.raises(StoreError, match="2 extractions of tiny"):
        fit_head(cache, head="knn", model="tiny")
    meta = fit_head(cache, head="knn", model=conv).sidecar
    assert meta["extractor"]["label"] == conv
    assert (meta["extractor"]["spec"]["layer"], meta["extractor"]["spec"]["pool"]) == ("conv", "max")


@pytest.mark.every_host
def test_predict_rebuilds_a_layer_and_pool_extraction_of_a_registry_model(image_folder: Path, tmp_path: Path,
                                                                          host: str) -> None:
    """squeezenet1_1 (real packaged weights) at features.10 with max pooling, through the CLI: predict on
    new files rebuilds exactly that extractor from the head's spec."""
    if packaged._ndf_squeezenet_file() is None:
        pytest.skip("the ndf package (squeezenet1_1 weights) is not installed")
    runner, cache = CliRunner(), tmp_path / "cache.h5"
    args = ["--cache", str(cache), "-q"]
    result = runner.invoke(app, ["extract", str(image_folder), "--model", "squeezenet1_1", "--layer", "features.10",
                                 "--pool", "max", "--workers", "0", *args])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["fit", "--head", "logreg", "--cache", str(cache)]).exit_code == 0
    head = cache.parent / "heads" / "data-logreg.joblib"
    new = [write_image(tmp_path / "new" / f"n{i}.jpg", seed=500 + i) for i in range(3)]
    result = runner.invoke(app, ["predict", str(tmp_path / "new"), "--head", str(head), "--out",
                                 str(tmp_path / "p.csv"), *args])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4

    extractor = json.loads(sidecar_path(head).read_text())["extractor"]
    with Store.open(cache) as store:
        stored = store.get_vectors(extractor["fingerprint"], [sha256_file(p) for p in new])
    precision = ExtractorSpec.from_dict(extractor["spec"]).precision
    assert precision == {"no-bf16": "fp32", "bf16": "bf16"}[host]
    backbone = load_backbone("squeezenet1_1", layer="features.10", pool="max")
    pre = backbone.preprocess
    pixels = torch.stack([resize_crop(decode_rgb(p.read_bytes(), draft_to=pre.resize_size), pre) for p in new])
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        expected = backbone.model(normalize(pixels, pre)).float().numpy()
    assert stored.shape == (3, 384)
    tolerance = 1e-4 if precision == "fp32" else 2e-2  # bf16 keeps 8 bits of mantissa; BN is folded first
    np.testing.assert_allclose(stored, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())


@pytest.mark.every_host
def test_cached_rerun_and_compare_build_nothing_and_import_neither_torchvision_nor_timm(
        image_folder: Path, tmp_path: Path) -> None:
    if packaged._ndf_squeezenet_file() is None:
        pytest.skip("the ndf package (squeezenet1_1 weights) is not installed")
    cache = tmp_path / "cache.h5"
    extract_dataset(image_folder, resolve_spec("squeezenet1_1"), cache, options=QUIET)
    script = f"""
import sys
import bottleneck_features.registry as registry

def refuse(*args, **kwargs):
    raise AssertionError("built a model")

registry.build = refuse  # before anything imports it by name
from typer.testing import CliRunner
from bottleneck_features.cli import app

runner, cache = CliRunner(), {str(cache)!r}
rerun = runner.invoke(app, ["extract", {str(image_folder)!r}, "--model", "squeezenet1_1", "--cache", cache, "-q"])
assert rerun.exit_code == 0 and "0 computed" in rerun.output, rerun.output
compared = runner.invoke(app, ["compare", "--cache", cache, "--heads", "knn", "--per-class", "2", "--repeats", "1",
                               "--pixels", "0", "--out", {str(tmp_path / "report")!r}, "-q"])
assert compared.exit_code == 0, compared.output
print("torchvision" in sys.modules, "timm" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]


@pytest.fixture
def old_release(tmp_path: Path) -> Path:
    """A copy of the cache, images and sidecar that release 0.1.0 wrote (see its README)."""
    return Path(shutil.copytree(OLD_RELEASE, tmp_path / "old"))


def test_old_release_cache_is_reused_compared_and_fitted(old_release: Path, tmp_path: Path, no_build: None) -> None:
    cache = old_release / "cache.h5"
    with Store.open(cache) as store:
        labels = sorted(store.extractor_spec(fp).label() for fp in store.dataset_extractors("shades"))
    assert labels == ["raw8", "squeezenet1_1[features.10,max]"]
    # the first release computed in fp32: asked for fp32 (auto would pick bf16 on a bf16 host), they are reused
    for spec in (resolve_spec("squeezenet1_1", layer="features.10", pool="max", precision="fp32"), resolve_spec("raw8")):
        assert extract_dataset(old_release / "shades", spec, cache, options=QUIET).computed == 0
    result = run_compare(cache, heads=["logreg"], tune=[], per_class=[2], repeats=1, pixels=8, out=tmp_path / "r")
    assert {c.features for c in result.cells} == {"raw8", "squeezenet1_1[features.10,max]"}
    assert fit_head(cache, head="knn", model="squeezenet1_1[features.10,max]").sidecar["extractor"]["spec"]["layer"]


def test_old_release_sidecar_predicts(old_release: Path, no_build: None) -> None:
    cache = old_release / "cache.h5"
    head = fit_head(cache, head="knn", model="raw8", out=old_release / "new-knn.joblib").head_path
    old = json.loads((old_release / "shades-knn.json").read_text())
    meta = json.loads(sidecar_path(head).read_text())
    assert old["extractor"]["fingerprint"] == meta["extractor"]["fingerprint"]
    meta["extractor"] = old["extractor"]  # the section whose format changed
    sidecar_path(head).write_text(json.dumps(meta))
    predictions, skipped = predict_files([old_release / "shades" / "dark"], head, cache, options=QUIET)
    assert len(predictions) == 6 and not skipped
    del meta["extractor"]["spec"]
    sidecar_path(head).write_text(json.dumps(meta))
    with pytest.raises(FitError, match="no extractor spec in this sidecar.*refit"):
        predict_files([old_release / "shades" / "dark"], head, cache, options=QUIET)


def test_a_group_without_a_spec_says_how_to_rebuild(old_release: Path) -> None:
    cache = old_release / "cache.h5"
    with h5py.File(cache, "a") as f:
        fp = next(iter(f["extractors"]))
        del f["extractors"][fp].attrs["spec"]
    with Store.open(cache) as store, pytest.raises(StoreError, match="no readable spec.*rerun extract"):
        store.extractor_spec(fp)
