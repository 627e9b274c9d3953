import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bottleneck_features.images import ImageError, decode_rgb, find_images, sha256_file
from conftest import write_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_find_images_any_case_skips_hidden(tmp_path: Path) -> None:
    for name in ["a/x.JPG", "a/y.jpeg", "a/z.Png", "b/w.webp", "b/v.TIFF", "b/u.bmp", "b/t.gif"]:
        write_image(tmp_path / name, seed=1, fmt={"JPG": "JPEG", "jpeg": "JPEG"}.get(name.rsplit(".", 1)[1]))
    (tmp_path / "a" / "notes.txt").write_text("hi")
    write_image(tmp_path / "a" / ".hidden.jpg", seed=2, fmt="JPEG")
    write_image(tmp_path / ".cache" / "c.jpg", seed=3, fmt="JPEG")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/x.JPG", "a/y.jpeg", "a/z.Png", "b/t.gif", "b/u.bmp", "b/v.TIFF", "b/w.webp"]


def test_png_named_jpg_decodes_by_content(tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    write_image(path, seed=4, fmt="PNG")
    assert decode_rgb(path).mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1", "I;16"])
def test_modes_become_rgb(mode: str) -> None:
    img = Image.fromarray(np.full((10, 12, 3), 200, np.uint8))
    img = img.convert("L").convert(mode) if mode in ("I;16", "1") else img.convert(mode)
    out = decode_rgb(_encode(img, "TIFF" if mode == "CMYK" else "PNG"))
    assert out.mode == "RGB" and out.size == (12, 10)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey = np.full((8, 8), 40000, np.uint16)
    out = np.asarray(decode_rgb(_encode(Image.fromarray(grey), "PNG")))
    assert out[0, 0, 0] == 40000 // 256


def test_rgba_is_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(decode_rgb(_encode(rgba, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    assert decode_rgb(_encode(img, "JPEG", exif=exif)).size == (20, 40)


def test_draft_decodes_large_jpeg_at_reduced_scale() -> None:
    data = _encode(Image.new("RGB", (2000, 1600), "blue"), "JPEG")
    assert decode_rgb(data).size == (2000, 1600)
    small = decode_rgb(data, draft_to=224)
    assert min(small.size) >= 224 and small.size[0] < 1000


@pytest.mark.parametrize(
    "payload, reason",
    [(b"", "empty"), (b"not an image at all", "not an image"), ("truncated", "truncated")],
)
def test_bad_files_raise_image_error_with_reason(payload, reason: str) -> None:
    if payload == "truncated":
        payload = _encode(Image.new("RGB", (64, 64), "green"), "JPEG")[:300]
    with pytest.raises(ImageError, match=reason):
        decode_rgb(payload)


def test_decompression_bomb_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_rgb(_encode(Image.new("RGB", (100, 100)), "PNG"))


def test_decompression_bomb_warning_range_refused_from_many_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between Pillow's limit and twice it, Pillow only warns; extract decodes in threads, and every
    one of them must still refuse such an image while the others decode ordinary ones."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    bomb, fine = _encode(Image.new("RGB", (100, 100)), "PNG"), _encode(Image.new("RGB", (50, 50)), "JPEG")

    def decode(k: int) -> str:
        try:
            decode_rgb(bomb if k % 2 else fine)
            return "decoded"
        except ImageError as exc:
            return str(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to expose races
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(decode, range(2000)))
    finally:
        sys.setswitchinterval(interval)
    assert all("decompression bomb" in r for r in results[1::2])
    assert set(results[::2]) == {"decoded"}


def test_sha256_file_matches_content(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.png", seed=1)
    b = tmp_path / "renamed.png"
    b.write_bytes(a.read_bytes())
    assert sha256_file(a) == sha256_file(b) and len(sha256_file(a)) == 64
