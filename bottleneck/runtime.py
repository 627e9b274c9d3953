"""The run's device and CPU runtime: device choice, precision, batch size, torch threads, malloc tuning."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DeviceError, ExtractError

AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Backbones whose bf16 features lost more than 0.3 points of cross-validated accuracy against fp32
# on one of the guard's datasets (benchmarks/precision_guard.py, RESULTS.md 15): `--precision auto`
# keeps them in fp32. Lite1 lost 0.46 points (2 of 434 images) on photo_vs_drawing.
BF16_GUARD_FAILED: frozenset[str] = frozenset({"efficientnet_lite1"})


def resolve_device(device: str) -> torch.device:
    """The torch device for a `--device` value, for extraction and training alike: "auto" is CUDA,
    then Apple's MPS, then the CPU; a GPU that torch does not see is a DeviceError."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA GPU visible to torch; use --device auto or cpu")
    if resolved.type == "mps" and not _mps_available():
        raise DeviceError(f"--device {device}: no Apple GPU (MPS) visible to torch; use --device auto or cpu")
    return resolved


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@dataclass(frozen=True)
class Hardware:
    """What `--precision auto` decides on: the CPU's flags and the CUDA GPU's compute capability."""

    cpu_flags: frozenset[str] = frozenset()
    cuda_capability: tuple[int, int] | None = None


HARDWARE_ENV = "BOTTLENECK_HARDWARE"


def detect_hardware(device: torch.device) -> Hardware:
    """Cheap and safe anywhere: /proc/cpuinfo's flags (none off Linux), the GPU's capability on CUDA.

    `BOTTLENECK_HARDWARE` replaces what is detected, e.g. "avx2 fma" or "avx512_bf16 amx_bf16
    cuda=8.0" (CPU flags, and a CUDA capability): a simulated host for tests, which child processes
    and Ray workers inherit, or a decision forced on a machine that misreports its flags."""
    pinned = os.environ.get(HARDWARE_ENV)
    if pinned is not None:
        return parse_hardware(pinned)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return Hardware(_cpu_flags(), capability)


def parse_hardware(text: str) -> Hardware:
    """`BOTTLENECK_HARDWARE`'s value: CPU flags, and optionally cuda=MAJOR.MINOR, space-separated."""
    flags: set[str] = set()
    capability = None
    for word in text.split():
        if not word.startswith("cuda="):
            flags.add(word)
            continue
        major, _, minor = word[5:].partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ExtractError(f"{HARDWARE_ENV}={text!r}: write a CUDA capability as cuda=MAJOR.MINOR, e.g. cuda=8.0")
        capability = (int(major), int(minor))
    return Hardware(frozenset(flags), capability)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return next((frozenset(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), frozenset())


def auto_precision(device: torch.device, hardware: Hardware | None = None, model: str | None = None) -> tuple[str, str]:
    """(precision, why) for `--precision auto`: bf16 where the hardware computes it natively (CPUs
    with AVX-512 BF16 or AMX, CUDA GPUs of compute capability 8.0 and later), fp16 on CUDA GPUs with
    tensor cores but no bf16 (7.x), fp32 elsewhere, where bf16 would be emulated and slower, and for
    a `model` that failed the accuracy guard. `hardware`: detected on `device` when not given."""
    precision, why = _hardware_precision(device, hardware or detect_hardware(device))
    if precision != "fp32" and model in BF16_GUARD_FAILED:
        return "fp32", f"{model}'s half-precision features failed the accuracy guard (benchmarks/RESULTS.md 15)"
    return precision, why


def _hardware_precision(device: torch.device, hardware: Hardware) -> tuple[str, str]:
    if device.type == "cuda" and hardware.cuda_capability is not None:
        major, minor = hardware.cuda_capability
        if major >= 8:
            return "bf16", f"CUDA compute capability {major}.{minor} computes bf16 natively"
        if major == 7:
            return "fp16", f"CUDA compute capability {major}.{minor}: fp16 tensor cores, no bf16"
        return "fp32", f"CUDA compute capability {major}.{minor} has no fast half precision"
    if device.type == "cpu":
        native = sorted(hardware.cpu_flags & {"avx512_bf16", "amx_bf16"})
        if native:
            return "bf16", f"this CPU computes bf16 natively ({', '.join(native)})"
        return "fp32", "this CPU has no native bf16 (AVX-512 BF16 or AMX)"
    return "fp32", f"no native bf16 known on {device.type}"


def default_batch_size(device: torch.device) -> int:
    """256 on CUDA; 16 on CPU, as fast per image as 32 there (faster for efficientnet_lite0) and
    half the wait for the first batch."""
    return 256 if device.type == "cuda" else 16


@contextlib.contextmanager
def cpu_runtime(device: torch.device, threads: int | None) -> Iterator[Callable[[], None]]:
    """Torch intra-op threads and heap-only malloc for the run, both restored afterwards.

    glibc serves each allocation above its mmap threshold (every layer's output) with a fresh mmap
    and unmaps it when freed, so each batch page-faults all its activations in again: 45 % of CPU
    time went to the kernel. Served from the heap, the pages are reused: 1.2-1.9x images/s.
    But torch's aligned allocations leave holes that the heap reuses badly, so it grows by tens of
    MB a batch; the callable this yields, run after each batch, hands free heap pages back to the OS
    whenever resident memory is _HEAP_SLACK above what it was after the first batch."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    libc = _glibc() if device.type == "cpu" else None
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)

    baseline: int | None = None

    def settle() -> None:
        nonlocal baseline
        if libc is None:
            return
        resident = _resident_bytes()
        if baseline is None:
            baseline = resident
        elif resident > baseline + _HEAP_SLACK:
            libc.malloc_trim(0)

    try:
        yield settle
    finally:
        torch.set_num_threads(before)
        if libc is not None:
            # mallopt can't give glibc back its self-tuning thresholds; these are where they settle
            # in any process that has freed a large tensor: mmap above 32 MiB, trim above 64 MiB.
            libc.mallopt(_M_MMAP_MAX, 65536)
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
            libc.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters, from glibc's malloc.h
_HEAP_SLACK = 128 << 20


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc (mallopt, malloc_trim), or None on other C libraries and systems."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


