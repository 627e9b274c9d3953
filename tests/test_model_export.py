"""export-model: a head and its backbone as one .onnx / .pt2 network, checked against predict; running it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.ensemble import VotingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from typer.testing import CliRunner

from bottleneck_features import api
from bottleneck_features.classifier_graph import head_module, linear_form
from bottleneck_features.cli import app
from bottleneck_features.errors import BottleneckError, FitError, OutputError, WeightsUnavailableError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.heads import FineTunedTailClassifier, LinearSVMClassifier, make_head
from bottleneck_features.images import sha256_file
from bottleneck_features.registry import Backbone
from bottleneck_features.sources import register_model, resolve_spec
from bottleneck_features.spec import ExtractorSpec, Preprocess
from bottleneck_features.training import fit_head, load_head, predict_files, sidecar_path
from tiny_backbone import PREPROCESS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from bottleneck_features.model_export import ExportResult, export_model  # noqa: E402
from bottleneck_features.model_file import CROP_RULE, ExportedModel, open_model, predict_with_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "examples" / "onnx_classify.py"
QUIET = ExtractOptions(workers=0)


class TinyNet(nn.Module):
    """Conv → ReLU → global average pool: small enough to export in a second, traceable (no state)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, kernel_size=3, stride=2)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3))


def tiny(weights: str | None = None, layer: str | None = None, pool: str = "avg") -> Backbone:
    return Backbone(TinyNet().eval(), ExtractorSpec("tinyx", "random-seed0", PREPROCESS, 8))


# A second network for fused heads, whose crop is not tinyx's: another size, resize and interpolation.
OTHER = Preprocess(input_size=40, resize_size=48, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225))


def tiny_other(weights: str | None = None, layer: str | None = None, pool: str = "avg") -> Backbone:
    return Backbone(TinyNet(6).eval(), ExtractorSpec("tinyy", "random-seed0", OTHER, 6))


