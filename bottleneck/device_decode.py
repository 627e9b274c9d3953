"""JPEG decoding on the extraction device (`--decode torchvision`): nvJPEG on a CUDA GPU.

DataLoader workers only read the files and look at their headers: plain JPEGs travel as their bytes
and are decoded, resized and cropped in the main process on the model's device with
`torchvision.io.decode_jpeg`; anything else (PNG, CMYK, progressive, EXIF-rotated, or a JPEG that
the device decoder rejects) takes the usual PIL path, so it is decoded or reported exactly as before.

On a CPU device this runs libjpeg-turbo through torchvision, which is how the tests cover this path.
torchvision 0.29 deprecates its image decoders in favour of TorchCodec; the call still works and its
warning is silenced here.
"""

from __future__ import annotations

import io
import warnings

import PIL.Image
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from . import decode
from .decode import DecodeDataset
from .images import ImageError, decode_rgb
from .spec import Preprocess

# Images decoded per decode_jpeg call: 32 12-MP photos are 1.2 GB of device memory before resizing.
DECODE_CHUNK = 32
_EXIF_ORIENTATION = 0x0112
# (index, pixels, jpeg bytes, error): one of pixels / jpeg bytes / error is set.
Item = tuple[int, torch.Tensor | None, torch.Tensor | None, str]
Batch = tuple[list[int], torch.Tensor | None, list[int], list[torch.Tensor], list[tuple[int, str]]]


class JpegBytesDataset(DecodeDataset):
    """Worker side: a plain JPEG's bytes, or anything else decoded, resized and cropped with PIL."""

    def __getitem__(self, i: int) -> Item:  # type: ignore[override]  # its own item, read by its own collate
        data = self.read(i)
        if isinstance(data, bytes) and is_plain_jpeg(data):
            return i, None, torch.frombuffer(bytearray(data), dtype=torch.uint8), ""
        _, pixels, error = self.decode(i, data)
        return i, pixels, None, error


def is_plain_jpeg(data: bytes) -> bool:
    """A baseline RGB or greyscale JPEG, upright and within Pillow's decompression-bomb limit: what
    nvJPEG's batched decoder handles, and needs no EXIF rotation (reads the header only)."""
    if not data.startswith(b"\xff\xd8"):
        return False
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            return (img.format == "JPEG" and img.mode in ("RGB", "L") and not img.info.get("progressive")
                    and width * height <= (PIL.Image.MAX_IMAGE_PIXELS or float("inf"))
                    and img.getexif().get(_EXIF_ORIENTATION, 1) == 1)
    except Exception:  # noqa: BLE001 -- anything odd goes the PIL way, which reports it properly
        return False


def collate(batch: list[Item]) -> Batch:
    """(indices of decoded pixels, their channels_last uint8 batch, indices of JPEGs, their bytes, failures)."""
    decoded = [(i, t) for i, t, _, _ in batch if t is not None]
    jpegs = [(i, b) for i, _, b, _ in batch if b is not None]
    failed = [(i, err) for i, t, b, err in batch if t is None and b is None]
    pixels = torch.stack([t.permute(1, 2, 0) for _, t in decoded]).permute(0, 3, 1, 2) if decoded else None
    return [i for i, _ in decoded], pixels, [i for i, _ in jpegs], [b for _, b in jpegs], failed


def finish_batch(batch: Batch, preprocess: Preprocess,
                 device: torch.device) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Decode the batch's JPEGs on `device` and join them to the pixels the workers decoded:
    (indices, uint8 (B, 3, S, S) on `device`, failures), as the PIL path's loader yields them."""
    indices, pixels, jpeg_indices, jpegs, failed = batch
    parts = [pixels.to(device, non_blocking=True)] if pixels is not None else []
    for start in range(0, len(jpegs), DECODE_CHUNK):
        chunk = jpegs[start:start + DECODE_CHUNK]
        for k, image in enumerate(_decode_all(chunk, device)):
            i = jpeg_indices[start + k]
            try:
                crop = resize_crop(image, preprocess) if image is not None else _pil_fallback(chunk[k], preprocess, device)
            except ImageError as exc:
                failed.append((i, str(exc)))
                continue
            parts.append(crop[None])
            indices.append(i)
    if not parts:
        return indices, None, failed
    return indices, torch.cat(parts).contiguous(memory_format=torch.channels_last), failed


def resize_crop(image: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (3, H, W) → shorter side to resize_size (antialiased, as PIL) → centre crop (3, S, S)."""
    image = F.resize(image, [preprocess.resize_size], interpolation=InterpolationMode(preprocess.interpolation),
                     antialias=True)
    return F.center_crop(image, [preprocess.input_size])


def _decode_all(chunk: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a list of JPEGs in one call; if the device decoder rejects it, one by one, with None
    for each JPEG it rejects."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(chunk, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for data in chunk:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def _pil_fallback(data: torch.Tensor, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """What the PIL path makes of a JPEG the device decoder rejected (or the ImageError it raises)."""
    image = decode_rgb(data.numpy().tobytes(), draft_to=preprocess.resize_size)
    return decode.resize_crop(image, preprocess).to(device)
