"""The one torch training core (`train_epochs`) and the one device vocabulary (`runtime.resolve_device`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bottleneck_features import runtime
from bottleneck_features.errors import DeviceError, ExtractError
from bottleneck_features.finetune import FineTunedNetworkClassifier
from bottleneck_features.heads import SoftmaxClassifier, train_epochs
from bottleneck_features.sources import resolve_spec


class Loop:
    """A module whose weight is set to the epoch's number, and scripted validation losses."""

    def __init__(self, losses: list[float]) -> None:
        self.module = nn.Linear(1, 1)
        self.losses = iter(losses)
        self.modes: list[tuple[str, bool]] = []

    def run_epoch(self, epoch: int) -> None:
        self.modes.append(("train", self.module.training))
        with torch.no_grad():
            self.module.weight.fill_(epoch)

    def validation_loss(self) -> float:
        self.modes.append(("score", self.module.training))
        return next(self.losses)

    @property
    def weight(self) -> float:
        return self.module.weight.item()


def test_stops_after_patience_epochs_without_improvement_and_restores_the_best() -> None:
    loop = Loop([3.0, 1.0, 2.0, 1.0, 5.0, 0.0])  # epoch 2 is best; 3 and 4 don't beat it
    ran = train_epochs(loop.module, loop.run_epoch, loop.validation_loss, max_epochs=10, patience=2)
    assert ran == 4
    assert loop.weight == 2.0
    assert loop.modes == [("train", True), ("score", False)] * 4  # trains in train mode, scores in eval


def test_the_start_can_be_the_first_candidate() -> None:
    loop = Loop([0.5, 1.0, 0.9, 0.8])
    with torch.no_grad():
        loop.module.weight.fill_(-1.0)
    ran = train_epochs(loop.module, loop.run_epoch, loop.validation_loss, max_epochs=10, patience=3,
                       start_is_candidate=True)
    assert ran == 3 and loop.weight == -1.0  # no epoch beat the starting weights


def test_without_a_validation_part_every_epoch_runs() -> None:
    loop = Loop([])
    ran = train_epochs(loop.module, loop.run_epoch, None, max_epochs=5, patience=1, start_is_candidate=True)
    assert ran == 5 and loop.weight == 5.0
    assert loop.modes == [("train", True)] * 5


def test_a_gpu_torch_cannot_see_is_a_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^--device cuda: no CUDA GPU visible to torch; use --device auto or cpu$"):
        runtime.resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"^--device cuda:1: no CUDA GPU"):
        runtime.resolve_device("cuda:1")
    with pytest.raises(DeviceError, match=r"^--device mps: no Apple GPU \(MPS\) visible to torch; use --device auto or cpu$"):
        runtime.resolve_device("mps")
    X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    with pytest.raises(DeviceError) as raised:
        SoftmaxClassifier(device="cuda").fit(X, np.arange(12) % 2)
    assert not isinstance(raised.value, ExtractError)  # fitting a head is no extraction
    with pytest.raises(DeviceError, match="^--device cuda: "):  # before any image is read
        FineTunedNetworkClassifier(resolve_spec("raw8"), device="cuda").fit(
            np.array([["0" * 64, "missing.png"]] * 2, dtype=object), ["a", "b"])
    assert runtime.resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")
