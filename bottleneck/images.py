"""Finding image files, hashing them, and decoding any of them to RGB."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Pillow's own bomb limit (~179 MP raises, ~89 MP warns); we treat the warning as fatal too.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
_OPEN_LOCK = threading.Lock()


# The start of the reason given for an I/O failure: a verdict about the moment, not about the bytes,
# so it is never remembered (the file is read again on the next run).
READ_FAILED = "cannot read file"


class ImageError(Exception):
    """An image that cannot be used; the message is the reason, fit for a report."""


def is_image_file(path: Path) -> bool:
    return is_image_file_name(path.name)


def find_images(root: Path) -> list[Path]:
    """All image files under `root`, sorted as Paths sort; hidden files and folders are skipped."""
    return [Path(root, *parts) for parts in find_image_parts(root)]


def find_image_parts(root: Path) -> list[tuple[str, ...]]:
    """`find_images` as path parts relative to `root`: no Path objects, which cost seconds per
    100,000 files. Sorting the parts gives the order Paths sort in."""
    top = os.fspath(root)
    found: list[tuple[str, ...]] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of each real directory: a link loop is walked once
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        relative = os.path.relpath(dirpath, top)
        parts = () if relative == os.curdir else tuple(relative.split(os.sep))
        found.extend((*parts, f) for f in filenames if is_image_file_name(f))
    found.sort()
    return found


def is_image_file_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def sha256_stream(handle: IO[bytes]) -> str:
    """The sha256 of what `handle` reads to its end, a block at a time: a huge file is never held whole."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def decode_rgb(source: Path | bytes, draft_to: int | None = None) -> Image.Image:
    """Decode any supported image to an upright 8-bit RGB image.

    The format is read from the content, not the suffix (a PNG named .jpg works). With
    `draft_to`, JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale whose shorter side is
    still at least `draft_to` pixels: a 12 MP photo bound for 224 px decodes several times faster.
    Transparent images are flattened on white; greyscale, CMYK, palette and 16-bit become RGB.
    """
    data = source if isinstance(source, bytes) else read_bytes(source)
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        # Pillow checks the size in open(), with a warning below twice its limit. catch_warnings
        # changes process-wide state, so threads that decode at once must take turns here.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
        if draft_to and img.format == "JPEG":
            _draft(img, draft_to)
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"unreadable or truncated image ({exc})") from None


def jpeg_data_uri(data: bytes, side: int, quality: int, draft_to: int) -> str:
    """The image in `data` as a JPEG thumbnail of at most `side` pixels, in a data URI for a page (decoded
    in draft mode at `draft_to`); ImageError when it cannot be decoded."""
    image = decode_rgb(data, draft_to=draft_to)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def read_failure(exc: BaseException) -> str:
    """Why bytes could not be read, as every report says it: READ_FAILED and the system's reason."""
    return f"{READ_FAILED} ({getattr(exc, 'strerror', None) or exc})"


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(read_failure(exc)) from None


def _draft(img: Image.Image, shorter_side: int) -> None:
    width, height = img.size
    scale = shorter_side / min(width, height)
    if scale < 1:
        img.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode.startswith("I"):
        img = _int_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _int_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale to 8 bits, scaled rather than clipped at 255."""
    img = img.convert("I")
    if int(img.getextrema()[1]) > 255:  # type: ignore[arg-type]  # one band, so (min, max)
        img = img.point(lambda v: v * (1 / 256))
    return img.convert("L")
