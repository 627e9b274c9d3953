"""Shared by the benchmark scripts: test image sets, machine description, tables and JSON output.

Generated images go under benchmarks/out/ (git-ignored) and are reused by later runs.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DATA = OUT / "data"
SHARED = HERE.parent.parent / "shared" / "datasets"
SMALL_SOURCE = SHARED / "photo_vs_drawing"
LARGE_SOURCE = SHARED / "hymenoptera" / "train"
LARGE_SIZE = (4032, 3024)  # 12.2 MP, a common phone sensor


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def _unique_copy(src: Path, dst: Path, copy_index: int) -> None:
    """Copy `src`; copies after the first get bytes appended after the JPEG end marker, so their
    sha256 differs (the cache is content-addressed) while they decode to the same pixels."""
    data = src.read_bytes()
    if copy_index:
        data += b"\0copy" + str(copy_index).encode()
    dst.write_bytes(data)


def small_set(n: int) -> Path:
    """`n` real ~224 px JPEGs from photo_vs_drawing (classes drawing/, photo/), repeated when n > 434."""
    root = DATA / f"small-{n}"
    if _complete(root, n):
        return root
    sources = _interleaved(SMALL_SOURCE)
    _fresh(root)
    for i in range(n):
        src = sources[i % len(sources)]
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        _unique_copy(src, root / src.parent.name / f"{i:06d}.jpg", i // len(sources))
    (root / ".complete").write_text(str(n))
    return root


def large_set(n: int, seed: int = 0) -> Path:
    """`n` 12 MP phone-like JPEGs: real hymenoptera photos upscaled to 4032x3024 plus sensor-like noise
    (Gaussian luminance noise, sigma 4, and +-1 per channel), quality 92, about 3 MB each. Without the
    noise an upscaled image is so smooth that it decodes unrealistically fast."""
    root = DATA / f"large-{n}"
    if _complete(root, n):
        return root
    sources = _interleaved(LARGE_SOURCE)
    rng = np.random.default_rng(seed)
    _fresh(root)
    for i in range(n):
        src = sources[i % len(sources)]
        img = Image.open(src).convert("RGB")
        size = LARGE_SIZE if img.width >= img.height else LARGE_SIZE[::-1]
        pixels = np.asarray(img.resize(size, Image.BICUBIC), dtype=np.int16)
        pixels += rng.normal(0, 4, size=(size[1], size[0], 1)).astype(np.int16)
        pixels += rng.integers(-1, 2, size=pixels.shape, dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        (root / src.parent.name / f"{i:04d}.jpg").write_bytes(buf.getvalue())
    (root / ".complete").write_text(str(n))
    return root


def tiny_set(n: int, size: int = 16) -> Path:
    """`n` distinct tiny noise PNGs in 10 class folders: for cache and memory benchmarks."""
    root = DATA / f"tiny-{n}"
    if _complete(root, n):
        return root
    _fresh(root)
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{i % 10}" / f"{i:06d}.png")
    (root / ".complete").write_text(str(n))
    return root


def _interleaved(root: Path) -> list[Path]:
    """Files of each class folder, alternating between classes, so any prefix is balanced."""
    per_class = [sorted(d.glob("*.jpg")) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    out = []
    for i in range(max(len(c) for c in per_class)):
        out += [c[i] for c in per_class if i < len(c)]
    return out


def _complete(root: Path, n: int) -> bool:
    marker = root / ".complete"
    return marker.is_file() and marker.read_text() == str(n)


def _fresh(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)


def evict(root: Path) -> None:
    """Drop the files under `root` from the OS page cache, so the next read comes from disk (cold)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def folder_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.name.startswith("."))


def wait_for_quiet(max_load: float, timeout: float) -> float:
    """Wait (up to `timeout` s) until the 1-minute load average is below `max_load`; return it."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "load_average_end": [round(v, 2) for v in os.getloadavg()]}
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
