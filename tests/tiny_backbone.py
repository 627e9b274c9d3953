"""A tiny randomly-initialised backbone for fast tests, with a forward-pass counter."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from bottleneck_features.registry import Backbone
from bottleneck_features.spec import ExtractorSpec, Preprocess


class CountingNet(nn.Module):
    """Conv → ReLU → global average pool; counts the images it has seen."""

    def __init__(self, dim: int = 8, delay: float = 0.0, log: Path | None = None, die_once: Path | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, kernel_size=3, stride=2)
        self.delay = delay
        self.log = log  # where the running count is written, for tests that watch another process
        self.die_once = die_once  # the first process to run a batch creates this file and dies
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.die_once and not self.die_once.exists():
            self.die_once.touch()
            os._exit(1)
        self.images_seen += x.shape[0]
        if self.log:
            self.log.write_text(str(self.images_seen))
        if self.delay:
            time.sleep(self.delay)
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


PREPROCESS = Preprocess(input_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                        std=(0.25, 0.25, 0.25))


def tiny_backbone(dim: int = 8, delay: float = 0.0, name: str = "tiny", log: Path | None = None,
                  die_once: Path | None = None) -> Backbone:
    return Backbone(CountingNet(dim, delay, log, die_once).eval(),
                    ExtractorSpec(name, "random-seed0", PREPROCESS, dim))
