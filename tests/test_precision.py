"""--precision auto: bf16 where the hardware computes it natively, fp16 on CUDA 7.x, fp32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bottleneck_features.runtime as runtime
from bottleneck_features import api
from bottleneck_features.runtime import Hardware, auto_precision, detect_hardware
from bottleneck_features.sources import register_model
from tiny_backbone import tiny_backbone

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize(("device", "hardware", "chosen"), [
    (CPU, Hardware(frozenset({"avx2", "fma"})), "fp32"),
    (CPU, Hardware(frozenset({"avx512f", "avx512_vnni"})), "fp32"),  # AVX-512 without BF16
    (CPU, Hardware(frozenset({"avx512f", "avx512_bf16"})), "bf16"),  # Cooper Lake, Zen 4
    (CPU, Hardware(SAPPHIRE_RAPIDS), "bf16"),
    (CPU, Hardware(), "fp32"),  # no /proc/cpuinfo
    (CUDA, Hardware(cuda_capability=(9, 0)), "bf16"),  # H100
    (CUDA, Hardware(cuda_capability=(8, 0)), "bf16"),  # A100
    (CUDA, Hardware(cuda_capability=(7, 5)), "fp16"),  # T4
    (CUDA, Hardware(cuda_capability=(6, 1)), "fp32"),  # P4
    (torch.device("mps"), Hardware(SAPPHIRE_RAPIDS), "fp32"),
])
def test_auto_picks_what_the_hardware_computes_natively(device: torch.device, hardware: Hardware,
                                                        chosen: str) -> None:
    precision, why = auto_precision(device, hardware)
    assert precision == chosen and why


def test_detection_is_safe_here() -> None:
    hardware = detect_hardware(CPU)
    assert hardware.cuda_capability is None and isinstance(hardware.cpu_flags, frozenset)


@pytest.fixture
def tiny() -> None:
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())


def test_extract_says_which_precision_ran_and_why(image_folder: Path, tmp_path: Path, tiny: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "detect_hardware", lambda device: Hardware(frozenset({"avx2"})))
    report = api.extract(image_folder, "tiny", cache=tmp_path / "c.h5")
    assert report.summary().endswith("; precision fp32, auto: this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    monkeypatch.setattr(runtime, "detect_hardware", lambda device: Hardware(SAPPHIRE_RAPIDS))
    bf16 = api.extract(image_folder, "tiny", cache=tmp_path / "c.h5")
    assert "precision bf16, auto: this CPU computes bf16 natively (amx_bf16, avx512_bf16)" in bf16.summary()
    assert bf16.fingerprint != report.fingerprint  # bf16 vectors are cached apart from fp32's
    monkeypatch.setattr(runtime, "BF16_GUARD_FAILED", frozenset({"tiny"}))
    guarded = api.extract(image_folder, "tiny", cache=tmp_path / "c.h5")
    assert guarded.fingerprint == report.fingerprint and "failed the accuracy guard" in guarded.summary()
    assert api.extract(image_folder, "tiny", cache=tmp_path / "c.h5", precision="fp32").precision == ""


def test_a_bad_device_is_still_one_line_under_auto(image_folder: Path, tmp_path: Path, tiny: None) -> None:
    from bottleneck_features.errors import ExtractError

    with pytest.raises(ExtractError, match="^--device tpu: use one of"):
        api.extract(image_folder, "tiny", cache=tmp_path / "c.h5", device="tpu")
