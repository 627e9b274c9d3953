"""`--decode torchvision`: JPEGs decoded by torchvision.io on the model's device (here the CPU, which
runs the same code path as CUDA but with libjpeg-turbo in place of nvJPEG)."""

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from bottleneck_features import decode, device_decode
from bottleneck_features.device_decode import is_plain_jpeg, resize_crop
from bottleneck_features.errors import SpecError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.registry import Backbone
from bottleneck_features.store import load_features
from tiny_backbone import tiny_backbone

OPTIONS = ExtractOptions(workers=0, batch_size=4)


def device_decoding(backbone: Backbone) -> Backbone:
    return backbone.using(decode="torchvision")


def smooth_image(seed: int, size: tuple[int, int] = (96, 72)) -> PIL.Image.Image:
    """Gradients and a disc: what photos look like to a resizer (noise would magnify resampler differences)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size[1], 0:size[0]] / max(size)
    a, b, c = rng.uniform(50, 200, 3)
    disc = ((xs - rng.uniform(0.3, 0.7)) ** 2 + (ys - 0.4) ** 2) < 0.05
    rgb = np.stack([a + 50 * xs, b + 50 * ys, c - 40 * disc], axis=-1)
    return PIL.Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def jpeg_bytes(img: PIL.Image.Image, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95, **save)
    return out.getvalue()


def rotated_jpeg(img: PIL.Image.Image) -> bytes:
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    return jpeg_bytes(img, exif=exif)


def test_only_plain_jpegs_go_to_the_device_decoder() -> None:
    img = smooth_image(0)
    png = io.BytesIO()
    img.save(png, format="PNG")
    assert is_plain_jpeg(jpeg_bytes(img)) and is_plain_jpeg(jpeg_bytes(img.convert("L")))
    assert not is_plain_jpeg(png.getvalue())
    assert not is_plain_jpeg(jpeg_bytes(img, progressive=True))
    assert not is_plain_jpeg(jpeg_bytes(img.convert("CMYK")))
    assert not is_plain_jpeg(rotated_jpeg(img))
    assert not is_plain_jpeg(b"\xff\xd8 not really a jpeg")


@pytest.mark.parametrize("size", [(96, 72), (72, 96), (20, 30), (300, 200)])
def test_tensor_resize_crop_matches_pil(size: tuple[int, int]) -> None:
    pre = tiny_backbone().preprocess
    img = smooth_image(1, size)
    ours = resize_crop(torch.from_numpy(np.array(img)).permute(2, 0, 1), pre)
    assert ours.shape == (3, pre.input_size, pre.input_size) and ours.dtype == torch.uint8
    diff = (ours.int() - decode.resize_crop(img, pre).int()).abs()
    assert diff.float().mean() < 0.5 and diff.max() <= 3


def _mixed_folder(root: Path) -> Path:
    """Plain JPEGs, a PNG, a progressive, a CMYK and a rotated JPEG, and three broken files."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(5):
            (root / label / f"{i}.jpg").write_bytes(jpeg_bytes(smooth_image(10 * ord(label) + i)))
    smooth_image(1).save(root / "a" / "png.png")
    (root / "a" / "progressive.jpg").write_bytes(jpeg_bytes(smooth_image(2), progressive=True))
    (root / "b" / "cmyk.jpg").write_bytes(jpeg_bytes(smooth_image(3).convert("CMYK")))
    (root / "b" / "rotated.jpg").write_bytes(rotated_jpeg(smooth_image(4)))
    good = jpeg_bytes(smooth_image(5))
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])  # header fine, data cut
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "text.jpg").write_text("not a picture")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_device_decode_extracts_what_pil_does(tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _mixed_folder(tmp_path / "data")
    decoded, decode_jpeg = [], device_decode.decode_jpeg

    def spy(data, **kwargs):
        decoded.extend(data if isinstance(data, list) else [data])
        return decode_jpeg(data, **kwargs)

    monkeypatch.setattr(device_decode, "decode_jpeg", spy)
    pil = extract_dataset(root, tiny_backbone(), tmp_path / "pil.h5", options=ExtractOptions(workers=0, batch_size=4, device="cpu"))
    backbone = tiny_backbone()
    # Decoded on the CPU (libjpeg-turbo, as PIL): on a GPU nvJPEG decodes, another decoder
    options = ExtractOptions(workers=workers, batch_size=4, device="cpu")
    device = extract_dataset(root, device_decoding(backbone), tmp_path / "dev.h5", options=options)
    assert device.computed == pil.computed == backbone.model.images_seen == 14
    assert dict(device.skipped).keys() == dict(pil.skipped).keys() == {"a/truncated.jpg", "a/empty.jpg", "b/text.jpg"}
    assert "truncated" in dict(device.skipped)["a/truncated.jpg"]
    assert len({bytes(d.numpy()) for d in decoded}) == 11  # the 10 plain JPEGs and the truncated one
    a = load_features(tmp_path / "pil.h5", "data", pil.fingerprint)
    b = load_features(tmp_path / "dev.h5", "data", device.fingerprint)
    assert a.paths == b.paths
    # Different JPEG decoders and resizers: close, not equal (each vector is a mean over the image).
    np.testing.assert_allclose(b.X, a.X, atol=0.02 * np.abs(a.X).max())


def test_device_decode_is_its_own_extractor(tmp_path: Path) -> None:
    root = _mixed_folder(tmp_path / "data")
    cache = tmp_path / "cache.h5"
    first = extract_dataset(root, tiny_backbone(), cache, options=OPTIONS)
    backbone = tiny_backbone()
    second = extract_dataset(root, device_decoding(backbone), cache, options=OPTIONS)
    assert second.fingerprint != first.fingerprint and backbone.model.images_seen == 14
    with pytest.raises(SpecError, match="--decode nvjpeg: use one of pil, torchvision"):
        tiny_backbone().using(decode="nvjpeg")
