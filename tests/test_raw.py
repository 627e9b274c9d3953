import numpy as np
import PIL.Image
import pytest
import torch

from bottleneck_features.decode import normalize, resize_crop
from bottleneck_features.errors import BackboneError, UnknownModelError
from bottleneck_features.sources import list_models, load_backbone


def test_raw32_is_pixels_over_255() -> None:
    backbone = load_backbone("raw32")
    assert backbone.feature_dim == 3072 and backbone.spec.weights == "none"
    pre = backbone.preprocess
    assert (pre.input_size, pre.resize_size, pre.mean, pre.std) == (32, 32, (0.0,) * 3, (1.0,) * 3)
    img = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    pixels = resize_crop(img, pre)[None]
    with torch.inference_mode():
        out = backbone.model(normalize(pixels, pre))
    assert out.shape == (1, 3072)
    assert torch.allclose(out, pixels.float().flatten(1) / 255)


@pytest.mark.parametrize(("name", "dim"), [("raw8", 192), ("raw64", 12288), ("raw256", 196608)])
def test_raw_sizes(name: str, dim: int) -> None:
    assert load_backbone(name, weights="random").feature_dim == dim


@pytest.mark.parametrize("name", ["raw7", "raw257", "raw032"])
def test_raw_out_of_range_is_unknown(name: str) -> None:
    with pytest.raises(UnknownModelError, match="raw<N>"):
        load_backbone(name)


def test_raw_rejects_weights_layer_and_pool() -> None:
    for kwargs in ({"weights": "w.pth"}, {"layer": "x"}, {"pool": "max"}):
        with pytest.raises(BackboneError):
            load_backbone("raw32", **kwargs)


def test_raw_listed_as_pixels() -> None:
    raw = [info for info in list_models() if info.source == "pixels"]
    assert {info.name for info in raw} >= {"raw32"} and all(info.offline for info in raw)
