import json

import pytest

from bottleneck_features.errors import BackboneError, SpecError
from bottleneck_features.sources import resolve_spec
from bottleneck_features.spec import ExtractorSpec, Preprocess

PRE = Preprocess(224, 256, "bilinear", (0.5,) * 3, (0.5,) * 3)


def test_round_trip_through_json() -> None:
    spec = ExtractorSpec("resnet50", "sha256:ab", PRE, 1024, "layer3", "max", "bf16", "float16", "torchvision",
                         weights_file="/w/resnet.pth")
    again = ExtractorSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.weights_file == spec.weights_file and again.fingerprint() == spec.fingerprint()


def test_reads_the_first_releases_identity_dict() -> None:
    legacy = {"name": "raw8", "weights_id": "none", "layer": None, "pool": "avg", "feature_dim": 192,
              "preprocess": {"input_size": 8, "resize_size": 8, "interpolation": "bilinear",
                             "mean": [0.0] * 3, "std": [1.0] * 3}, "precision": "fp32", "dtype": "float32"}
    spec = ExtractorSpec.from_dict(json.dumps(legacy))
    assert (spec.model, spec.weights, spec.decode, spec.feature_dim) == ("raw8", "none", "pil", 192)


def test_fingerprints_are_the_first_releases() -> None:
    """Caches written before the spec existed keep serving their vectors (values from release 0.1.0)."""
    assert resolve_spec("efficientnet_lite0", precision="fp32").fingerprint() == "efficientnet_lite0-0722225b07fe1a7f"
    assert resolve_spec("raw32").fingerprint() == "raw32-5dcfc66f797a5c01"


@pytest.mark.parametrize(("changes", "label"), [
    ({}, "resnet50"),
    ({"layer": "layer3", "pool": "max"}, "resnet50[layer3,max]"),
    ({"precision": "fp16"}, "resnet50[fp16]"),
    ({"dtype": "float16", "decode": "torchvision"}, "resnet50[float16,torchvision]"),
    ({"weights": "random"}, "resnet50[random]"),
    ({"weights": "sha256:ab", "weights_file": "/models/tuned.pth"}, "resnet50[weights=tuned.pth]"),
])
def test_labels_say_what_differs_from_the_defaults(changes: dict, label: str) -> None:
    assert ExtractorSpec("resnet50", "torchvision:R.V2", PRE, 2048).replace(**changes).label() == label


@pytest.mark.parametrize(("option", "value"), [("pool", "median"), ("precision", "int8"), ("dtype", "float64"),
                                               ("decode", "nvjpeg")])
def test_bad_values_are_one_line_errors(option: str, value: str) -> None:
    with pytest.raises(SpecError, match=f"--{option} {value}: use one of") as info:
        resolve_spec("efficientnet_lite0", **{option: value})
    assert "\n" not in str(info.value)


def test_precision_auto_names_no_vectors_until_decided() -> None:
    spec = resolve_spec("efficientnet_lite0")
    assert spec.precision == "auto" and not spec.complete and spec.label() == "efficientnet_lite0"
    with pytest.raises(SpecError, match="precision auto is decided by the machine that extracts"):
        spec.fingerprint()
    assert spec.replace(precision="bf16").complete


def test_raw_pixels_have_no_precision() -> None:
    """No network runs on raw pixels: one spec, one label and one fingerprint on every host."""
    assert {resolve_spec("raw32", precision=p) for p in ("auto", "fp32")} == {resolve_spec("raw32")}
    assert resolve_spec("raw32").precision == "fp32" and resolve_spec("raw32").label() == "raw32"
    assert resolve_spec("raw32").pixels and not resolve_spec("efficientnet_lite0").pixels
    with pytest.raises(BackboneError, match="raw32 is raw pixels: no network runs, so it takes no --precision"):
        resolve_spec("raw32", precision="bf16")


def test_width_unknown_until_built() -> None:
    spec = resolve_spec("squeezenet1_1", layer="features.10", pool="max")
    assert spec.feature_dim is None
    with pytest.raises(SpecError, match="not known until the model is built"):
        spec.fingerprint()


@pytest.mark.every_host
def test_resolving_packaged_and_raw_models_imports_neither_torchvision_nor_timm() -> None:
    import subprocess
    import sys

    code = ("import sys; from bottleneck_features.sources import resolve_spec; "
            "[resolve_spec(m, precision='fp32').fingerprint() for m in ('efficientnet_lite0', 'squeezenet1_1', 'raw32')]; "
            "print('torchvision' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_weights_file_is_identified_by_content(tmp_path) -> None:
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    sa, sb = (resolve_spec("efficientnet_lite0", weights=str(w), precision="bf16") for w in (a, b))
    assert sa == sb and sa.weights_file != sb.weights_file and sa.fingerprint() == sb.fingerprint()
    with pytest.raises(BackboneError, match="weights file not found"):
        resolve_spec("efficientnet_lite0", weights=str(tmp_path / "missing.pth"))