def _shades(root: Path, per_class: int = 12) -> Path:
    """Three classes a random CNN tells apart: dark, mid and bright noise, of varied sizes."""
    rng = np.random.default_rng(0)
    for label, base in [("dark", 40), ("mid", 128), ("bright", 215)]:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(36, 60)), int(rng.integers(36, 60)))
            pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, cache) with the folder extracted by tinyx in fp32, once for the module."""
    tmp = tmp_path_factory.mktemp("export")
    root, cache = _shades(tmp / "shades"), tmp / "cache.h5"
    extract_dataset(root, tiny().using(precision="fp32"), cache, options=QUIET)
    return root, cache


@pytest.fixture
def cache(dataset: tuple[Path, Path]) -> Path:
    register_model("tinyx", tiny)  # forgotten after each test (conftest)
    return dataset[1]


def _fit(cache: Path, head: str, tmp_path: Path, **params: object) -> Path:
    return fit_head(cache, head=head, test_size=0.3, out=tmp_path / f"{head}.joblib", params=params or None).head_path


@pytest.mark.parametrize("classes", [2, 3])
def test_head_modules_are_predict_proba(classes: int) -> None:
    """Each head as a torch module on features, against its own predict_proba (no export: fast)."""
    rng = np.random.default_rng(classes)
    X = (rng.normal(size=(150, 12)) * 3 + 1).astype(np.float32)
    y = np.array(["a", "b", "c"][:classes])[rng.integers(0, classes, 150)]
    X[y == "a"] += 1.5
    new = (rng.normal(size=(40, 12)) * 3 + 1).astype(np.float32)
    for name, options in [("logreg", {}), ("logreg", {"tune": True}), ("logreg", {"l2_normalize": True}),
                          ("softmax", {}), ("svm", {}), ("svm", {"tune": True}), ("svm", {"kernel": "rbf"}),
                          ("knn", {}), ("knn", {"weights": "uniform", "metric": "euclidean"}), ("nb", {}), ("mlp", {})]:
        head = make_head(name, **options).fit(X, y)
        module = head_module(head, 12)
        assert module is not None
        with torch.no_grad():
            got = module(torch.from_numpy(new)).double().numpy()
        assert np.abs(got - head.predict_proba(new)).max() < 1e-5, (name, options)
    for weights in (None, [1, 3]):
        vote = VotingClassifier([("logreg", make_head("logreg", tune=True)), ("knn", make_head("knn"))], voting="soft",
                                weights=weights)
        module = head_module(vote.fit(X, y), 12)  # a vote of heads torch computes: the weighted mean of their modules
        assert module is not None
        with torch.no_grad():
            assert np.abs(module(torch.from_numpy(new)).double().numpy() - vote.predict_proba(new)).max() < 1e-5
    linear = linear_form(make_head("svm").fit(X, y))
    assert linear.weight.shape == (classes, 12) and linear.temperature is not None
    assert head_module(make_head("et").fit(X, y), 12) is None  # skl2onnx's
    tail = Pipeline([("scale", StandardScaler().fit(X)), ("clf", FineTunedTailClassifier())])
    with pytest.raises(FitError, match="a fine-tuned tail reads a layer's whole maps"):
        head_module(tail, 12)
    for calibration in [{"method": "sigmoid"}, {"ensemble": True}]:
        svm = make_head("svm")
        svm.set_params(clf__estimator=LinearSVMClassifier(), **{f"clf__{k}": v for k, v in calibration.items()})
        with pytest.raises(FitError, match="does not export; heads that export: logreg, softmax, svm"):
            head_module(svm.fit(X, y), 12)


@pytest.mark.parametrize("head", ["logreg", "svm", "softmax", "knn", "nb", "mlp", "et", "rf"])
def test_every_head_exports_and_agrees_with_predict(cache: Path, tmp_path: Path, head: str) -> None:
    head_path = _fit(cache, head, tmp_path)
    result = export_model(head_path, tmp_path / "m.onnx", cache=cache)
    assert result.check is not None and result.check.passed, result.summary()
    assert result.check.images == 36 and result.check.cached_same_top1 == 36
    assert result.form.startswith("linear") == (head in ("logreg", "svm", "softmax"))
    assert (result.form == "skl2onnx") == (head in ("et", "rf"))
    model = open_model(result.path)
    estimator, meta = load_head(head_path)
    assert model.classes == ["bright", "dark", "mid"] and model.metadata["head_sha256"] == meta["sha256"]
    assert model.specs == [ExtractorSpec.from_dict(meta["extractor"]["spec"])]
    assert model.preprocesses == [PREPROCESS] and "centre crop" in model.metadata["preprocess"]["rule"]
    assert "against the torch fp32 backbone + head: top-1 36/36" in result.summary()
    assert result.check.head_same_top1 == 36 and result.check.head_difference is not None
    assert result.check.head_difference < 1e-5 and (result.check.trees is not None) == (head in ("et", "rf"))


def test_an_auto_head_exports_the_head_it_chose(cache: Path, tmp_path: Path) -> None:
    head_path = _fit(cache, "auto", tmp_path)
    estimator, meta = load_head(head_path)
    assert meta["auto"]["choice"]["head"] == "logreg+et"  # three separable shades: every candidate ties the vote
    result = export_model(head_path, tmp_path / "m.onnx", cache=cache)  # the tuned logreg and the trees: skl2onnx
    assert result.check is not None and result.check.passed, result.summary()
    assert result.check.images == 36 and result.check.cached_same_top1 == 36
    assert result.form == "skl2onnx and torch, averaged"
    assert result.check.trees == 300
    with pytest.raises(FitError, match=r"a VotingClassifier head runs in no torch program: export it as \.onnx"):
        export_model(head_path, tmp_path / "m.pt2", cache=cache)


def test_a_vote_of_linear_heads_and_trees_exports_as_their_weighted_mean(cache: Path, tmp_path: Path) -> None:
    head_path = _fit(cache, "logreg", tmp_path)
    features = api.load_features(cache=cache)
    members = [("logreg", make_head("logreg", tune=True)), ("svm", make_head("svm")), ("et", make_head("et"))]
    vote = VotingClassifier(members, voting="soft", weights=[1, 1, 3]).fit(features.X, features.labels)
    _forge(head_path, vote)
    result = export_model(head_path, tmp_path / "vote.onnx", cache=cache)
    assert result.check is not None and result.check.passed, result.summary()
    assert result.check.cached_same_top1 == 36 and result.form == "skl2onnx and torch, averaged"
    assert result.check.head_difference is not None and result.check.head_difference < 1e-5  # weighted as predict_proba


def test_binary_and_tuned_heads_fold_into_one_matrix(tmp_path: Path) -> None:
    register_model("tinyx", tiny)
    root = _shades(tmp_path / "two")
    for extra in (root / "mid").iterdir():
        extra.unlink()
    (root / "mid").rmdir()
    cache = tmp_path / "two.h5"
    extract_dataset(root, tiny().using(precision="fp32"), cache, options=QUIET)
    for head, tune in [("logreg", True), ("svm", False)]:
        head_path = fit_head(cache, head=head, tune=tune, test_size=0.3, out=tmp_path / f"{head}.joblib").head_path
        result = export_model(head_path, tmp_path / f"{head}.onnx", cache=cache)
        assert result.check is not None and result.check.passed and result.form.startswith("linear: one 2 x 8")


def test_pt2_matches_onnx_and_refuses_trees(cache: Path, tmp_path: Path) -> None:
    head_path = _fit(cache, "logreg", tmp_path)
    onnx_model = open_model(export_model(head_path, tmp_path / "m.onnx", cache=cache).path)
    result = export_model(head_path, tmp_path / "m.pt2", cache=cache)
    assert result.check is not None and result.check.passed and result.check.head_difference is None
    pt2 = open_model(result.path)
    crops = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert np.abs(pt2.run(crops) - onnx_model.run(crops)).max() < 1e-5
    assert pt2.classes == onnx_model.classes and pt2.metadata["head_sha256"] == onnx_model.metadata["head_sha256"]
    for model in (onnx_model, pt2):
        _as_before_fused_heads(model, head_path)
    with pytest.raises(FitError, match=r"export it as \.onnx"):
        export_model(_fit(cache, "et", tmp_path), tmp_path / "et.pt2", cache=cache)


def _as_before_fused_heads(model: ExportedModel, head_path: Path) -> None:
    """A one-block file: one input, `images`, and the metadata every file had before fused heads."""
    meta = model.metadata
    assert sorted(meta) == ["bottleneck_version", "classes", "extractor_spec", "head", "head_sha256", "input",
                            "preprocess", "quantization"]
    assert meta["preprocess"] == {**PREPROCESS.to_dict(), "rule": CROP_RULE}
    assert meta["extractor_spec"] == json.loads(sidecar_path(head_path).read_text())["extractor"]["spec"]
    assert meta["input"] == {"name": "images", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                             "shape": ["N", 32, 32, 3], "computed_in": "float32",
                             "outputs": {"probabilities": "(N, classes)",
                                         "features": "(N, D), the pooled embedding (.onnx)"}}
    if model.path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]


def test_dynamic_batch_and_int8(cache: Path, tmp_path: Path) -> None:
    head_path = _fit(cache, "logreg", tmp_path)
    result = export_model(head_path, tmp_path / "q.onnx", cache=cache, quantize="int8")
    assert result.quantized is not None and result.check is not None and result.check.passed
    assert result.quantized.test_images > 0 and result.quantized.calibration > 0
    assert "held-out accuracy" in result.summary() and "MB" in result.summary()
    model = open_model(result.path)
    assert model.metadata["quantization"]["kind"] == "int8"
    for n in (1, 3, 17):
        probabilities = model.run(np.zeros((n, 32, 32, 3), dtype=np.uint8))
        assert probabilities.shape == (n, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    trees = export_model(_fit(cache, "et", tmp_path), tmp_path / "et.onnx", cache=cache, quantize="int8")
    assert trees.quantized is not None and trees.check is not None and trees.check.passed


def test_predict_from_the_model_file_is_predict(cache: Path, dataset: tuple[Path, Path], tmp_path: Path) -> None:
    root = dataset[0]
    head_path = _fit(cache, "svm", tmp_path)
    model_file = export_model(head_path, tmp_path / "m.onnx", cache=cache).path
    from_model, skipped = predict_with_model([root], model_file, top_k=2)
    (root.parent / "broken.jpg").write_bytes(b"not an image")
    from_head, _ = predict_files([root], head_path, cache, top_k=2, options=QUIET)
    assert not skipped and [p.path for p in from_model] == [p.path for p in from_head]
    assert [p.labels for p in from_model] == [p.labels for p in from_head]
    assert np.abs(np.array([p.probabilities for p in from_model])
                  - np.array([p.probabilities for p in from_head])).max() < 1e-4
    _, skipped = predict_with_model([root.parent / "broken.jpg"], model_file)
    assert skipped and "not an image" in skipped[0][1]


def test_the_standalone_runner_needs_no_torch(cache: Path, dataset: tuple[Path, Path], tmp_path: Path) -> None:
    model_file = export_model(_fit(cache, "logreg", tmp_path), tmp_path / "m.onnx", cache=cache).path
    script = (f"import runpy, sys; sys.argv = ['onnx_classify.py', {str(model_file)!r}, {str(dataset[0])!r}]; "
              f"runpy.run_path({str(RUNNER)!r}, run_name='__main__'); "
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'bottleneck_features')); "
              "print('IMPORTED', heavy)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "IMPORTED []"
    labelled = {Path(p).parent.name: label for p, label, _ in (line.split(",") for line in lines[:-1])}
    assert len(lines) == 37 and labelled == {"dark": "dark", "mid": "mid", "bright": "bright"}
    assert len(RUNNER.read_text().splitlines()) <= 30


def test_bad_inputs_are_one_line(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head_path = _fit(cache, "logreg", tmp_path)
    (tmp_path / "folder.onnx").mkdir()
    for out, message in [(tmp_path / "m.tflite", "must end in .onnx or .pt2"),
                         (Path("/proc/m.onnx"), "no file can be written"), (tmp_path / "folder.onnx", "is a folder")]:
        with pytest.raises((FitError, OutputError), match=message):
            export_model(head_path, out, cache=cache)
    with pytest.raises(FitError, match="--quantize int8, with an .onnx"):
        export_model(head_path, tmp_path / "m.pt2", cache=cache, quantize="int8")
    with pytest.raises(FitError, match="no such head file"):
        export_model(tmp_path / "gone.joblib", tmp_path / "m.onnx", cache=cache)
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name == "onnxscript" else real(name, *a))
    with pytest.raises(BottleneckError, match=r"pip install 'bottleneck-features\[onnx\]'"):
        export_model(head_path, tmp_path / "m.onnx", cache=cache)


def _forge(head_path: Path, estimator: object | None = None, **spec_changes: object) -> None:
    """Rewrite a head (and its sidecar's sha256) or its sidecar's spec, as another tool might."""
    meta = json.loads(sidecar_path(head_path).read_text())
    if estimator is not None:
        joblib.dump(estimator, head_path)
        meta["sha256"] = sha256_file(head_path)
    spec = ExtractorSpec.from_dict(meta["extractor"]["spec"]).replace(**spec_changes)
    meta["extractor"] = {**meta["extractor"], "spec": spec.to_dict(), "fingerprint": spec.fingerprint()}
    sidecar_path(head_path).write_text(json.dumps(meta))


def test_heads_that_cannot_export_say_which_do(cache: Path, tmp_path: Path) -> None:
    from sklearn.gaussian_process import GaussianProcessClassifier

    views = _fit(cache, "logreg", tmp_path)
    _forge(views, augment="flip")
    with pytest.raises(FitError, match="augmented views"):
        export_model(views, tmp_path / "m.onnx", cache=cache)
    foreign = _fit(cache, "knn", tmp_path)
    estimator, _ = load_head(foreign)
    estimator.steps[-1] = ("clf", GaussianProcessClassifier().fit(np.eye(8)[:6], [0, 1, 2] * 2))
    _forge(foreign, estimator)
    with pytest.raises(FitError, match="GaussianProcessClassifier head does not export; heads that export: logreg"):
        export_model(foreign, tmp_path / "m.onnx", cache=cache)
    other = _fit(cache, "logreg", tmp_path)
    _forge(other, model="resnet50", feature_dim=2048)  # a sidecar from another model family
    with pytest.raises(FitError, match="takes 8-d features but its sidecar's extractor resnet50 gives 2048-d"):
        export_model(other, tmp_path / "m.onnx", cache=cache)
    assert not (tmp_path / "m.onnx").exists()


def test_a_missing_weights_file_is_one_line(cache: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(TinyNet().state_dict(), weights)
    head_path = _fit(cache, "logreg", tmp_path)
    _forge(head_path, weights=f"sha256:{sha256_file(weights)}", weights_file=str(weights))
    weights.unlink()
    with pytest.raises(WeightsUnavailableError, match="pass --weights FILE"):
        export_model(head_path, tmp_path / "m.onnx", cache=cache, check=False)


# --- fused heads (fit --model a+b): one input per block --------------------------------------------


@pytest.fixture(scope="module")
def fused_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, cache) with the folder extracted by tinyx and by tinyy (another crop), in fp32."""
    tmp = tmp_path_factory.mktemp("fused")
    root, cache = _shades(tmp / "shades"), tmp / "cache.h5"
    for backbone in (tiny(), tiny_other()):
        extract_dataset(root, backbone.using(precision="fp32"), cache, options=QUIET)
    return root, cache


@pytest.fixture
def fused_cache(fused_dataset: tuple[Path, Path]) -> Path:
    register_model("tinyx", tiny)
    register_model("tinyy", tiny_other)
    return fused_dataset[1]


def _fit_fused(cache: Path, head: str, tmp_path: Path) -> Path:
    return fit_head(cache, head=head, model="tinyx+tinyy", test_size=0.3, out=tmp_path / f"{head}.joblib").head_path


def _agree(result: ExportResult) -> None:
    assert result.check is not None and result.check.passed, result.summary()
    assert result.check.images == 36 and result.check.cached_same_top1 == 36


def test_a_fused_head_exports_with_an_input_per_block(fused_cache: Path, fused_dataset: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    head_path = _fit_fused(fused_cache, "logreg", tmp_path)
    onnx_result = export_model(head_path, tmp_path / "m.onnx", cache=fused_cache)
    _agree(onnx_result)
    assert onnx_result.label == "tinyx+tinyy" and onnx_result.form.startswith("linear: one 3 x 14")
    assert "uint8 (N, 32, 32, 3) + (N, 40, 40, 3) in" in onnx_result.summary()
    pt2_result = export_model(head_path, tmp_path / "m.pt2", cache=fused_cache)
    _agree(pt2_result)
    onnx_model, pt2 = open_model(onnx_result.path), open_model(pt2_result.path)
    meta = json.loads(sidecar_path(head_path).read_text())
    for model in (onnx_model, pt2):
        assert model.preprocesses == [PREPROCESS, OTHER] and model.metadata["head_sha256"] == meta["sha256"]
        assert model.specs == [ExtractorSpec.from_dict(block["spec"]) for block in meta["fused"]]
        assert [(i["name"], i["shape"]) for i in model.metadata["input"]] == [("images_0", ["N", 32, 32, 3]),
                                                                               ("images_1", ["N", 40, 40, 3])]
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8) for size in (32, 40)]
    assert np.abs(pt2.run(*crops) - onnx_model.run(*crops)).max() < 1e-5
    assert onnx_model.run_with_features is not None and onnx_model.run_with_features(*crops)[1].shape == (5, 14)
    root = fused_dataset[0]
    from_head, _ = predict_files([root], head_path, fused_cache, top_k=2, options=QUIET)
    for model_file in (onnx_result.path, pt2_result.path):
        from_model, skipped = predict_with_model([root], model_file, top_k=2)
        assert not skipped and [(p.path, p.labels) for p in from_model] == [(p.path, p.labels) for p in from_head]
        assert np.abs(np.array([p.probabilities for p in from_model])
                      - np.array([p.probabilities for p in from_head])).max() < 1e-4
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    from_model, skipped = predict_with_model([broken, root / "dark" / "0.jpg"], onnx_result.path)
    assert [p.labels for p in from_model] == [["dark"]] and len(skipped) == 1 and "not an image" in skipped[0][1]


