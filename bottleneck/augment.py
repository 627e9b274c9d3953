"""Augmented views that stay cached: `extract --views K --augment SPEC`.

View i of an image is a pure function of the image's bytes (its sha256), i and the augmentation
spec: a random resized crop, a horizontal flip and a colour jitter drawn from a generator seeded
with (sha256, i). So view i is the same vector on every run and machine, it is cached under the
key `store.view_key(sha, i)` in the group of a spec whose fingerprint covers the augmentation, and
asking for more views, or adding images, computes only what is missing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

from .errors import SpecError
from .spec import Preprocess

DEFAULT_AUGMENT = "crop=0.35+flip+jitter=0.2"


@dataclass(frozen=True)
class Augment:
    crop: float | None = None  # smallest area fraction of RandomResizedCrop (aspect 3/4 to 4/3); None: centre crop
    flip: bool = False  # horizontal, with probability 1/2
    jitter: float = 0.0  # brightness, contrast and saturation each scaled by U(1 - j, 1 + j)

    def canonical(self) -> str:
        parts = [f"crop={self.crop:g}"] if self.crop is not None else []
        parts += ["flip"] if self.flip else []
        parts += [f"jitter={self.jitter:g}"] if self.jitter else []
        return "+".join(parts)  # not commas: labels sit in comma lists (compare --models)


def parse_augment(text: str) -> Augment:
    """`crop=S+flip+jitter=J` (or commas) in any order, each optional (at least one); SpecError names the fix."""
    hint = f"use crop=S (0 < S <= 1), flip and jitter=J (0 < J < 1) joined by +, e.g. {DEFAULT_AUGMENT}"
    crop, flip, jitter = None, False, 0.0
    for part in filter(None, (p.strip() for p in text.replace(",", "+").split("+"))):
        name, _, value = part.partition("=")
        try:
            if name == "flip" and not value:
                flip = True
            elif name == "crop" and 0 < float(value) <= 1:
                crop = float(value)
            elif name == "jitter" and 0 < float(value) < 1:
                jitter = float(value)
            else:
                raise ValueError
        except ValueError:
            known = name in ("crop", "flip", "jitter")
            raise SpecError(f"--augment {text}: {'bad value in' if known else 'unknown augmentation'} {part!r}; "
                            f"{hint}") from None
    augment = Augment(crop, flip, jitter)
    if not augment.canonical():
        raise SpecError(f"--augment {text!r}: no augmentation given; {hint}")
    return augment


def augmented_view(img: Image.Image, augment: Augment, preprocess: Preprocess, sha: str, view: int) -> torch.Tensor:
    """View `view` of `img` as uint8 (3, S, S), S = preprocess.input_size."""
    rng = random.Random(f"{sha}/{view}")  # str seeds hash with sha512: the same on every platform
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    if augment.crop is None:  # the plain view's resize + centre crop geometry
        side = min(width, height) * preprocess.input_size / preprocess.resize_size
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    else:
        box = _random_resized_crop(width, height, augment.crop, rng)
    size = preprocess.input_size
    img = img.resize((size, size), Image.Resampling[preprocess.interpolation.upper()], box=box)
    if augment.flip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if augment.jitter:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(rng.uniform(1 - augment.jitter, 1 + augment.jitter))
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _random_resized_crop(width: int, height: int, smallest: float,
                         rng: random.Random) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop box (scale (smallest, 1), ratio (3/4, 4/3)), from `rng`."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(smallest, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            y, x = rng.randint(0, height - h), rng.randint(0, width - w)
            return x, y, x + w, y + h
    side = min(width, height)  # as torchvision: fall back to the centre square
    return (width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2
