"""Batches of decoded images from files: PIL decoding in CPU threads that take turns with the model, or
in DataLoader worker processes that run ahead of a GPU; uint8 until the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .augment import Augment, augmented_view
from .images import ImageError, decode_rgb
from .locations import read
from .spec import Preprocess


def resize_crop(img: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """Shorter side to `resize_size` (PIL resampling, antialiased), centre crop -> uint8 (3, S, S).

    The pixels of torchvision's Resize + CenterCrop, up to Pillow's float32 rounding of the crop
    box (at most 2 grey levels, on a few % of pixels at worst), but only the crop is resampled:
    about half the work when a small image is scaled up."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    size, (width, height) = preprocess.input_size, img.size
    # torchvision's sizes: the shorter side exactly resize_size, the longer one truncated.
    new_w, new_h = (preprocess.resize_size, int(preprocess.resize_size * height / width)) if width <= height else \
        (int(preprocess.resize_size * width / height), preprocess.resize_size)
    if size > min(new_w, new_h):  # the crop needs padding: leave that to torchvision
        import torchvision.transforms.functional as TF

        img = TF.resize(img, preprocess.resize_size, interpolation=TF.InterpolationMode(preprocess.interpolation),
                        antialias=True)
        return TF.pil_to_tensor(TF.center_crop(img, [size]))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    # One pass per axis, horizontal first as in a full PIL resize (given a 2-D box, Pillow may run
    # the vertical pass first, which rounds differently).
    resample = Image.Resampling[preprocess.interpolation.upper()]  # spec.INTERPOLATIONS are Pillow's names
    sx, sy = width / new_w, height / new_h
    if new_w == width:
        img = img.crop((left, 0, left + size, height))
    else:
        img = img.resize((size, height), resample, box=(left * sx, 0, (left + size) * sx, height))
    if new_h == height:
        img = img.crop((0, top, size, top + size))
    else:
        img = img.resize((size, size), resample, box=(0, top * sy, size, (top + size) * sy))
    return _to_tensor(img)


def normalize(batch: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (x / 255 - mean) / std, as x * scale + shift in one pass.

    A channels_last batch is worked on as its (B * H, W * 3) rows of pixels, with scale and shift
    repeated W times: broadcasting a (1, 3, 1, 1) operand over channels_last memory runs an
    unvectorised loop, 3-5x slower (benchmarks/RESULTS.md, section 16). Other layouts broadcast per channel."""
    n, c, h, w = batch.shape
    scale = torch.tensor([1 / (255 * s) for s in preprocess.std], device=batch.device)
    shift = torch.tensor([-m / s for m, s in zip(preprocess.mean, preprocess.std, strict=True)], device=batch.device)
    if batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous():
        rows = batch.permute(0, 2, 3, 1).reshape(n * h, w * c)
        out = torch.addcmul(shift.repeat(w), rows, scale.repeat(w))
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    return torch.addcmul(shift.view(1, c, 1, 1), batch, scale.view(1, c, 1, 1))


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W), a view of the (H, W, 3) pixels (as torchvision's pil_to_tensor)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class DecodeDataset(TorchDataset):
    """Reads, decodes and resizes one image in a worker process or decode thread; returns uint8 so
    the copy stays small. With `augment`, item i is view `views[i] = (sha, view)` of its image."""

    def __init__(self, items: Sequence[tuple[str, str]], preprocess: Preprocess, augment: Augment | None = None,
                 views: Sequence[tuple[str, int]] = ()) -> None:
        self.items = items
        self.preprocess = preprocess
        self.augment = augment
        self.views = views

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        return self.decode(i, self.read(i))

    def read(self, i: int) -> bytes | ImageError:
        try:
            return read(self.items[i][1])
        except ImageError as exc:
            return exc

    def decode(self, i: int, data: bytes | ImageError) -> tuple[int, torch.Tensor | None, str]:
        try:
            if isinstance(data, ImageError):
                raise data
            img = decode_rgb(data, draft_to=self.preprocess.resize_size)
            if self.augment is not None:
                return i, augmented_view(img, self.augment, self.preprocess, *self.views[i]), ""
            return i, resize_crop(img, self.preprocess), ""
        except ImageError as exc:
            return i, None, str(exc)


def collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    # Stacked as (B, H, W, C) and viewed as NCHW: a channels_last batch, which the model wants, and a
    # plain copy of resize_crop's (C, H, W) view of a (H, W, C) buffer.
    tensor = torch.stack([t.permute(1, 2, 0) for _, t in good]).permute(0, 3, 1, 2) if good else None
    return [i for i, _ in good], tensor, bad


def loader_batches(dataset: DecodeDataset, collate: Callable, batch_size: int, workers: int,
                    device: torch.device) -> Iterator:
    """Batches from DataLoader worker processes, which start decoding at once, while the model is prepared."""
    if len(dataset) <= batch_size:
        workers = 0  # forking workers costs more than decoding one batch in-process
    # torch's default of 2 batches ahead per worker: with 16 workers x 256 images that is already
    # 1.2 GB of shared memory, more than many containers' /dev/shm.
    return iter(DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                           pin_memory=device.type == "cuda"))


def decoded_batches(dataset: DecodeDataset, batch_size: int, workers: int, device: torch.device) -> Iterator:
    """`dataset`'s batches for a model on `device`: decode threads taking turns with it on a CPU,
    DataLoader worker processes running ahead of a GPU."""
    if device.type == "cpu":
        return alternating_batches(dataset, batch_size, workers)
    return loader_batches(dataset, collate, batch_size, workers, device)


def alternating_batches(dataset: DecodeDataset, batch_size: int,
                         threads: int) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """CPU: each batch is decoded by `threads` threads while the model waits, and the model then runs
    on every core while they wait; only the next batch's files are read meanwhile.

    Decode workers running beside the model take cores from its threads, which wait for each other
    after every op, so each stolen millisecond stalls them all. Taking turns was 1.1-1.2x faster on 2
    cores, on small JPEGs and 12 MP photos alike (benchmarks/RESULTS.md, section 2)."""
    starts = range(0, len(dataset), batch_size)

    def read(start: int) -> list[bytes | ImageError]:
        return [dataset.read(i) for i in range(start, min(start + batch_size, len(dataset)))]

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(max(threads, 1)) as decoders:
        ahead = reader.submit(read, starts[0])
        for k, start in enumerate(starts):
            data = ahead.result()
            if k + 1 < len(starts):
                ahead = reader.submit(read, starts[k + 1])
            indices = range(start, start + len(data))
            if threads:
                yield collate(list(decoders.map(dataset.decode, indices, data)))
            else:
                yield collate([dataset.decode(i, d) for i, d in zip(indices, data, strict=True)])