def test_predict_from_a_fused_file_on_the_command_line(fused_cache: Path, fused_dataset: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    runner, head, model = CliRunner(), str(tmp_path / "h.joblib"), str(tmp_path / "fused.onnx")
    fitted = runner.invoke(app, ["fit", "--head", "logreg", "--model", "tinyx+tinyy", "--cache", str(fused_cache),
                                 "--out", head])
    assert fitted.exit_code == 0, fitted.output
    exported = runner.invoke(app, ["export-model", "--head", head, model, "--cache", str(fused_cache), "-q"])
    assert exported.exit_code == 0, exported.output
    assert "tinyx+tinyy + logreg" in exported.output and "top-1 36/36" in exported.output
    assert "Warning" not in exported.output and "[torch.onnx]" not in exported.output
    root = str(fused_dataset[0])
    with_head = runner.invoke(app, ["predict", root, "--head", head, "--cache", str(fused_cache), "-q"])
    with_file = runner.invoke(app, ["predict", root, "--model-file", model, "-q"])
    assert with_head.exit_code == 0 and with_file.exit_code == 0, with_file.output
    a, b = _rows(with_head.stdout), _rows(with_file.stdout)
    assert len(a) == 36 and [(r["path"], r["prediction"]) for r in a] == [(r["path"], r["prediction"]) for r in b]
    standalone = subprocess.run([sys.executable, str(RUNNER), model, root], capture_output=True, text=True,
                                timeout=120, check=True)  # the example runner: a crop per block
    labelled = {Path(p).parent.name: label for p, label, _ in (line.split(",") for line in standalone.stdout.splitlines())}
    assert labelled == {"dark": "dark", "mid": "mid", "bright": "bright"}


def test_fused_trees_export_to_onnx_only_and_quantise(fused_cache: Path, tmp_path: Path) -> None:
    head_path = _fit_fused(fused_cache, "et", tmp_path)
    result = export_model(head_path, tmp_path / "et.onnx", cache=fused_cache, quantize="int8")
    _agree(result)
    assert result.form == "skl2onnx" and result.check.trees == 300
    assert result.quantized is not None and result.quantized.calibration == 36 - result.quantized.test_images
    model = open_model(result.path)
    assert model.metadata["quantization"]["kind"] == "int8" and len(model.preprocesses) == 2
    with pytest.raises(FitError, match=r"ExtraTreesClassifier head runs in no torch program: export it as \.onnx"):
        export_model(head_path, tmp_path / "et.pt2", cache=fused_cache)


def test_a_fused_auto_head_exports_its_vote(fused_cache: Path, tmp_path: Path) -> None:
    head_path = _fit_fused(fused_cache, "auto", tmp_path)
    estimator, meta = load_head(head_path)
    assert isinstance(estimator.estimator_, VotingClassifier), meta["auto"]["choice"]
    result = export_model(head_path, tmp_path / "auto.onnx", cache=fused_cache)
    _agree(result)
    assert result.form == "skl2onnx and torch, averaged" and result.label == "tinyx+tinyy"


# --- the CLI: bottleneck export-model, bottleneck predict --model-file ------------------------------


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_export_then_predict_from_the_file(tmp_path: Path) -> None:
    register_model("tinyx", tiny)
    root, cache = _shades(tmp_path / "shades"), str(tmp_path / "c.h5")
    extract_dataset(root, tiny().using(precision="fp32"), Path(cache), options=ExtractOptions(workers=0))
    runner, head, model = CliRunner(), str(tmp_path / "h.joblib"), str(tmp_path / "classifier.onnx")
    assert runner.invoke(app, ["fit", "--head", "svm", "--cache", cache, "--out", head]).exit_code == 0
    exported = runner.invoke(app, ["export-model", "--head", head, model, "--cache", cache, "-q"])
    assert exported.exit_code == 0, exported.output
    assert "against the torch fp32 backbone + head: top-1 36/36" in exported.output
    assert "[torch.onnx]" not in exported.output
    with_head = runner.invoke(app, ["predict", str(root), "--head", head, "--cache", cache, "--top-k", "2", "-q"])
    with_file = runner.invoke(app, ["predict", str(root), "--model-file", model, "--top-k", "2", "-q"])
    assert with_head.exit_code == 0 and with_file.exit_code == 0, with_file.output
    a, b = _rows(with_head.stdout), _rows(with_file.stdout)
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == 36
    assert [(r["label_1"], r["label_2"]) for r in a] == [(r["label_1"], r["label_2"]) for r in b]
    assert max(abs(float(r["probability"]) - float(s["probability"])) for r, s in zip(a, b, strict=True)) < 1e-4
    out = tmp_path / "p.json"
    assert runner.invoke(app, ["predict", str(root), "--model-file", model, "--out", str(out), "-q"]).exit_code == 0
    assert out.read_text().lstrip().startswith("[")


def test_export_model_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["export-model", "--head", str(tmp_path / "none.joblib"), str(tmp_path / "m.onnx")])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    assert "no such head file" in missing.output
    both = runner.invoke(app, ["predict", str(tmp_path), "--head", "h.joblib", "--model-file", "m.onnx"])
    assert both.exit_code == 1 and "not both" in both.output
    no_file = runner.invoke(app, ["predict", str(tmp_path), "--model-file", str(tmp_path / "m.onnx")])
    assert no_file.exit_code == 1 and "no such model file" in no_file.output


# --- real weights, ../shared/datasets ---------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("data,head", [("photo_vs_drawing", "logreg"), ("hymenoptera", "svm"),
                                       ("photo_vs_drawing", "et")])
def test_lite0_exports_agree_with_predict(lite0_cache: Path, tmp_path: Path, data: str, head: str) -> None:
    head_path = fit_head(lite0_cache, head=head, dataset=data, out=tmp_path / "h.joblib").head_path
    result = export_model(head_path, tmp_path / "m.onnx", cache=lite0_cache)
    assert result.check is not None and result.check.passed, result.summary()
    assert result.check.cached_same_top1 == result.check.images and result.check.missing == 0
    assert [resolve_spec("efficientnet_lite0").preprocess] == open_model(result.path).preprocesses
