"""The run's device and CPU runtime: device choice, batch size, torch threads, malloc tuning."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator

import torch

from .errors import ExtractError

AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExtractError("--device cuda: no CUDA GPU visible to torch; use --device auto or cpu")
    return torch.device(device)


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


